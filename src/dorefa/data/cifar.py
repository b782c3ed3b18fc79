"""CIFAR-10, "python version" (https://www.cs.toronto.edu/~kriz/cifar.html).

``data_batch_1`` .. ``data_batch_5`` (train) and ``test_batch``, directly in the folder or in
its ``cifar-10-batches-py`` subfolder. Each is a pickled dict with ``b'data'``: uint8
(N, 3072) laid out as 3 planes of 32x32 (R, G, B) in row-major order, and ``b'labels'``:
a list of N ints in 0..9.

The pickles are read with :class:`SafeUnpickler`: unpickling can call any importable
function, so a downloaded batch file must not be trusted with plain ``pickle.load``.
"""

from __future__ import annotations

import builtins
import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from .arrays import ArrayDataset
from .errors import DataError, require_folder

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
SUBDIR = "cifar-10-batches-py"
HINT = (
    "; download and unpack cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
)


def _numpy_reconstruct():
    # numpy >= 2 moved the implementation to numpy._core; pickles name either module.
    try:
        from numpy._core.multiarray import _reconstruct, scalar
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
        from numpy.core.numeric import _frombuffer
    return _reconstruct, scalar, _frombuffer


_reconstruct, _scalar, _frombuffer = _numpy_reconstruct()


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list, or calls one as numpy's pickles do
    not (possibly malicious)."""


# The callables a pickle may reach make nothing larger than the pickle itself. A hostile review
# made a 240-byte test_batch call numpy.ndarray((400000, 3072)) and get 1.2 GB of uninitialised
# memory as "images"; bytes(10**10) is the same trick.
class _NdarrayName:
    """What a pickle's ``numpy.ndarray`` resolves to: an argument of ``_reconstruct`` only (as
    numpy pickles arrays), not a constructor."""

    def __new__(cls, *args, **kwargs):
        raise ForbiddenGlobal("numpy.ndarray called directly (an array of memory the file lacks)")


def _array_from_pickle(subtype, shape, dtype):
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty array that the pickle's state
    then fills from its own bytes (numpy checks their length against the shape)."""
    if subtype is not _NdarrayName or tuple(shape) != (0,):
        raise ForbiddenGlobal("an array not pickled as numpy pickles one")
    return _reconstruct(np.ndarray, shape, dtype)


def _bytes_from_pickle(*args):
    """``bytes()`` as protocol 2 writes b'', or of a str and an encoding; not ``bytes(n)``."""
    if args and isinstance(args[0], int):
        raise ForbiddenGlobal("bytes(n), n bytes the file does not hold")
    return bytes(*args)


def _latin1_from_pickle(text, encoding="utf-8"):
    """Protocol < 3 pickles of Python 3 bytes: ``_codecs.encode(str, 'latin1')``."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise ForbiddenGlobal(f"_codecs.encode other than of a str to latin1 ({encoding})")
    return codecs.encode(text, encoding)


_ALLOWED = {
    **{
        (mod, name): getattr(builtins, name)
        for mod in ("builtins", "__builtin__")
        for name in ("dict", "list", "str", "int")
    },
    **{(mod, "bytes"): _bytes_from_pickle for mod in ("builtins", "__builtin__")},
    ("_codecs", "encode"): _latin1_from_pickle,
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): np.dtype,
    **{
        (mod, name): obj
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, obj in (("_reconstruct", _array_from_pickle), ("scalar", _scalar))
    },
    # Protocol 5 pickles arrays as numpy.core.numeric._frombuffer(buffer, dtype, shape, order).
    **{(mod, "_frombuffer"): _frombuffer for mod in ("numpy.core.numeric", "numpy._core.numeric")},
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only builtin containers and numpy array reconstruction."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"forbidden global {module}.{name}") from None


def safe_load(data: bytes):
    # encoding='bytes': the official batches were pickled by Python 2 (str keys become bytes).
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


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
