"""Bit-serial convolution kernels: the Python face of the C++ core (``dorefa._kernels``).

Operands are unsigned integer codes; see :mod:`dorefa.kernels.reference` (the spec, and the
``'reference'`` kernel) for the exact semantics. The native kernels form one table
(:func:`kernel_table`, fastest first), e.g. ``popcount-avx512/gfni`` (VPOPCNTQ tile kernel,
GFNI bit transpose in the packer), ``popcount-avx512/shift``, ``popcount-avx2/movemask``
(nibble-table popcount), ``popcount-scalar/portable`` (portable C++), and the int8
dot-product kernels ``int8-amx`` (AMX TDPBUUD tiles), ``int8-vnni`` (AVX-512 VPDPBUSD) and
``int8-avx2`` (VPMADDUBSW).

When no kernel is forced, each bit convolution runs the kernel chosen for its layer shape, bits
and output mode (:mod:`dorefa.kernels.choose`: a cost model proposes, a short measurement
decides, cached per process; ``DOREFA_KERNEL_CHOICE=model`` skips the measurement).
``DOREFA_KERNEL=<kernel, family or backend>``
(backends: ``reference|scalar|avx2|avx512``) forces one (an error names what is available if
the CPU lacks it), :func:`set_backend` switches the process, and :func:`use_kernel` /
:func:`use_backend` the calling thread (see :mod:`dorefa.kernels.selection`)::

    with dorefa.kernels.use_backend("scalar"):
        y = dorefa.kernels.bitconv2d(x, w, x_bits=2, w_bits=1, padding=1)

Layers run on every batch are prepared once with :func:`prepare_conv`. This package never
imports torch.
"""

from __future__ import annotations

import numpy as np

from ..geometry import check_int, check_threads
from . import choose, extension, reference, selection
from .choose import Choice
from .float_checks import (
    check_window,
    conv_operands,
    conv_output_hw,
    conv_pool_fits,
    float_array,
    linear_operands,
)
from .prepared import PreparedConv, prepare_conv, weight_words
from .reference import PackedWeights
from .selection import REFERENCE as _REFERENCE
from .selection import (
    available_backends,
    available_kernels,
    backend,
    forced_kernel,
    kernel_name,
    kernel_table,
    last_kernel,
    set_backend,
    use_backend,
    use_kernel,
)
from .selection import backend_of as _backend_of
from .selection import current_kernel as _current_kernel
from .selection import ran as _ran

_native = extension.native  # the compiled module, or None (then _native_error says why)
_native_error = extension.native_error

__all__ = [
    "Choice",
    "PackedWeights",
    "PreparedConv",
    "available_backends",
    "available_kernels",
    "backend",
    "bitconv2d",
    "bitconv2d_packed",
    "bitconv2d_requant",
    "bitconv2d_signed",
    "choose",
    "conv_float",
    "linear_float",
    "conv_float_quantize",
    "forced_kernel",
    "kernel_name",
    "kernel_table",
    "last_kernel",
    "maxpool_codes",
    "maxpool_float",
    "pack_weights",
    "quantize_float",
    "affine_float",
    "affine_quantize_float",
    "scale_int_float",
    "avgpool_float",
    "prepare_conv",
    "reference",
    "set_backend",
    "use_backend",
    "use_kernel",
    "weight_words",
]


def pack_weights(w_codes: np.ndarray, w_bits: int, planes: bool = True) -> PackedWeights:
    """Validates and packs weight codes (O, C, KH, KW) once, for the ``*_packed`` calls and
    :func:`prepare_conv` (with the packer of the kernel in use). ``planes=False`` leaves the
    bit planes to the first call that runs a popcount kernel (weights packed for one call, as in
    training, where the layer's kernel mostly reads another layout)."""
    kernel = _current_kernel()
    if _native is None or kernel == _REFERENCE:
        return reference.pack_weights(w_codes, w_bits)
    w = reference.check_code_array("w_codes", w_codes, "(O, C, KH, KW)")
    w_bits = reference.check_bits("w_bits", w_bits)
    if min(w.shape) < 1:
        raise ValueError(f"w_codes must have no empty dimension, got shape {w.shape}")
    # The bit-plane words unless `planes` is False (with the default kernel's packer when
    # `kernel` reads another layout); that other layout too, now rather than at the first call.
    bitplanes = selection.weight_layout(kernel) == "bitplanes"
    if planes:
        words = _native.pack_weights(w, w_bits, kernel if bitplanes else "")  # checks the codes
    else:
        words = None
        reference.check_code_range("w_codes", w, w_bits)
    codes = w.copy()
    codes.flags.writeable = False
    pw = PackedWeights(codes, w_bits, words)
    if not bitplanes:
        weight_words(pw, kernel)
    return pw


def _run(kernel, x_codes, pw, x_bits, stride, padding, threads, mode, thresholds=None,
         direction=None):  # fmt: skip
    """A one-off native call: on ``kernel`` when forced, else (None) on the layer's choice."""
    x, x_bits, stride, padding, threads = reference.check_conv(
        x_codes, pw, x_bits, stride, padding, threads, check_values=False
    )
    if kernel is None:
        return prepare_conv(pw, x_bits, stride, padding, mode, thresholds, direction)(x, threads)
    o, c, kh, kw = pw.shape
    _ran("native")
    words = weight_words(pw, kernel)
    return _native.bitconv(
        kernel, x, words, o, c, kh, kw, x_bits, pw.bits, stride, padding, threads, mode,
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
    kernel = forced_kernel()
    if kernel == _REFERENCE:
        _ran(_REFERENCE)
        return reference.bitconv2d_packed(x_codes, pw, x_bits, stride, padding, threads)
    return _run(kernel, x_codes, pw, x_bits, stride, padding, threads, "acc")


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
    if _current_kernel() == _REFERENCE:
        _ran(_REFERENCE)
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
    kernel = forced_kernel()
    if kernel == _REFERENCE:
        _ran(_REFERENCE)
        return reference.bitconv2d_signed(x_codes, pw, x_bits, stride, padding, threads)
    return _run(kernel, x_codes, pw, x_bits, stride, padding, threads, "signed")


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
    kernel = forced_kernel()
    if kernel == _REFERENCE:
        _ran(_REFERENCE)
        return reference.bitconv2d_requant(
            x_codes, pw, x_bits, stride, padding, thresholds, direction, threads
        )
    thresholds, direction = reference.check_requant(
        thresholds, direction, pw.shape[0], check_values=False
    )
    return _run(
        kernel, x_codes, pw, x_bits, stride, padding, threads, "requant", thresholds, direction
    )


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
    stride, padding = check_int("stride", stride, 1), check_int("padding", padding, 0)
    pool, bits = check_int("pool", pool, 1), reference.check_bits("bits", bits)
    x, weight, bias = conv_operands(x, weight, bias, padding)
    conv_pool_fits(x, weight, stride, padding, pool)
    threads = check_threads(threads)
    kernel = _current_kernel()
    if kernel == _REFERENCE:
        return reference.conv_float_quantize(x, weight, bias, stride, padding, pool, bits)
    return _native.conv_float_quantize(
        kernel, x, weight, bias, stride, padding, pool, bits, threads
    )


def conv_float(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    stride: int,
    padding: int,
    threads: int = 1,
    pool: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """A float first layer whose output stays float: conv + bias, float32 (N, O, H', W') (the
    kernel's vector path sums in float32; :func:`reference.conv_float` sums in float64). With
    ``pool = (k, s, p)`` the max-pool that follows it (:func:`maxpool_float`) is fused in: the
    same values as pooling this function's output, without making that output whole."""
    kernel = _current_kernel()
    stride, padding = check_int("stride", stride, 1), check_int("padding", padding, 0)
    x, weight, bias = conv_operands(x, weight, bias, padding)
    threads = check_threads(threads)
    if pool is not None:
        pool = _check_pool(*pool)
        check_window("pool", conv_output_hw(x, weight, stride, padding), pool[:1] * 2, pool[2])
    if kernel == _REFERENCE:
        y = reference.conv_float(x, weight, bias, stride, padding)
        return y if pool is None else reference.maxpool_float(y, *pool)
    if pool is None:
        return _native.conv_float(kernel, x, weight, bias, stride, padding, threads)
    k, s, p = pool
    return _native.conv_float(kernel, x, weight, bias, stride, padding, threads, k, s, p)


def linear_float(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, threads: int = 1
) -> np.ndarray:
    """A float linear layer ``x @ weight.T + bias``, float32 (N, O), without BLAS (whose thread
    pool would spin beside the kernels' own): one fixed summation order on every native path
    (8 partial FMA sums, csrc/linear_float.h; the scalar backend runs the portable rows), so
    they give the same bits; :func:`reference.linear_float` sums in float64."""
    x, weight, bias = linear_operands(x, weight, bias)
    threads = check_threads(threads)
    kernel = _current_kernel()
    if kernel == _REFERENCE:
        return reference.linear_float(x, weight, bias)
    vector = _backend_of(kernel) != "scalar"
    return _native.linear_float(x, weight, bias, vector, threads)


def _check_pool(kernel: object, stride: object, padding: object) -> tuple[int, int, int]:
    """A max- or average pool's (kernel, stride, padding) as the native pools take them: ints,
    kernel and stride >= 1, 0 <= padding <= kernel / 2 (each path refuses the rest alike)."""
    k = check_int("pool kernel", kernel, 1)
    s = check_int("pool stride", stride, 1)
    p = check_int("pool padding", padding, 0)
    if 2 * p > k:
        raise ValueError(f"pool padding {p} is more than half the pool kernel {k}")
    return k, s, p


def maxpool_float(
    x: np.ndarray, kernel: int, stride: int, padding: int, threads: int = 1
) -> np.ndarray:
    """Max-pool of a float32 map (N, C, H, W), padding -inf, NaN propagating (as torch):
    float32 (N, C, H', W'); exact (a max), so every path gives the same array."""
    kernel, stride, padding = _check_pool(kernel, stride, padding)
    x = float_array("x", x, 4, "(N, C, H, W)")
    check_window("pool", x.shape[2:], (kernel, kernel), padding)
    threads = check_threads(threads)
    if _current_kernel() == _REFERENCE:
        return reference.maxpool_float(x, kernel, stride, padding)
    return _native.maxpool_float(x, kernel, stride, padding, threads)


def maxpool_codes(
    x_codes: np.ndarray, kernel: int, stride: int, padding: int, threads: int = 1
) -> np.ndarray:
    """Max-pool of uint8 codes (N, C, H, W), padding = code 0: uint8 (N, C, H', W')."""
    x = reference.check_code_array("x_codes", x_codes, "(N, C, H, W)")
    kernel, stride, padding = _check_pool(kernel, stride, padding)
    check_window("pool", x.shape[2:], (kernel, kernel), padding)
    threads = check_threads(threads)
    if _current_kernel() == _REFERENCE:
        return reference.maxpool_codes(x, kernel, stride, padding)
    return _native.maxpool_codes(x, kernel, stride, padding, threads)


def quantize_float(x: np.ndarray, bits: int, threads: int = 1) -> np.ndarray:
    """f_a's uint8 codes of a float32 map, ``rint(clip(x, 0, 1) * (2^bits - 1))`` in float32
    (:func:`reference.quantize_float` is the spec; one native pass gives the same codes)."""
    bits = reference.check_bits("bits", bits)
    x, threads = float_array("x", x), check_threads(threads)
    kernel = _current_kernel()
    if kernel == _REFERENCE:
        return reference.quantize_float(x, bits)
    return _native.quantize_float(x, bits, _backend_of(kernel) != "scalar", threads)


def _check_channels(x: np.ndarray, *vectors: np.ndarray) -> None:
    """Each per-channel vector holds C = x.shape[1] entries."""
    c = x.shape[1] if x.ndim >= 2 else None
    if c is None or any(np.shape(v) != (c,) for v in vectors):
        raise ValueError(
            f"x must be (N, C, ...) and the per-channel vectors hold C = {c} floats each; got "
            f"x {x.shape} and vectors {[np.shape(v) for v in vectors]}"
        )


def affine_float(
    x: np.ndarray, scale: np.ndarray, shift: np.ndarray, threads: int = 1
) -> np.ndarray:
    """Per-channel ``x * scale + shift`` of an (N, C, ...) float32 map, the same float32 bits
    as :func:`reference.affine_float` (one native pass)."""
    x, threads = float_array("x", x), check_threads(threads)
    _check_channels(x, scale, shift)
    if _current_kernel() == _REFERENCE:
        return reference.affine_float(x, scale, shift)
    return _native.affine_float(x, scale, shift, threads)


def affine_quantize_float(
    x: np.ndarray, scale: np.ndarray, shift: np.ndarray, bits: int, threads: int = 1
) -> np.ndarray:
    """:func:`quantize_float` of :func:`affine_float` (a BatchNorm, then f_a) in one native
    pass: the same codes as the two calls."""
    bits = reference.check_bits("bits", bits)
    x, threads = float_array("x", x), check_threads(threads)
    _check_channels(x, scale, shift)
    kernel = _current_kernel()
    if kernel == _REFERENCE:
        return reference.quantize_float(reference.affine_float(x, scale, shift), bits)
    vector = _backend_of(kernel) != "scalar"
    return _native.affine_quantize_float(x, scale, shift, bits, vector, threads)


def scale_int_float(
    d: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    clip: bool,
    threads: int = 1,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """A bit convolution's float32 output ``float32(D) * alpha + beta`` per channel (then
    clipped to [0, 1] when ``clip``), the same bits as :func:`reference.scale_int_float`; with
    ``residual`` (float32, D's shape; not with ``clip``) that output plus it, one pass (a residual
    addition fused in: the same bits as adding afterwards)."""
    if not isinstance(d, np.ndarray) or d.dtype != np.int32:  # a cast would wrap or truncate
        raise TypeError(
            f"d must be an int32 array (a convolution's signed sums D), got "
            f"{getattr(d, 'dtype', type(d).__name__)}"
        )
    _check_channels(d, alpha, beta)
    threads = check_threads(threads)
    if residual is not None:
        residual = float_array("residual", residual)
    if _current_kernel() == _REFERENCE:
        y = reference.scale_int_float(d, alpha, beta, clip)
        return y if residual is None else y + residual
    d = np.ascontiguousarray(d)
    return _native.scale_int_float(d, alpha, beta, clip, threads, residual)


def avgpool_float(
    x: np.ndarray, kernel: int, stride: int, padding: int, threads: int = 1
) -> np.ndarray:
    """Average pool of a float32 map (N, C, H, W), zero padding counted (torch's default): the
    same float32 bits as :func:`reference.avgpool_float` (one native pass)."""
    kernel, stride, padding = _check_pool(kernel, stride, padding)
    x = float_array("x", x, 4, "(N, C, H, W)")
    check_window("pool", x.shape[2:], (kernel, kernel), padding)
    threads = check_threads(threads)
    if _current_kernel() == _REFERENCE:
        return reference.avgpool_float(x, kernel, stride, padding)
    return _native.avgpool_float(x, kernel, stride, padding, threads)
