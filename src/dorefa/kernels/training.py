"""The backward products of a DoReFa convolution on the library's integer kernels (the entry
points of integer training, ``dorefa train --engine int``).

Both backward products are rewritten as forward convolutions of unsigned codes in the kernels'
``signed`` output mode, ``sum (2p - n_w) x`` (:func:`dorefa.kernels.bitconv2d_signed`), so every
kernel of the table (popcount, int8 dot products, the reference) runs them, chosen per shape as
for inference. :mod:`dorefa.kernels.reference_grad` is the spec: the integers returned here equal
its ``d`` and ``s`` bit for bit, and the float results follow its float steps.

Input gradient (spec: ``D = sum (2c - n_g)(2p - n_w)`` over output channels and taps that reach
an input pixel)::

    D  = 2 K1 - n_g K2
    K1 = corr(scatter(c), flip(p)) in signed mode   = sum (2p - n_w) c
    K2 = corr(scatter(1), flip(p)) in signed mode   = sum (2p - n_w)      (weights only)

``scatter`` places the gradient codes at the input pixels they came from (stride s: every s-th
pixel, zero between; code 0 adds nothing to an unsigned sum), padded by ``k - 1 - padding``, and
``flip(p)`` is the kernel rotated by 180 degrees with input and output channels swapped: a
transposed convolution is a stride-1 correlation of the scattered codes with the flipped kernel.
On AVX-512 VNNI the same integers come from ``igrad-vnni`` (``csrc/igrad.h``, see
:func:`input_grad_kernel`): per sample one GEMM of the weight factors and the codes, each sum
added at the input pixel its tap reaches, so no product has a padding or inserted zero operand.

Weight gradient (spec: per sample ``S_b = sum_pixels (2c - n_g) q``): both operands change
with the sample, and the sum runs over the output pixels, so it has its own native kernels
(``csrc/wgrad*.cpp``: ``wgrad-amx`` AMX tiles, ``wgrad-vnni`` VPDPBUSD, ``wgrad-avx2`` VPMADDUBSW,
``wgrad-scalar``): one
call per layer, samples split over threads, ``S_b[o, k] = sum_p (2c - n_g) X_b[p, k]`` with
``X_b[p, k]`` sample b's activation window (k = (input channel, tap)); then
``dW = (sum_b q_b S_b) / divisor`` with the scales on an integer grid
(``reference_grad.grid_scales``). Which one runs follows the kernel in force: the ISA of
a forced kernel or backend (``DOREFA_KERNEL``, ``use_kernel``), else the fastest this CPU has;
``reference`` runs the spec itself.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..geometry import check_threads, fits_int32
from . import bitconv2d_signed, pack_weights
from .choose import LUT_DWORD_SUMS, lut_slices
from .reference import check_bits, check_code_array, check_code_range
from .reference_grad import (
    check_geometry,
    check_kernel_size,
    check_same_batch,
    conv_input_grad_codes,
    grid_scales,
    input_grad_float,
    scaled_batch_sum,
)
from .selection import REFERENCE

__all__ = [
    "conv_input_grad",
    "conv_weight_grad",
    "input_grad_codes",
    "input_grad_kernel",
    "weight_grad_codes",
    "weight_grad_kernel",
]


def _scatter(
    a: np.ndarray, kernel: tuple[int, int], stride: int, padding: int, hw: tuple[int, int]
) -> np.ndarray:
    """(N, O, H', W') codes -> (N, O, H + KH - 1, W + KW - 1): ``a[i, j]`` at
    ``(KH - 1 - padding + i*stride, KW - 1 - padding + j*stride)``, zero elsewhere; positions
    outside the array only ever reach the cropped padding and are dropped."""
    n, o, oh, ow = a.shape
    (kh, kw), (h, w) = kernel, hw
    out = np.zeros((n, o, h + kh - 1, w + kw - 1), np.uint8)
    rows = kh - 1 - padding + stride * np.arange(oh)
    cols = kw - 1 - padding + stride * np.arange(ow)
    ri = np.nonzero((rows >= 0) & (rows < out.shape[2]))[0]
    ci = np.nonzero((cols >= 0) & (cols < out.shape[3]))[0]
    out[:, :, rows[ri][:, None], cols[ci][None, :]] = a[:, :, ri[:, None], ci[None, :]]
    return out


GEMM_ROUTES = ("igrad-vnni", "igrad-amx")  # the GEMM and scatter of csrc/igrad.h
GEMM_FORCED = ("int8-vnni", "int8-amx")  # forced kernels whose ISA runs a GEMM route


def input_grad_kernel(c, g_bits, w_codes, w_bits, stride, padding, input_hw) -> str:
    """What computes the input gradient's sums: ``'igrad-amx'`` (the GEMM and scatter of
    ``csrc/igrad.h`` on AMX tiles) for layers with fewer output than input pixels (more than
    one) where the CPU has AMX, W <= 7 and nothing or ``int8-amx`` is forced; ``'igrad-vnni'``
    (the same on VNNI) for layers with more than one output pixel where this CPU has AVX-512
    VNNI, W <= 7 and nothing or ``int8-vnni`` is forced; else ``'conv'``, the
    transposed convolution as a forward convolution on the kernel in force (or the layer's
    choice; one output pixel: a 1x1 convolution over the weights' taps). Where the CPU runs a
    lut kernel that sums in dwords (``choose.LUT_DWORD_SUMS``: ``lut-vnni``) and nothing is
    forced, the convolution route also takes the layers whose lut work is at most two lookups
    a MAC (W x activation slices <= 2): svhn's (1,2,6) input gradients at batch 128 ran
    1.1-1.7x faster on it than on the GEMM (Zen 4: conv2 9.86 -> 6.30 ms, conv4 5.01 -> 2.92
    ms; the same integers). An empty batch takes the convolution route (its empty sums)."""
    from .extension import native
    from .selection import available_kernels, forced_kernel

    if not len(c):
        return "conv"
    forced = forced_kernel()
    if native is None or np.prod(np.shape(c)[2:]) == 1 or forced not in (None, *GEMM_FORCED):
        return "conv"
    args = (c, w_codes, g_bits, w_bits, stride, padding, *input_hw)
    if forced in (None, "int8-amx"):
        # AMX: the GEMM where the transposed convolution would sum padding or inserted zeros
        # (fewer output than input pixels); svhn's valid layers' input gradients ran 2.6-3.0x
        # torch fp32 on int8-amx's convolution route.
        fewer = np.prod(np.shape(c)[2:]) < np.prod(input_hw)
        if fewer and native.input_grad_gemm_fits(*args, amx=True):
            return "igrad-amx"
        if forced == "int8-amx":
            return "conv"
    if (
        forced is None
        and any(k in LUT_DWORD_SUMS for k in available_kernels())
        and w_bits * len(lut_slices(g_bits)) <= 2
    ):
        return "conv"
    return "igrad-vnni" if native.input_grad_gemm_fits(*args) else "conv"


def _per_sample(m, n: int) -> np.ndarray:
    """The gradient scales ``m`` as float32 (N,)."""
    m = np.asarray(m, np.float32)
    if m.shape != (n,):
        raise ValueError(
            f"m must hold one gradient scale per sample of c: shape ({n},), got {m.shape}"
        )
    return m


def _input_operands(c, g_bits, w_codes, w_bits, stride, padding, input_hw, threads):
    """(codes uint8, weight codes uint8, the forward input's (H, W), threads), checked."""
    check_bits("g_bits", g_bits)
    check_bits("w_bits", w_bits)
    c = check_code_array("c", c, "(N, O, H', W')")  # the spec's checks: no silent casts
    w_codes = check_code_array("w_codes", w_codes, "(O, C, KH, KW)")
    if c.shape[1] != w_codes.shape[0]:  # the kernels had named c "x_codes" (0.04 ms a check)
        raise ValueError(f"c has {c.shape[1]} channels but w_codes {w_codes.shape[0]} outputs")
    check_code_range("c", c, g_bits)
    hw = check_geometry(c.shape[2:], w_codes.shape[2:], stride, padding, input_hw)
    return c, w_codes, hw, check_threads(threads)


def _past_int32(w_codes: np.ndarray, g_bits: int, w_bits: int, stacklevel: int) -> bool:
    """Whether the transposed convolution's sums (O KH KW terms of codes) could pass int32:
    then the NumPy spec (int64) computes the input gradient, with a warning, as the weight
    gradient does (the kernels had refused such layers and advised the reference kernel,
    which refused them too)."""
    o, _, kh, kw = w_codes.shape
    if fits_int32(o * kh * kw, g_bits, w_bits):
        return False
    warnings.warn(
        f"input gradient of {o} x {kh}x{kw} terms at G={g_bits}, W={w_bits}: sums may pass "
        "int32, computed by the NumPy reference (slow)",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )
    return True


def _input_grad_sums(c, g_bits, w_codes, w_bits, stride, padding, input_hw, threads):
    """(K1 int32 (N, C, H, W), K2 int32 (1, C, H, W)) of the module docstring, or D int64 of
    the spec where the sums could pass int32."""
    c, w_codes, hw, threads = _input_operands(
        c, g_bits, w_codes, w_bits, stride, padding, input_hw, threads
    )
    if _past_int32(w_codes, g_bits, w_bits, stacklevel=3):
        m = np.ones(len(c), np.float32)  # the scales do not enter D
        return conv_input_grad_codes(c, m, g_bits, w_codes, 1.0, w_bits, stride, padding, hw).d
    route = input_grad_kernel(c, g_bits, w_codes, w_bits, stride, padding, hw)
    if route in GEMM_ROUTES:
        from .extension import native

        args = (c, w_codes, g_bits, w_bits, stride, padding, *hw, threads)
        return native.input_grad_gemm(*args, amx=route == "igrad-amx")
    return _conv_route_sums(c, g_bits, w_codes, w_bits, stride, padding, hw, threads)


def _conv_route_sums(c, g_bits, w_codes, w_bits, stride, padding, hw, threads):
    """K1, K2 as forward convolutions (checked uint8 operands, ``hw`` the input's size)."""
    kernel = w_codes.shape[2:]
    if c.shape[2:] == (1, 1) and padding == 0 and hw == kernel:
        # One output pixel whose window is the whole input: dx[c, y, x] = sum_o g[o] w[o, c, y, x],
        # a 1x1 convolution with the weights' (C, KH, KW) as output channels.
        # K2 (the same on ones) = sum_o (2 w[o, k] - n_w): the weights' column sums.
        o = w_codes.shape[0]
        wt = _transposed(w_codes.reshape(o, -1)).reshape(-1, o, 1, 1)
        pw = pack_weights(wt, w_bits, planes=False)
        k1 = bitconv2d_signed(c, pw, g_bits, 1, 0, threads)
        k1 = k1.reshape((len(c), w_codes.shape[1]) + hw)  # (an empty batch has no -1 to infer)
        sums = _column_sums(w_codes.reshape(o, -1))
        k2 = (2 * sums - ((1 << w_bits) - 1) * o).astype(np.int32).reshape((1, -1) + hw)
    else:
        ones = np.ones((1,) + c.shape[1:], np.uint8)
        flipped = np.ascontiguousarray(w_codes[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), np.uint8)
        pw = pack_weights(flipped, w_bits, planes=False)
        if stride == 1 and kernel[0] == kernel[1] and padding <= kernel[0] - 1:
            # scattering with stride 1 is zero padding by K - 1 - padding: the kernel pads
            pad = kernel[0] - 1 - padding
            k1 = bitconv2d_signed(c, pw, g_bits, 1, pad, threads)
            k2 = bitconv2d_signed(ones, pw, 1, 1, pad, threads)
        else:
            k1 = bitconv2d_signed(_scatter(c, kernel, stride, padding, hw), pw, g_bits, 1, 0,
                                  threads)  # fmt: skip
            k2 = bitconv2d_signed(_scatter(ones, kernel, stride, padding, hw), pw, 1, 1, 0,
                                  threads)  # fmt: skip
    return k1, k2


def _column_sums(a: np.ndarray) -> np.ndarray:
    """The sums over the rows of a uint8 matrix, int64: blocks of 257 rows summed in uint16
    (257 x 255 < 2**16; numpy's fastest reduction of the kinds tried, ~4x int64), then added."""
    out = np.zeros(a.shape[1], np.int64)
    for i in range(0, a.shape[0], 257):
        out += np.add.reduce(a[i : i + 257], axis=0, dtype=np.uint16)
    return out


def _transposed(a: np.ndarray) -> np.ndarray:
    """``a.T`` of a contiguous uint8 matrix, contiguous (natively where the extension is)."""
    from .extension import native

    if native is None:
        return np.ascontiguousarray(a.T)
    return native.transpose_codes(a)


def input_grad_codes(
    c: np.ndarray,
    g_bits: int,
    w_codes: np.ndarray,
    w_bits: int,
    stride: int,
    padding: int,
    input_hw: tuple[int, int],
    threads: int = 1,
) -> np.ndarray:
    """``D`` int64 (N, C, H, W) of the spec (``reference_grad.conv_input_grad_codes(...).d``)
    for gradient codes ``c`` uint8 (N, O, H', W') and weight codes (O, C, KH, KW)."""
    ng = (1 << check_bits("g_bits", g_bits)) - 1
    sums = _input_grad_sums(c, g_bits, w_codes, w_bits, stride, padding, input_hw, threads)
    return sums if isinstance(sums, np.ndarray) else _signed_sum(*sums, ng)


def _signed_sum(k1: np.ndarray, k2: np.ndarray, ng: int) -> np.ndarray:
    """``D = 2 K1 - n_g K2`` exactly, int64 (N, C, H, W)."""
    d = np.multiply(k1, 2, dtype=np.int64)
    d -= ng * k2.astype(np.int64)
    return d


def conv_input_grad(
    c: np.ndarray,
    m: np.ndarray,
    g_bits: int,
    w_codes: np.ndarray,
    w_scale: float,
    w_bits: int,
    stride: int,
    padding: int,
    input_hw: tuple[int, int],
    threads: int = 1,
) -> np.ndarray:
    """dx float32 (N, C, H, W) = ``float32(float64(m_b) * w_scale / n_g * float64(D))``: the
    spec's ``input_grad_float`` rounded once to float32."""
    ng = (1 << check_bits("g_bits", g_bits)) - 1
    from .extension import native
    from .selection import current_kernel

    c, w_codes, hw, threads = _input_operands(
        c, g_bits, w_codes, w_bits, stride, padding, input_hw, threads
    )
    if _past_int32(w_codes, g_bits, w_bits, stacklevel=2):
        spec = conv_input_grad_codes(c, m, g_bits, w_codes, w_scale, w_bits, stride, padding, hw)
        return input_grad_float(spec).astype(np.float32)
    scale = _per_sample(m, len(c)).astype(np.float64) * float(w_scale) / ng
    route = input_grad_kernel(c, g_bits, w_codes, w_bits, stride, padding, hw)
    if route in GEMM_ROUTES:
        args = (c, w_codes, g_bits, w_bits, stride, padding, *hw, threads)
        # sums and finish in one pass
        return native.input_grad_gemm(*args, scale=scale, amx=route == "igrad-amx")
    k1, k2 = _conv_route_sums(c, g_bits, w_codes, w_bits, stride, padding, hw, threads)

    native_ok = native is not None and current_kernel() != REFERENCE
    if native_ok and k1.dtype == np.int32 and k2.dtype == np.int32:
        return native.input_grad_finish(k1, k2, ng, scale, threads)  # the same, one pass
    d = _signed_sum(k1, k2, ng)
    dx = np.empty(d.shape, np.float32)  # float32(float64 product): the spec's rounding
    np.multiply(d, scale[:, None, None, None], out=dx, casting="unsafe")
    return dx


def weight_grad_kernel() -> str:
    """The weight-gradient kernel for the kernel in force: the native one of its ISA
    (``int8-amx``: ``wgrad-amx``; other avx512 kernels: ``wgrad-vnni`` where the CPU has VNNI;
    avx2; scalar), the fastest when nothing is forced,
    ``reference`` for the reference kernel or without the extension."""
    from .extension import native
    from .selection import REFERENCE, backend_of, forced_kernel

    forced = forced_kernel()
    if native is None or forced == REFERENCE:
        return REFERENCE
    usable = native.wgrad_kernels()  # fastest first
    if forced is None:
        return usable[0]
    if forced == "int8-amx" and "wgrad-amx" in usable:
        return "wgrad-amx"
    order = {"avx512": 0, "avx2": 1, "scalar": 2}[backend_of(forced)]
    ranked = ("wgrad-vnni", "wgrad-avx2", "wgrad-scalar")[order:]
    return next(name for name in ranked if name in usable)


def _weight_grad(c, g_bits, a_codes, a_bits, stride, padding, kernel, threads, scale, divisor=None):
    """The native weight gradient: S (N, O, C, KH, KW) int64 when ``scale`` is None, else dW
    float32 (O, C, KH, KW) = ``float32((sum_b scale[b] * S_b) / divisor)``, the sum in float64
    in batch order; None when the reference must run (forced, no extension, or sums that could
    pass int32)."""
    from .extension import native

    kh, kw = check_kernel_size(kernel)
    c = check_code_array("c", c, "(N, O, H', W')")  # the spec's checks: no silent casts
    q = check_code_array("a_codes", a_codes, "(N, C, H, W)")
    check_same_batch(c, q)
    check_geometry(c.shape[2:], (kh, kw), stride, padding, q.shape[2:])
    threads = check_threads(threads)
    name = weight_grad_kernel()
    pixels = int(np.prod(c.shape[2:]))
    n_g, n_a = (1 << check_bits("g_bits", g_bits)) - 1, (1 << check_bits("a_bits", a_bits)) - 1
    if name == REFERENCE or not len(c):  # an empty batch: the spec's empty sums
        return None
    if pixels * n_g * n_a > 2**31 - 1:  # S could pass int32: the NumPy spec (int64)
        warnings.warn(
            f"weight gradient of {pixels} output pixels at G={g_bits}, A={a_bits}: sums may "
            "pass int32, computed by the NumPy reference (slow)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    out = native.weight_grad(
        name, c, q, g_bits, a_bits, kh, kw, stride, padding, threads, scale, divisor
    )
    shape = (q.shape[1], kh, kw)
    return (
        out.reshape(c.shape[1:2] + shape)
        if scale is not None
        else (out.astype(np.int64).reshape(c.shape[:2] + shape))
    )


def weight_grad_codes(
    c: np.ndarray,
    g_bits: int,
    a_codes: np.ndarray,
    a_bits: int,
    stride: int,
    padding: int,
    kernel: tuple[int, int],
    threads: int = 1,
) -> np.ndarray:
    """``S`` int64 (N, O, C, KH, KW) of the spec (``reference_grad.conv_weight_grad_codes(...).s``)
    for gradient codes ``c`` uint8 (N, O, H', W') and activation codes ``a_codes`` (N, C, H, W)."""
    s = _weight_grad(c, g_bits, a_codes, a_bits, stride, padding, kernel, threads, None)
    return s if s is not None else _spec_sums(c, g_bits, a_codes, a_bits, stride, padding, kernel)


def _spec_sums(c, g_bits, a_codes, a_bits, stride, padding, kernel) -> np.ndarray:
    """S from the NumPy spec itself (the reference kernel, or sums that could pass int32)."""
    from .reference_grad import conv_weight_grad_codes

    m = np.ones(len(a_codes), np.float32)  # the scales do not enter S
    return conv_weight_grad_codes(c, m, g_bits, a_codes, a_bits, stride, padding, kernel).s


def conv_weight_grad(
    c: np.ndarray,
    m: np.ndarray,
    g_bits: int,
    a_codes: np.ndarray,
    a_bits: int,
    stride: int,
    padding: int,
    kernel: tuple[int, int],
    threads: int = 1,
    factor: float = 1.0,
) -> np.ndarray:
    """dW float32 (O, C, KH, KW): the spec's ``weight_grad_float`` (``sum_b q_b S_b`` in
    float64, batch order, divided by ``n_g n_a Q / M``: the scales on the integer grid of
    ``reference_grad.grid_scales``) rounded once to float32. ``factor``: the layer's input is
    ``a_codes * factor / n_a`` (a Dropout's 1 / (1 - p))."""
    ng = (1 << check_bits("g_bits", g_bits)) - 1
    na = (1 << check_bits("a_bits", a_bits)) - 1
    c = check_code_array("c", c, "(N, O, H', W')")
    scale, divisor = grid_scales(_per_sample(m, len(c)), ng, na, factor)
    args = (c, g_bits, a_codes, a_bits, stride, padding, kernel)
    dw = _weight_grad(*args, threads, scale, divisor)
    if dw is None:  # _weight_grad said why (and warned once): the spec's sums
        dw = (scaled_batch_sum(scale, _spec_sums(*args)) / divisor).astype(np.float32)
    return dw
