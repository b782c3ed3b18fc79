"""CIFAR-10, "python version" (https://www.cs.toronto.edu/~kriz/cifar.html).

``data_batch_1`` .. ``data_batch_5`` (train) and ``test_batch``, directly in the folder or in
its ``cifar-10-batches-py`` subfolder. Each is a pickled dict with ``b'data'``: uint8
(N, 3072) laid out as 3 planes of 32x32 (R, G, B) in row-major order, and ``b'labels'``:
a list of N ints in 0..9.

The pickles are read with :func:`dorefa.data.safe_pickle.safe_load`: unpickling can call any
importable function, so a downloaded batch file must not be trusted with plain ``pickle.load``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .arrays import ArrayDataset
from .errors import DataError, require_folder
from .safe_pickle import ForbiddenGlobal, safe_load

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
SUBDIR = "cifar-10-batches-py"
HINT = (
    "; download and unpack cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    if not path.is_file():
        raise DataError(f"{path}: file not found{HINT}")
    try:
        raw = path.read_bytes()
    except OSError as e:  # not "corrupt"
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        obj = safe_load(raw)
    except ForbiddenGlobal as e:
        raise DataError(
            f"{path}: refused pickle ({e}; only builtin containers and numpy arrays are allowed)"
        ) from None
    except Exception as e:  # truncated pickles raise EOFError, ValueError, ...
        raise DataError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a dict with b'data' and b'labels', got {type(obj).__name__}"
        )
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: expected keys b'data' and b'labels', got {sorted(obj)}")
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be uint8 (N, 3072), got {got}")
    try:
        raw = np.asarray(labels)
        if raw.dtype.kind not in "iu" or raw.ndim != 1:  # not floats (1.7 would become 1)
            raise TypeError(f"got {raw.dtype} {raw.shape}")
        labels = raw.astype(np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{path}: b'labels' must be a list of ints ({e})") from None
    if len(labels) != len(data):
        raise DataError(f"{path}: label count {len(labels)} != image count {len(data)}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar_folder(folder: Path) -> Path:
    """folder itself or its cifar-10-batches-py subfolder, whichever holds the batches."""
    for cand in (folder, folder / SUBDIR):
        if (cand / "test_batch").is_file() or (cand / "data_batch_1").is_file():
            return cand
    require_folder(folder, f"data_batch_1..5 and test_batch{HINT}")
    raise DataError(
        f"{folder}: no CIFAR-10 batches (expected data_batch_1..5 and test_batch here "
        f"or in {SUBDIR}/){HINT}"
    )


def load_cifar10(folder: str | Path, split: str) -> ArrayDataset:
    root = cifar_folder(Path(folder).expanduser())
    parts = [read_cifar_batch(root / f) for f in (TRAIN_FILES if split == "train" else TEST_FILES)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(images, labels, num_classes=10, name="cifar10")
