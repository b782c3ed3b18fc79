"""Small data files written in each real format (IDX, SVHN .mat, CIFAR pickles, image
folders), for the data tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    """IDX: magic 0x0000 08 ndim, big-endian uint32 dims, uint8 data."""
    arr = np.asarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, compresslevel=1)
    path.write_bytes(raw)
    return path


def make_idx_dir(root: Path, n_train=12, n_test=5, gz=False, test_prefix="t10k", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), (test_prefix, n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return root


def make_svhn_dir(root: Path, n_train=6, n_test=4, n_extra=0) -> Path:
    """X: uint8 (32, 32, 3, N); y: (N, 1) in 1..10, 10 meaning the digit 0."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test), ("extra", n_extra)):
        if n:
            x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
            y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]
            scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return root


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def make_cifar_dir(root: Path, n=3, sub=True, protocol=2) -> Path:
    folder = root / "cifar-10-batches-py" if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(pickle.dumps(cifar_batch(n, k), protocol=protocol))
    return root


def save_image(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_imagefolder(root: Path) -> Path:
    """Two classes (given out of order), JPEG and PNG, RGB and gray, assorted sizes."""
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for c, cls in enumerate(("zebra", "ant")):
            for k, (h, w) in enumerate(((40, 56), (64, 48), (50, 50))):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                if k == 2:
                    arr = arr[..., 0]  # grayscale
                save_image(root / split / cls / f"{c}{k}.{'jpg' if k == 0 else 'png'}", arr)
    return root


WRITERS = {
    "fashion-mnist": lambda p: make_idx_dir(p, gz=True),
    "mnist": make_idx_dir,
    "idx": make_idx_dir,
    "svhn": make_svhn_dir,
    "cifar10": make_cifar_dir,
    "imagefolder": make_imagefolder,
}


def py2_cifar_batch(data: np.ndarray, labels: list[int], names: list[bytes]) -> bytes:
    """A CIFAR batch pickled as the official files are: by Python 2 and numpy 1.x, protocol 2
    (its strings, the dtype's name and byte order included, are Python 2 str: SHORT_BINSTRING,
    which Python 3 reads as bytes). Written opcode by opcode: Python 3 cannot pickle so."""

    def text(b: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(b)]) + b

    n = len(data)
    p = b"\x80\x02}q\x01(" + text(b"data")
    p += b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85"
    p += text(b"b") + b"\x87Rq\x05(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86"
    p += b"cnumpy\ndtype\nq\x06" + text(b"u1") + b"K\x00K\x01\x87Rq\x07(K\x03" + text(b"|")
    p += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    p += b"\x89T" + struct.pack("<I", data.nbytes) + data.tobytes() + b"tb"
    p += text(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    p += text(b"batch_label") + text(b"testing batch 1 of 1")
    p += text(b"filenames") + b"](" + b"".join(text(f) for f in names) + b"e"
    return p + b"u."
