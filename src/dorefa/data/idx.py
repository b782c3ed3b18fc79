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
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .arrays import ArrayDataset
from .errors import DataError, require_folder

IMAGES_MAGIC = 0x00000803  # uint8, 3 dims (N, H, W)
LABELS_MAGIC = 0x00000801  # uint8, 1 dim (N,)

_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
_KINDS = {"images": ("images", "idx3", IMAGES_MAGIC), "labels": ("labels", "idx1", LABELS_MAGIC)}


MAX_DATA_BYTES = 1 << 34  # 16 GiB: a header claiming more is corrupt
# A gzip file may claim at most this many times its own size (plus 1 MiB): real IDX files
# compress 2-5x, and a 1 MB bomb of zeros had claimed (and taken) 1 GiB, 2.3 GB at its peak.
MAX_GZIP_RATIO = 100
_CHUNK = 1 << 24


def _read_up_to(f: BinaryIO, n: int) -> bytes:
    """At most n bytes of f (a header's few), read in chunks (see :func:`_read_array`)."""
    return _read_array(f, n).tobytes()


def _read_array(f: BinaryIO, n: int) -> np.ndarray:
    """At most n bytes of f as a writable uint8 array, read in chunks: memory follows what is
    there, not what a hostile header claims (one big read would allocate n bytes up front), and
    each chunk is freed as it is copied (a join and a copy had held the data three times)."""
    parts = []
    while n > 0:
        part = f.read(min(n, _CHUNK))
        if not part:
            break
        parts.append(part)
        n -= len(part)
    out = np.empty(sum(map(len, parts)), np.uint8)
    at = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[at : at + len(part)] = np.frombuffer(part, np.uint8)
        at += len(part)
    return out


def _header(f: BinaryIO, path: Path, magic: int) -> tuple[int, ...]:
    """The shape an IDX stream's header gives, its magic checked."""
    what = "images" if magic == IMAGES_MAGIC else "labels"
    head = _read_up_to(f, 4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated: {len(head)} bytes, too short for an IDX header")
    got = int.from_bytes(head, "big")
    if got != magic:
        raise DataError(f"{path}: bad IDX magic 0x{got:08x}, expected 0x{magic:08x} for {what}")
    ndim = magic & 0xFF
    dims_raw = _read_up_to(f, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(
            f"{path}: truncated: {4 + len(dims_raw)} bytes, header needs {4 + 4 * ndim}"
        )
    return tuple(int.from_bytes(dims_raw[k : k + 4], "big") for k in range(0, 4 * ndim, 4))


def _check_claim(
    path: Path, shape: tuple[int, ...], size: tuple[int, bool], count: int | None
) -> None:
    """Refuse a header whose claim the file cannot back, before its data is read: ``size`` is
    (the file's bytes, whether it is gzip); ``count``: the items the header must claim."""
    header, (file_size, gz) = 4 + 4 * len(shape), size
    n = math.prod(shape)  # Python ints: no overflow for hostile dims
    expected, dims = header + n, "x".join(map(str, shape))
    if count is not None and shape[0] != count:  # before reading what it claims
        raise DataError(f"{path}: label count {shape[0]} != image count {count}")
    if not gz and file_size < expected:
        raise DataError(
            f"{path}: truncated: header says {dims} but file has {file_size} bytes "
            f"(expected {expected})"
        )
    if n > MAX_DATA_BYTES:
        raise DataError(
            f"{path}: header says {dims} ({n} bytes of data), more than the "
            f"{MAX_DATA_BYTES}-byte limit: the file is corrupt"
        )
    if gz and count is None and n > MAX_GZIP_RATIO * file_size + (1 << 20):
        raise DataError(
            f"{path}: header says {dims} ({n} bytes of data) from {file_size} bytes of gzip, "
            f"more than {MAX_GZIP_RATIO}x: refused as a gzip bomb (image files compress 2-5x; "
            "gunzip it yourself if it is genuine)"
        )


def _parse(f: BinaryIO, path: Path, magic: int, size: tuple[int, bool], count: int | None):
    """Header, checks and data of one IDX stream (:func:`_check_claim`)."""
    shape = _header(f, path, magic)
    _check_claim(path, shape, size, count)
    header, (file_size, gz) = 4 + 4 * len(shape), size
    n = math.prod(shape)
    expected, dims = header + n, "x".join(map(str, shape))
    data = _read_array(f, n + 1)
    if len(data) < n:
        raise DataError(
            f"{path}: truncated: header says {dims} but file has {header + len(data)} bytes "
            f"(expected {expected})"
        )
    if len(data) > n:
        actual = f"more than {expected}" if gz else file_size
        raise DataError(
            f"{path}: header says {dims} ({expected} bytes) but file has {actual} bytes"
        )
    return data.reshape(shape)


def _open_idx(path: Path, read):
    """``read(stream, (file bytes, gzip?))`` on the IDX file at path, raw or gzip whatever its
    name says; its failures to read as DataError."""
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            size = (os.fstat(raw.fileno()).st_size, gz)
            if not gz:
                return read(raw, size)
            try:
                with gzip.GzipFile(fileobj=raw) as f:
                    return read(f, size)
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    except OSError as e:  # DataError is a ValueError: only the open/read failures land here
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_idx(path: str | Path, magic: int, count: int | None = None) -> np.ndarray:
    """Read one uint8 IDX file (raw, or gzip whatever its name says) and check its magic and
    size; returns a writable array of its shape. ``count``: the items its header must claim (a
    labels file: its images' count, checked before its data is read; a gzip file without it
    may claim at most :data:`MAX_GZIP_RATIO` times its size)."""
    path = Path(path)
    return _open_idx(path, lambda f, size: _parse(f, path, magic, size, count))


def idx_shape(path: str | Path, magic: int) -> tuple[int, ...]:
    """The shape an IDX file's header gives, checked as :func:`read_idx` checks it before
    reading the data (only the header is read)."""
    path = Path(path)

    def shape(f, size):
        dims = _header(f, path, magic)
        _check_claim(path, dims, size, None)
        return dims

    return _open_idx(path, shape)


def find_idx_file(folder: Path, split: str, kind: str) -> Path | None:
    """The IDX file for (split, kind) in folder, or None. kind: 'images' or 'labels'."""
    word, idx, _ = _KINDS[kind]
    names = [
        folder / f"{stem}{suffix}"
        for prefix in _PREFIXES[split]
        for stem in (f"{prefix}-{word}-{idx}-ubyte", f"{prefix}-{word}.{idx}-ubyte")
        for suffix in (".gz", "")
    ]
    try:  # the first file; else a name that is there but is not one (a folder, a broken link):
        # read_idx then says what it is (it had been "no such file"). A file wins over a folder
        # of another spelling (Kaggle's MNIST has both).
        there = [p for p in names if p.is_symlink() or p.exists()]
        return next((p for p in there if p.is_file()), there[0] if there else None)
    except OSError as e:  # a folder that cannot be searched
        raise DataError(f"{folder}: cannot read the folder ({e.strerror or e})") from None


def _require(folder: Path, split: str, kind: str, hint: str) -> Path:
    p = find_idx_file(folder, split, kind)
    if p is None:
        word, idx, _ = _KINDS[kind]
        names = " or ".join(f"{pre}-{word}-{idx}-ubyte[.gz]" for pre in _PREFIXES[split])
        require_folder(folder, f"IDX files such as {names}{hint}")
        raise DataError(f"{folder}: no {split} {kind} file (expected {names}){hint}")
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
    labels = read_idx(lab_path, LABELS_MAGIC, count=len(images))  # (N,): as many, or refused
    if len(images) == 0:
        raise DataError(f"{img_path}: no images (the header says 0); the {split} split is empty")
    if 0 in images.shape[1:]:
        raise DataError(f"{img_path}: images of {images.shape[1]} x {images.shape[2]} pixels")
    top = int(labels.max()) if len(labels) else -1
    inferred = num_classes is None
    if inferred:
        split2 = "test" if split == "train" else "train"
        other = find_idx_file(folder, split2, "labels")
        if other is not None:  # as many labels as its images (a gzip of sorted labels
            # compresses ~1000x: no ratio bounds it), else the gzip ratio does
            other_images = find_idx_file(folder, split2, "images")
            try:  # a count its images file backs (a bare header could claim any)
                count = idx_shape(other_images, IMAGES_MAGIC)[0] if other_images else None
            except DataError:  # that split's own load says what is wrong with it
                count = None
            other_labels = read_idx(other, LABELS_MAGIC, count)
            if len(other_labels):
                top = max(top, int(other_labels.max()))
        num_classes = top + 1
    elif top >= num_classes:
        raise DataError(f"{lab_path}: label {top} out of range 0..{num_classes - 1}")
    return ArrayDataset(
        images[:, None],  # writable (read_idx): torch takes it without a copy
        labels.astype(np.int64),
        num_classes=max(num_classes, 1),
        name=name,
        classes_from_labels=inferred,
    )
