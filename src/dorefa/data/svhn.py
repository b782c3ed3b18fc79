"""SVHN, cropped-digits format (http://ufldl.stanford.edu/housenumbers/, "Format 2").

Files ``train_32x32.mat``, ``test_32x32.mat`` and optionally ``extra_32x32.mat`` (MATLAB v5,
read with scipy.io.loadmat) each hold ``X``: uint8 (32, 32, 3, N) and ``y``: (N, 1) with
labels 1..10, where 10 stands for the digit 0. When ``extra_32x32.mat`` is present it is
appended to the training split, as the paper does (604k training images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .arrays import ArrayDataset
from .errors import DataError, require_folder

HINT = (
    "; download train_32x32.mat / test_32x32.mat (and optionally extra_32x32.mat) "
    "from http://ufldl.stanford.edu/housenumbers/ into that folder"
)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One .mat file -> (images uint8 (N, 3, 32, 32), labels int64 (N,) in 0..9)."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: file not found{HINT}")
    try:
        mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise DataError(f"{path}: unsupported MATLAB file version ({e}); expected v5") from None
    except PermissionError as e:  # not "corrupt"
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # scipy raises many types (ValueError, TypeError, OSError, ...)
        raise DataError(
            f"{path}: corrupt or not a MATLAB .mat file ({type(e).__name__}: {e})"
        ) from None
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(f"{path}: no variable {key!r} (expected X (32,32,3,N) and y (N,1))")
    x, y = mat["X"], mat["y"]
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):  # a sparse matrix, say
        raise DataError(f"{path}: X and y must be dense arrays, got {type(x).__name__} and "
                        f"{type(y).__name__}")  # fmt: skip
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8 or 0 in x.shape[:2]:
        raise DataError(f"{path}: X must be uint8 (H, W, 3, N), got {x.dtype} {x.shape}")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DataError(f"{path}: y must hold whole numbers 1..10, got {y.dtype}")
    y = y.reshape(-1)
    if len(y) != x.shape[3]:
        raise DataError(f"{path}: label count {len(y)} != image count {x.shape[3]}")
    if len(y) and (y.min() < 0 or y.max() > 10):
        raise DataError(
            f"{path}: labels must lie in 1..10 (10 = digit 0), got {y.min()}..{y.max()}"
        )
    labels = y.astype(np.int64) % 10  # 10 -> 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels  # (N, 3, H, W)


def load_svhn(folder: str | Path, split: str) -> ArrayDataset:
    folder = Path(folder).expanduser()
    require_folder(folder, f"train_32x32.mat and test_32x32.mat{HINT}")
    files = [folder / f"{split}_32x32.mat"]
    if split == "train" and (folder / "extra_32x32.mat").is_file():
        files.append(folder / "extra_32x32.mat")
    parts = [read_svhn_mat(f) for f in files]
    if len(parts) == 1:
        images, labels = parts[0]
    else:
        if parts[0][0].shape[1:] != parts[1][0].shape[1:]:
            raise DataError(
                f"{files[1]}: image shape {parts[1][0].shape[1:]} != {parts[0][0].shape[1:]} "
                f"in {files[0].name}"
            )
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(images, labels, num_classes=10, name="svhn")
