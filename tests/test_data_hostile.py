"""Data files built to hurt: what a hostile review found the loaders doing with them."""

from __future__ import annotations

import codecs
import pickle

import numpy as np
import pytest
from PIL import Image

from data_files import make_imagefolder, save_image, write_idx
from dorefa.data import DataError, get_dataset

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:
    from numpy.core.multiarray import _reconstruct, scalar


class _Call:
    """Pickles as ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _peak_kib(call) -> int:
    """The resident memory (KiB) ``call()`` added at its peak: Linux's high-water mark, reset
    first (/proc/self/clear_refs); a lifetime maximum (ru_maxrss) could not show it."""

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS:")
    call()
    return status("VmHWM:") - before


class _ArrayState:
    """Pickles as numpy's ``_reconstruct(ndarray, (0,), b'b')`` with a state of our making."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return _reconstruct, (np.ndarray, (0,), b"b"), self.state


@pytest.mark.parametrize(
    "data, refused",
    [
        (_Call(np.ndarray, (400000, 3072), np.dtype("u1")), "numpy.ndarray called directly"),
        (_Call(_reconstruct, np.ndarray, (400000, 3072), b"B"), "not pickled as numpy pickles"),
        (_Call(bytes, 10**9), r"bytes\(n\)"),
        (_Call(codecs.encode, "abc", "rot13"), "other than of a str to latin1"),
        (_Call(scalar, np.dtype("V400000000")), "dtype 'V400000000'"),
        (_ArrayState((1, (5,), np.dtype("O"), False, [])), "dtype 'O8'"),
        (_ArrayState((1, (400000, 3072), np.dtype("u1"), False, b"")), "with 0 bytes of data"),
    ],
    ids=["ndarray", "reconstruct", "bytes", "encode", "scalar", "objects", "short-state"],
)
def test_a_small_cifar_pickle_makes_nothing_larger_than_itself(tmp_path, data, refused):
    """A 240-byte test_batch had called numpy.ndarray((400000, 3072)): 1.2 GB of uninitialised
    memory read as images; scalar(dtype('V400000000')) had zero-filled 400 MB, and an object
    array's state crashed the process (a review of the first fix). Arrays, dtypes and scalars
    are made here from the bytes the file holds, of plain number types only."""
    labels = np.zeros(3, np.int64)
    raw = pickle.dumps({b"data": data, b"labels": labels}, protocol=2)
    assert len(raw) < 400
    (tmp_path / "test_batch").write_bytes(raw)
    with pytest.raises(DataError, match=f"refused pickle .*{refused}"):
        get_dataset(f"cifar10:{tmp_path}", "test")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_what_numpy_pickles_still_loads(protocol):
    from dorefa.data.safe_pickle import safe_load

    d = {
        b"data": np.arange(24, dtype=np.uint8).reshape(4, 6),
        b"fortran": np.asfortranarray(np.arange(6, dtype=np.uint8).reshape(2, 3)),
        b"big-endian": np.arange(3, dtype=">i4"),
        b"labels": [1, 2, 3, 4],
        b"scalars": [np.int64(5), np.float32(1.5)],
        b"empty": np.zeros((0, 3072), np.uint8),
        b"text": [b"", b"ab\xff"],
    }
    got = safe_load(pickle.dumps(d, protocol=protocol))
    for key, value in d.items():
        if isinstance(value, np.ndarray):
            assert type(got[key]) is np.ndarray and got[key].dtype == value.dtype
            assert np.array_equal(got[key], value) and got[key].flags.writeable
        else:
            assert got[key] == value


def test_a_long_thin_image_is_cropped_in_bounded_memory(tmp_path):
    """A 114-byte 1 x 8000 PNG had been resized whole, to 256 x 2048000 (2.4 GB, 4.4 s an
    item); an image more than 4x as long as wide is resized within its crop. Other images keep
    the resize-then-crop pixels."""
    make_imagefolder(tmp_path)
    save_image(tmp_path / "val" / "ant" / "long.png", np.zeros((8000, 1), np.uint8))
    assert (tmp_path / "val" / "ant" / "long.png").stat().st_size < 1000
    data = get_dataset(f"imagefolder:{tmp_path}", "test", image_size=224)
    images = {}
    peak = _peak_kib(
        lambda: images.update((s[0].name, data[i][0]) for i, s in enumerate(data.samples))
    )
    assert peak < 100 * 1024  # resized whole: 1.5 GB
    assert images["long.png"].shape == (3, 224, 224) and not images["long.png"].any()
    path = tmp_path / "val" / "zebra" / "01.png"  # 48 x 64: resized whole, then cropped
    img = Image.open(path).convert("RGB").resize((256, 341), Image.Resampling.BILINEAR)
    want = np.asarray(img.crop((16, 58, 240, 282))).transpose(2, 0, 1)
    assert np.array_equal(images["01.png"].numpy(), want)


def test_an_idx_gzip_bomb_is_refused_and_real_files_are_held_once(tmp_path):
    """A 1 MB gzip of zeros whose header claimed 1 GiB had been inflated (2.3 GB at the peak:
    the data held three times over); the limit was 16 GiB. An images gzip claiming more than
    100x its size is refused from its header; a labels file must claim its images' count (a
    gzip of sorted labels compresses ~1000x, and had been refused as a bomb by the first fix);
    the data is held once while read."""
    import gzip

    head = bytes([0, 0, 8, 3]) + np.array([50, 1000, 1000], ">u4").tobytes()
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    (bomb / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + bytes(50 * 10**6)))
    assert (bomb / "train-images-idx3-ubyte.gz").stat().st_size < 100_000
    write_idx(bomb / "train-labels-idx1-ubyte", np.zeros(50, np.uint8))
    with pytest.raises(DataError, match="more than 100x: refused as a gzip bomb"):
        get_dataset(f"idx:{bomb}", "train")
    sorted_labels = tmp_path / "sorted"  # 1.5M labels, 0 then 1: ~2 KB of gzip
    sorted_labels.mkdir()
    write_idx(sorted_labels / "train-labels-idx1-ubyte", np.repeat([0, 1], 750_000), gz=True)
    noise = np.random.default_rng(1).integers(0, 256, (1_500_000, 1, 2))
    write_idx(sorted_labels / "train-images-idx3-ubyte", noise, gz=True)
    assert get_dataset(f"idx:{sorted_labels}", "train").num_classes == 2
    other = tmp_path / "other"  # the test split's labels, read to count the classes: their
    # count from a bare images header (no data behind it) had let a gzip bomb through
    other.mkdir()
    write_idx(other / "train-images-idx3-ubyte", np.zeros((2, 2, 2)))
    write_idx(other / "train-labels-idx1-ubyte", np.arange(2))
    claim = bytes([0, 0, 8, 3]) + np.array([5 * 10**7, 1, 1], ">u4").tobytes()
    (other / "t10k-images-idx3-ubyte").write_bytes(claim)
    labels = bytes([0, 0, 8, 1]) + np.array([5 * 10**7], ">u4").tobytes() + bytes(5 * 10**7)
    (other / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: .* refused as a gzip bomb"):
        get_dataset(f"idx:{other}", "train")
    liar = tmp_path / "liar"  # a labels header claiming more than its images
    liar.mkdir()
    write_idx(liar / "train-images-idx3-ubyte", np.zeros((3, 2, 2)))
    write_idx(liar / "train-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(DataError, match="label count 4 != image count 3"):
        get_dataset(f"idx:{liar}", "train")
    big = tmp_path / "big"  # 40 MB of images, raw: read into one array
    big.mkdir()
    write_idx(
        big / "train-images-idx3-ubyte", np.random.default_rng(0).integers(0, 256, (10**4, 64, 64))
    )
    write_idx(big / "train-labels-idx1-ubyte", np.zeros(10**4))
    loaded = []
    peak = _peak_kib(lambda: loaded.append(get_dataset(f"idx:{big}", "train")))
    assert loaded[0].images.shape == (10**4, 1, 64, 64)
    assert peak < 1.5 * 40 * 1024  # KiB; the join and the copy had made it 3x


def test_an_idx_file_wins_over_a_folder_of_another_spelling(tmp_path):
    """Kaggle's MNIST holds train-images.idx3-ubyte (the file) and train-images-idx3-ubyte/ (a
    folder with a copy): the first fix had taken the folder and failed. A name that is only a
    folder says so."""
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    write_idx(kaggle / "train-images.idx3-ubyte", np.zeros((3, 4, 4)))
    write_idx(kaggle / "train-labels.idx1-ubyte", np.arange(3))
    (kaggle / "train-images-idx3-ubyte").mkdir()
    assert len(get_dataset(f"idx:{kaggle}", "train")) == 3
    (kaggle / "train-images.idx3-ubyte").unlink()
    with pytest.raises(DataError, match="train-images-idx3-ubyte: cannot read .Is a directory"):
        get_dataset(f"idx:{kaggle}", "train")


def test_a_test_only_idx_folder_without_the_last_class_says_how_to_name_it(tmp_path):
    """`dorefa eval --data idx:DIR` on test files whose labels stop at 8 is refused as "9
    classes; the model expects 10" (fewer classes may be other data); the error now says that
    idx counts the largest label + 1 and that the data set's own name takes such files."""
    from dorefa.data import require_model_shape

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (9, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(9))
    data = get_dataset(f"idx:{tmp_path}", "test")
    assert data.num_classes == 9 and data.classes_from_labels
    for shown in (data, data.subset(5)):  # eval's --test-subset had lost the hint
        with pytest.raises(ValueError, match="largest label . 1; for 10-class data .*mnist:DIR"):
            require_model_shape(shown, "idx", 1, 10, "the model")
    with pytest.raises(ValueError, match="9 classes; the model expects 1 and 8: pick the [a-z ]*$"):
        require_model_shape(data, "idx", 1, 8, "the model")
    named = get_dataset(f"fashion-mnist:{tmp_path}", "test")
    require_model_shape(named, "fashion-mnist", 1, 10, "the model")


def test_an_empty_data_dir_is_refused(capsys):
    """`--data-dir "$DIR"` with DIR unset had trained and tested on the default data."""
    from dorefa.cli import main

    with pytest.raises(DataError, match="--data-dir is empty: give a folder"):
        get_dataset("fashion-mnist", "test", data_dir=" ")
    assert main(["train", "--data-dir", "", "--epochs", "1", "--subset", "64"]) == 2
    assert "--data-dir is empty" in capsys.readouterr().err


def test_image_folder_names_unreadable_twin_and_odd_entries(tmp_path, monkeypatch, capsys):
    """Found by a hostile review: class folders 'é' composed and decomposed had both taken one
    label (and a class with no images was made); a broken link and a folder named like an
    image were skipped unsaid; an unreadable folder raised PermissionError raw; image_size 0
    gave 224 and 2.5 gave 2 x 2 images."""
    import os

    make_imagefolder(tmp_path / "a")
    for name in ("\u00e9", "e\u0301"):
        save_image(tmp_path / "b" / "train" / name / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="the same name in two Unicode forms"):
        get_dataset(f"imagefolder:{tmp_path / 'b'}", "train")
    ant = tmp_path / "a" / "train" / "ant"
    (ant / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (ant / "dir.jpg").mkdir()
    capsys.readouterr()
    get_dataset(f"imagefolder:{tmp_path / 'a'}", "train")
    err = capsys.readouterr().err
    assert "skipped 2 entries that are not image files" in err and "ant/dir.jpg" in err
    for size, error in ((0, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="image_size must be an int in 1"):
            get_dataset(f"imagefolder:{tmp_path / 'a'}", "train", image_size=size)

    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(DataError, match="cannot read the folder .Permission denied"):
        get_dataset(f"imagefolder:{tmp_path / 'a'}", "train")


def test_idx_svhn_and_cifar_say_what_they_cannot_read(tmp_path, monkeypatch):
    """An IDX name that is a folder was 'no train images file'; an SVHN y saved sparse raised
    a bare ValueError; unreadable CIFAR and SVHN files were called corrupt."""
    import pathlib

    import scipy.io
    import scipy.sparse

    (tmp_path / "i" / "train-images-idx3-ubyte").mkdir(parents=True)
    write_idx(tmp_path / "i" / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: cannot read .Is a directory"):
        get_dataset(f"idx:{tmp_path / 'i'}", "train")
    (tmp_path / "s").mkdir()
    y = scipy.sparse.csr_matrix(np.ones((4, 1)))
    scipy.io.savemat(
        tmp_path / "s" / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 4), "u1"), "y": y}
    )
    with pytest.raises(DataError, match="X and y must be dense arrays, got ndarray and csc"):
        get_dataset(f"svhn:{tmp_path / 's'}", "test")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "test_batch").write_bytes(b"x")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    with pytest.raises(DataError, match=r"test_batch: cannot read \(Permission denied\)"):
        get_dataset(f"cifar10:{tmp_path / 'c'}", "test")
    monkeypatch.setattr(scipy.io, "loadmat", denied)
    with pytest.raises(DataError, match=r"test_32x32.mat: cannot read \(Permission denied\)"):
        get_dataset(f"svhn:{tmp_path / 's'}", "test")


def test_the_official_python_2_cifar_batches_load(tmp_path):
    """The official batches were pickled by Python 2: the dtype's name and byte order come as
    bytes, which the first version of the safe reader refused (every real download failed).
    Text arrays load too (a filenames array, never read)."""
    from data_files import py2_cifar_batch
    from dorefa.data.safe_pickle import safe_load

    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    (tmp_path / "test_batch").write_bytes(py2_cifar_batch(data, [1, 2, 3], [b"a.png"] * 3))
    test = get_dataset(f"cifar10:{tmp_path}", "test")
    assert np.array_equal(test.images.numpy().reshape(3, -1), data)
    assert test.labels.tolist() == [1, 2, 3]
    names = np.array([b"a.png", b"bb.png"]), np.array(["x", "yz"])
    got = safe_load(pickle.dumps({b"names": names[0], b"text": names[1]}, protocol=2))
    assert np.array_equal(got[b"names"], names[0]) and np.array_equal(got[b"text"], names[1])
