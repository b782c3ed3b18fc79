"""IDX files (the MNIST / Fashion-MNIST format), raw or gzip-compressed.

Format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): a 4-byte magic
``0x00 0x00 <dtype> <ndim>`` (dtype 0x08 = unsigned byte), then ``ndim`` big-endian uint32
dimension sizes, then the data in C order. Images are ``0x00000803`` (N, H, W), labels
``0x00000801`` (N,). A split is a pair of files in one folder, named
``train-images-idx3-ubyte[.gz]`` / ``train-labels-idx1-ubyte[.gz]`` and ``t10k-...`` (or
``test-...``) for the test split; the ``train-images.idx3-ubyte`` spelling is accepted too.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .arrays import ArrayDataset
from .errors import DataError

IMAGES_MAGIC = 0x00000803  # uint8, 3 dims (N, H, W)
LABELS_MAGIC = 0x00000801  # uint8, 1 dim (N,)

_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
_KINDS = {"images": ("images", "idx3", IMAGES_MAGIC), "labels": ("labels", "idx1", LABELS_MAGIC)}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] != b"\x1f\x8b":  # not gzip, whatever the name says
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read one uint8 IDX file and check its magic; returns a read-only array of its shape."""
    path = Path(path)
    buf = _read_bytes(path)
    what = "images" if magic == IMAGES_MAGIC else "labels"
    if len(buf) < 4:
        raise DataError(f"{path}: truncated: {len(buf)} bytes, too short for an IDX header")
    got = int.from_bytes(buf[:4], "big")
    if got != magic:
        raise DataError(f"{path}: bad IDX magic 0x{got:08x}, expected 0x{magic:08x} for {what}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated: {len(buf)} bytes, header needs {header}")
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    dims = "x".join(map(str, shape))
    if len(buf) < expected:
        raise DataError(
            f"{path}: truncated: header says {dims} but file has {len(buf)} bytes "
            f"(expected {expected})"
        )
    if len(buf) > expected:
        raise DataError(
            f"{path}: header says {dims} ({expected} bytes) but file has {len(buf)} bytes"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_file(folder: Path, split: str, kind: str) -> Path | None:
    """The IDX file for (split, kind) in folder, or None. kind: 'images' or 'labels'."""
    word, idx, _ = _KINDS[kind]
    for prefix in _PREFIXES[split]:
        for stem in (f"{prefix}-{word}-{idx}-ubyte", f"{prefix}-{word}.{idx}-ubyte"):
            for suffix in (".gz", ""):
                p = folder / (stem + suffix)
                if p.is_file():
                    return p
    return None


def _require(folder: Path, split: str, kind: str, hint: str) -> Path:
    p = find_idx_file(folder, split, kind)
    if p is None:
        word, idx, _ = _KINDS[kind]
        names = " or ".join(f"{pre}-{word}-{idx}-ubyte[.gz]" for pre in _PREFIXES[split])
        where = (
            f"{folder}: no {split} {kind} file" if folder.is_dir() else f"{folder}: no such folder"
        )
        raise DataError(f"{where} (expected {names}){hint}")
    return p


def load_idx(
    folder: str | Path,
    split: str,
    *,
    name: str = "idx",
    num_classes: int | None = None,
    hint: str = "",
) -> ArrayDataset:
    """Load one split of an IDX folder as an ArrayDataset of uint8 (N, 1, H, W).

    num_classes: fixed (10 for MNIST-like sets) or None to infer it as 1 + the largest label
    of both splits' label files (so train and test agree). hint: appended to missing-file
    errors, e.g. how to install the data.
    """
    folder = Path(folder).expanduser()
    img_path = _require(folder, split, "images", hint)
    lab_path = _require(folder, split, "labels", hint)
    images = read_idx(img_path, IMAGES_MAGIC)  # (N, H, W)
    labels = read_idx(lab_path, LABELS_MAGIC)  # (N,)
    if len(labels) != len(images):
        raise DataError(
            f"{lab_path}: label count {len(labels)} != image count {len(images)} in {img_path.name}"
        )
    top = int(labels.max()) if len(labels) else -1
    if num_classes is None:
        other = find_idx_file(folder, "test" if split == "train" else "train", "labels")
        if other is not None:
            other_labels = read_idx(other, LABELS_MAGIC)
            if len(other_labels):
                top = max(top, int(other_labels.max()))
        num_classes = top + 1
    elif top >= num_classes:
        raise DataError(f"{lab_path}: label {top} out of range 0..{num_classes - 1}")
    # np.frombuffer views are read-only; copy once so torch owns writable memory.
    return ArrayDataset(
        images[:, None].copy(),
        labels.astype(np.int64),
        num_classes=max(num_classes, 1),
        name=name,
    )
