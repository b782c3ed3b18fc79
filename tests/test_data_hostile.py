"""Data files built to hurt: what a hostile review found the loaders doing with them."""

from __future__ import annotations

import codecs
import pickle
import resource

import numpy as np
import pytest
from PIL import Image

from data_files import make_imagefolder, save_image, write_idx
from dorefa.data import DataError, get_dataset
from dorefa.data.cifar import _reconstruct


class _Call:
    """Pickles as ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.parametrize(
    "data, refused",
    [
        (_Call(np.ndarray, (400000, 3072), np.dtype("u1")), "numpy.ndarray called directly"),
        (_Call(_reconstruct, np.ndarray, (400000, 3072), b"B"), "not pickled as numpy pickles"),
        (_Call(bytes, 10**9), r"bytes\(n\)"),
        (_Call(codecs.encode, "abc", "rot13"), "other than of a str to latin1"),
    ],
    ids=["ndarray", "reconstruct", "bytes", "encode"],
)
def test_a_small_cifar_pickle_makes_nothing_larger_than_itself(tmp_path, data, refused):
    """A 240-byte test_batch had called numpy.ndarray((400000, 3072)): 1.2 GB of uninitialised
    memory read as images. Only numpy's own way of pickling an array is taken."""
    labels = np.zeros(3, np.int64)
    raw = pickle.dumps({b"data": data, b"labels": labels}, protocol=2)
    assert len(raw) < 400
    (tmp_path / "test_batch").write_bytes(raw)
    rss = _rss_kib()
    with pytest.raises(DataError, match=f"refused pickle .*{refused}"):
        get_dataset(f"cifar10:{tmp_path}", "test")
    assert _rss_kib() - rss < 100 * 1024


def test_a_long_thin_image_is_cropped_in_bounded_memory(tmp_path):
    """A 114-byte 1 x 8000 PNG had been resized whole, to 256 x 2048000 (2.4 GB, 4.4 s an
    item); an image more than 4x as long as wide is resized within its crop. Other images keep
    the resize-then-crop pixels."""
    make_imagefolder(tmp_path)
    save_image(tmp_path / "val" / "ant" / "long.png", np.zeros((8000, 1), np.uint8))
    assert (tmp_path / "val" / "ant" / "long.png").stat().st_size < 1000
    data = get_dataset(f"imagefolder:{tmp_path}", "test", image_size=224)
    rss = _rss_kib()
    images = {data.samples[i][0].name: data[i][0] for i in range(len(data))}
    assert _rss_kib() - rss < 200 * 1024
    assert images["long.png"].shape == (3, 224, 224) and not images["long.png"].any()
    path = tmp_path / "val" / "zebra" / "01.png"  # 48 x 64: resized whole, then cropped
    img = Image.open(path).convert("RGB").resize((256, 341), Image.Resampling.BILINEAR)
    want = np.asarray(img.crop((16, 58, 240, 282))).transpose(2, 0, 1)
    assert np.array_equal(images["01.png"].numpy(), want)


def test_an_idx_gzip_bomb_is_refused_before_it_is_inflated(tmp_path):
    """A 1 MB gzip of zeros whose header claimed 1 GiB had been inflated (2.3 GB at the peak:
    the data held three times over); the limit was 16 GiB. A gzip claiming more than 100x its
    size is refused from its header, and the data is held once."""
    import gzip

    head = bytes([0, 0, 8, 3]) + np.array([50, 1000, 1000], ">u4").tobytes()
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(head + bytes(50 * 10**6), compresslevel=9))
    assert path.stat().st_size < 100_000
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(50, np.uint8))
    rss = _rss_kib()
    with pytest.raises(DataError, match="more than 100x: refused as a gzip bomb"):
        get_dataset(f"idx:{tmp_path}", "train")
    assert _rss_kib() - rss < 20 * 1024


def test_a_test_only_idx_folder_without_the_last_class_fits_a_model(tmp_path):
    """`dorefa eval --data idx:DIR` on test files whose labels stop at 8 had been refused as
    "9 classes; the model expects 10": an idx folder's count is its largest label + 1, so
    fewer is not other data. A fixed count (fashion-mnist) and more classes are refused."""
    from dorefa.data import require_model_shape

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (9, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(9))
    data = get_dataset(f"idx:{tmp_path}", "test")
    assert data.num_classes == 9 and data.classes_from_labels
    require_model_shape(data, "idx", 1, 10, "the model")
    with pytest.raises(ValueError, match="9 classes; the model expects 1 and 8"):
        require_model_shape(data, "idx", 1, 8, "the model")
    data.classes_from_labels = False  # as a registered set with its own count
    with pytest.raises(ValueError, match="9 classes; the model expects 1 and 10"):
        require_model_shape(data, "idx", 1, 10, "the model")
