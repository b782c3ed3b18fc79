"""Unpickling a downloaded file without trusting it (CIFAR-10's batches are pickles).

Unpickling can call any importable function, so :func:`safe_load` resolves only builtin
containers and what numpy writes for arrays, dtypes and scalars, and none of them runs numpy
on the file's own state: an array's or dtype's state is checked here, and the array is made
from the bytes the file holds (``np.frombuffer``). So nothing is larger than the file, and no
object dtype is made (a hostile review made a 240-byte pickle allocate 1.2 GB through
``numpy.ndarray(shape)``, another 800 MB through ``scalar(dtype('V400000000'))``, and crash
the process with an object array's state).
"""

from __future__ import annotations

import builtins
import codecs
import io
import math
import pickle
import re

import numpy as np

# The dtypes an array may have: plain numbers and fixed-width text (no objects, no structures).
_DTYPES = frozenset(
    f"{kind}{size}" for kind, sizes in (("u", "1248"), ("i", "1248"), ("f", "48")) for size in sizes
) | {"b1"}
_TEXT = re.compile(r"[SU][0-9]{1,9}")  # its size bounded by the bytes the file holds


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list, or calls one as numpy's pickles do
    not (possibly malicious)."""


class _Dtype:
    """``numpy.dtype(name, align, copy)`` then its state, as numpy pickles a dtype: a plain
    number type of :data:`_DTYPES` and a byte order, nothing else."""

    def __init__(self, name=None, align=False, copy=True):
        name = _text(name)  # Python 2's pickles (the official batches): bytes, read as such
        if not isinstance(name, str) or not (name in _DTYPES or _TEXT.fullmatch(name)):
            raise ForbiddenGlobal(f"dtype {name!r} (only plain number and text types are read)")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        order = _text(state[1]) if isinstance(state, tuple) and len(state) >= 5 else None
        plain = order in ("<", ">", "|", "=")
        if not plain or any(part is not None for part in state[2:5]):  # subarray, names, fields
            raise ForbiddenGlobal("a dtype state other than a plain type's")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


def _text(value):
    """A Python 2 str, which ``encoding='bytes'`` reads as bytes, as text."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _from_bytes(raw, dtype, shape, fortran: bool) -> np.ndarray:
    """The array of ``shape`` that ``raw`` holds, refused unless its length is exactly that."""
    if not isinstance(dtype, _Dtype) or not isinstance(raw, (bytes, bytearray)):
        raise ForbiddenGlobal("an array whose dtype or data is not what numpy writes")
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise ForbiddenGlobal(f"an array of shape {shape!r}")
    if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
        raise ForbiddenGlobal(f"an array of shape {shape} with {len(raw)} bytes of data")
    flat = np.frombuffer(raw, dtype.dtype).copy()  # writable, owned
    return flat.reshape(shape, order="F" if fortran else "C")


class _Array:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')`` then ``(version, shape, dtype, fortran,
    data)``: filled by :func:`_from_bytes`, then swapped for its array by :func:`safe_load`."""

    def __init__(self, subtype=None, shape=None, typecode=None):
        if subtype is not _NdarrayName or shape != (0,):
            raise ForbiddenGlobal("an array not pickled as numpy pickles one")
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ForbiddenGlobal("an array state other than numpy's")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _from_bytes(raw, dtype, shape, bool(fortran))


class _NdarrayName:
    """What a pickle's ``numpy.ndarray`` resolves to: an argument of ``_reconstruct`` only."""

    def __new__(cls, *args, **kwargs):
        raise ForbiddenGlobal("numpy.ndarray called directly (an array of memory the file lacks)")


def _frombuffer(raw, dtype, shape, order="C"):
    """Protocol 5's ``_frombuffer(buffer, dtype, shape, order)``."""
    return _from_bytes(raw, dtype, tuple(shape), order == "F")


def _scalar(dtype, raw=None):
    """``scalar(dtype, bytes)``: one number of exactly the dtype's size (without the bytes,
    numpy had zero-filled an itemsize of the file's choosing)."""
    return _from_bytes(raw, dtype, (), False)[()]


def _bytes(*args):
    """``bytes()`` as protocol 2 writes b'', or of a str and an encoding; not ``bytes(n)``."""
    if args and isinstance(args[0], int):
        raise ForbiddenGlobal("bytes(n), n bytes the file does not hold")
    return bytes(*args)


def _latin1(text, encoding="utf-8"):
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
    **{(mod, "bytes"): _bytes for mod in ("builtins", "__builtin__")},
    ("_codecs", "encode"): _latin1,
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _Dtype,
    # numpy >= 2 moved these to numpy._core; pickles name either module.
    **{
        (mod, name): obj
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, obj in (("_reconstruct", _Array), ("scalar", _scalar))
    },
    **{(mod, "_frombuffer"): _frombuffer for mod in ("numpy.core.numeric", "numpy._core.numeric")},
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only builtin containers and numpy's arrays, dtypes, scalars."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"forbidden global {module}.{name}") from None


def safe_load(data: bytes):
    """The object a pickle holds, its arrays numpy arrays (itself, or a dict's values: what a
    CIFAR batch holds; an array deeper down stays a stand-in that no check takes)."""
    # encoding='bytes': the official batches were pickled by Python 2 (str keys become bytes).
    obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    return _arrays(obj)


def _arrays(obj):
    if isinstance(obj, _Array):
        if obj.array is None:
            raise ForbiddenGlobal("an array without its data")
        return obj.array
    if isinstance(obj, _Dtype):
        return obj.dtype
    if isinstance(obj, dict):
        return {k: _arrays(v) if isinstance(v, (_Array, _Dtype)) else v for k, v in obj.items()}
    return obj
