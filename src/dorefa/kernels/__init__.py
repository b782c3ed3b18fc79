"""Bit-serial convolution kernels: the Python face of the C++ core (``dorefa._kernels``).

Operands are unsigned integer codes; see :mod:`dorefa.kernels.reference` (the spec, and the
``'reference'`` backend) for the exact semantics. Native backends, fastest first:
``'avx512'`` (VPOPCNTQ), ``'avx2'`` (nibble-table popcount), ``'scalar'`` (portable C++).

The fastest backend the CPU supports runs by default. ``DOREFA_KERNEL=reference|scalar|avx2|
avx512`` forces one (an error names what is available if the CPU lacks it), and
:func:`use_backend` switches in-process::

    with dorefa.kernels.use_backend("scalar"):
        y = dorefa.kernels.bitconv2d(x, w, x_bits=2, w_bits=1, padding=1)

This package never imports torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from . import reference
from .reference import PackedWeights


def _load_native():
    """The compiled extension; ``DOREFA_KERNELS_EXTENSION=/path/to/_kernels*.so`` loads that
    file instead (``make asan`` uses it to test a sanitizer build of the same sources)."""
    path = os.environ.get("DOREFA_KERNELS_EXTENSION")
    if not path:
        from dorefa import _kernels

        return _kernels
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader("dorefa._kernels", path)
    spec = importlib.util.spec_from_file_location("dorefa._kernels", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules["dorefa._kernels"] = module
    return module


try:
    _native = _load_native()
except ImportError as _err:  # not built: only the reference backend exists
    _native = None
    _native_error: ImportError | None = _err
else:
    _native_error = None

__all__ = [
    "PackedWeights",
    "available_backends",
    "backend",
    "bitconv2d",
    "bitconv2d_packed",
    "bitconv2d_requant",
    "bitconv2d_signed",
    "conv_float_quantize",
    "kernel_name",
    "last_kernel",
    "maxpool_codes",
    "pack_weights",
    "reference",
    "set_backend",
    "use_backend",
]

_backend: str | None = None  # resolved lazily so a bad DOREFA_KERNEL does not break imports
_last_ran = ""  # "reference" after a reference call, "native" after a native one


def available_backends() -> list[str]:
    """Backends this machine can run, fastest first; ``'reference'`` is always last."""
    native = list(_native.supported_backends()) if _native is not None else []
    return native + ["reference"]


def _resolve(name: str) -> str:
    if _native is not None:
        return _native.resolve_backend(name)
    if name in ("", "reference"):
        return "reference"
    known = "unknown kernel backend" if name not in ("scalar", "avx2", "avx512") else "backend"
    raise ValueError(
        f"{known} {name!r} is not available: the compiled extension dorefa._kernels "
        f"failed to import ({_native_error}); available: reference"
    )


def backend() -> str:
    """The backend in use: ``'avx512'`` | ``'avx2'`` | ``'scalar'`` | ``'reference'``."""
    global _backend
    if _backend is None:
        _backend = _resolve(os.environ.get("DOREFA_KERNEL", "").strip().lower())
    return _backend


def set_backend(name: str | None) -> str:
    """Selects a backend (``None``: back to ``DOREFA_KERNEL``/auto); returns the previous one."""
    global _backend
    previous = backend()
    _backend = None if name is None else _resolve(name)
    return previous


@contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager: run the enclosed calls on backend ``name``."""
    previous = set_backend(name)
    try:
        yield backend()
    finally:
        set_backend(previous)


def kernel_name(name: str | None = None) -> str:
    """Variant name of a backend's kernel, e.g. ``'bitconv_avx512_6x16'``."""
    b = backend() if name is None else _resolve(name)
    return "reference" if b == "reference" else _native.kernel_name(b)


def last_kernel() -> str:
    """Kernel that ran this thread's last convolution (``'reference'`` or a variant name such
    as ``'bitconv_avx512_8x24'``); ``''`` before any call."""
    if _last_ran == "native":
        return _native.last_kernel()
    return _last_ran


def _ran(where: str) -> None:
    global _last_ran
    _last_ran = where


def pack_weights(w_codes: np.ndarray, w_bits: int) -> PackedWeights:
    """Validates and packs weight codes (O, C, KH, KW) once, for the ``*_packed`` calls."""
    if _native is None or backend() == "reference":
        return reference.pack_weights(w_codes, w_bits)
    w = reference.check_code_array("w_codes", w_codes, "(O, C, KH, KW)")
    w_bits = reference.check_bits("w_bits", w_bits)
    if min(w.shape) < 1:
        raise ValueError(f"w_codes must have no empty dimension, got shape {w.shape}")
    words = _native.pack_weights(w, w_bits)  # also checks the code range
    codes = w.copy()
    codes.flags.writeable = False
    return PackedWeights(codes, w_bits, words)


def _run(x_codes, pw, x_bits, stride, padding, threads, mode, thresholds=None, direction=None):
    b = backend()
    x, x_bits, stride, padding, threads = reference.check_conv(
        x_codes, pw, x_bits, stride, padding, threads, check_values=False
    )
    o, c, kh, kw = pw.shape
    _ran("native")
    return _native.bitconv(
        b, x, pw.words, o, c, kh, kw, x_bits, pw.bits, stride, padding, threads, mode,
        thresholds, direction,
    )  # fmt: skip


def bitconv2d_packed(
    x_codes: np.ndarray,
    pw: PackedWeights,
    x_bits: int,
    stride: int = 1,
    padding: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Exact sum over (c, kh, kw) of x * w as int32 (N, O, H', W'); weights pre-packed."""
    if backend() == "reference":
        _ran("reference")
        return reference.bitconv2d_packed(x_codes, pw, x_bits, stride, padding, threads)
    return _run(x_codes, pw, x_bits, stride, padding, threads, "acc")


def bitconv2d(
    x_codes: np.ndarray,
    w_codes: np.ndarray,
    x_bits: int,
    w_bits: int,
    stride: int = 1,
    padding: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Exact integer convolution of unsigned codes: int32 (N, O, H', W').

    x_codes uint8 (N, C, H, W) < 2**x_bits, w_codes uint8 (O, C, KH, KW) < 2**w_bits,
    bits in 1..8, zero padding (code 0). ``threads`` never changes the result.
    """
    if backend() == "reference":
        _ran("reference")
        return reference.bitconv2d(x_codes, w_codes, x_bits, w_bits, stride, padding, threads)
    return bitconv2d_packed(
        x_codes, pack_weights(w_codes, w_bits), x_bits, stride, padding, threads
    )


def bitconv2d_signed(
    x_codes: np.ndarray,
    pw: PackedWeights,
    x_bits: int,
    stride: int = 1,
    padding: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Signed dot of a DoReFa layer, D = sum (2p - nw) * q, nw = 2**w_bits - 1: int32."""
    if backend() == "reference":
        _ran("reference")
        return reference.bitconv2d_signed(x_codes, pw, x_bits, stride, padding, threads)
    return _run(x_codes, pw, x_bits, stride, padding, threads, "signed")


def bitconv2d_requant(
    x_codes: np.ndarray,
    pw: PackedWeights,
    x_bits: int,
    stride: int,
    padding: int,
    thresholds: np.ndarray,
    direction: np.ndarray,
    threads: int = 1,
) -> np.ndarray:
    """D as in :func:`bitconv2d_signed`, then per channel o the uint8 code
    ``#{j : D >= thresholds[o, j]}`` (direction +1) or ``#{j : D <= thresholds[o, j]}`` (-1).
    """
    if backend() == "reference":
        _ran("reference")
        return reference.bitconv2d_requant(
            x_codes, pw, x_bits, stride, padding, thresholds, direction, threads
        )
    thresholds, direction = reference.check_requant(
        thresholds, direction, pw.shape[0], check_values=False
    )
    return _run(x_codes, pw, x_bits, stride, padding, threads, "requant", thresholds, direction)


def conv_float_quantize(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    stride: int,
    padding: int,
    pool: int,
    bits: int,
    threads: int = 1,
) -> np.ndarray:
    """Float first layer fused: conv -> max-pool ``pool`` -> + bias -> ``bits``-bit codes
    (uint8 (N, O, H'/pool, W'/pool)); exact semantics in :func:`reference.conv_float_quantize`.
    """
    if backend() == "reference":
        _ran("reference")
        return reference.conv_float_quantize(x, weight, bias, stride, padding, pool, bits)
    _ran("native")
    return _native.conv_float_quantize(
        backend(), x, weight, bias, stride, padding, pool, bits, threads
    )


def maxpool_codes(x_codes: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Max-pool of uint8 codes (N, C, H, W), padding = code 0: uint8 (N, C, H', W')."""
    x = reference.check_code_array("x_codes", x_codes, "(N, C, H, W)")
    if backend() == "reference":
        return reference.maxpool_codes(x, kernel, stride, padding)
    return _native.maxpool_codes(x, kernel, stride, padding)
