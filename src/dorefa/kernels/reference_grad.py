"""NumPy spec of the integer products of DoReFa training: f_g's codes and both backward
convolutions as exact integer sums of unsigned codes (DoReFa-Net, arXiv:1606.06160, sections
2.1 and 2.5; docs/method.md sections 1 and 3).

Every native training kernel must equal these functions bit for bit: the integer parts exactly,
the float parts by following the float operations written in each docstring, in that order.

The affine code maps (docs/method.md section 3), with ``n_k = 2**k - 1``:

* gradient, G bits:  ``f_g(dy) = (2 m_b / n_g) (c - n_g/2) = (m_b / n_g) (2c - n_g)``,
  ``c`` in ``0..n_g``, one ``m_b = max|dy|`` per sample b;
* weight, W > 1:     ``f_w(W) = s (2p - n_w)``, ``s = 1 / n_w``; W = 1: ``s = E = mean|W|``,
  ``n_w = 1`` (:func:`dorefa.quantizers.weight_codes` returns ``p`` and ``s``);
* activation:        ``f_a(x) = q / n_a``, ``q`` in ``0..n_a``.

``2c - n_g`` and ``2p - n_w`` are odd integers (n is odd), so doubling keeps every sum integral
and the only non-integers left are one scale per sample.

Input gradient (the transposed convolution of f_g(dy) with f_w(W), summed over output channels o
and kernel taps), with ``T(a, b)`` the transposed convolution of integer arrays ``a`` (N, O, H',
W') and ``b`` (O, C, KH, KW), ``1`` an array of ones::

    dx = sum f_g f_w = (m_b s / n_g) * D,
    D  = sum (2c - n_g)(2p - n_w)
       = 4 T(c, p) - 2 n_w T(c, 1) - 2 n_g T(1, p) + n_g n_w T(1, 1).

Only ``T(c, p)`` multiplies codes; ``T(c, 1)`` is a box sum of the gradient codes (the same for
every input channel), ``T(1, p)`` and ``T(1, 1)`` depend on the weights and the geometry only
(the same for every sample; ``T(1, 1)`` counts the (o, tap) pairs that reach a pixel, fewer at
the borders and between strides).

Weight gradient (a correlation of f_g(dy) with f_a(x) over batch and output pixels; ``U`` sums
over the output pixels of one sample, ``q`` zero-padded with code 0)::

    dW  = sum_b m_b S_b / (n_g n_a),
    S_b = sum_pixels (2c - n_g) q = 2 U(c, q) - n_g U(1, q).

``S_b`` is an exact integer per sample; the per-sample scale forbids summing codes over the batch
before scaling. The scales are put on an integer grid set by the batch's largest, ``M = max_b
m_b`` (:func:`grid_scales`)::

    q_b = rint(m_b Q / M)  in 0..Q,  Q = 2**24 - 1,
    dW  = (sum_b q_b S_b) / divisor,  divisor = (n_g n_a) Q / M,

the batch sum a float64 sum of ``q_b * S_b`` in order b = 0, 1, ..., then one division. The
grid moves each scale by about ``M / (2Q)`` at most (as a float32 rounding of the largest
scale), and makes every term an integer: ``q_b * S_b`` is exact in float64 while ``|S_b| <
2**29`` (a kernel may add it with one FMA), and while ``N Q max|S_b| < 2**53`` every partial sum
is an exact integer, so the sum does not depend on its order (a one-pixel layer's kernels sum
it in int8 multiply-adds, digit by digit). A NaN or inf scale (a NaN or inf in dy) makes every
dW NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..geometry import check_int, conv_out_size
from .reference import check_bits, check_code_array, check_code_range

__all__ = [
    "InputGrad",
    "WeightGrad",
    "gradient_codes",
    "gradient_values",
    "conv_input_grad_codes",
    "input_grad_float",
    "conv_weight_grad_codes",
    "weight_grad_float",
    "scaled_batch_sum",
    "grid_scales",
    "GRID",
]


# ----------------------------------------------------------------------------- f_g's codes
def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``float32(a * b + c)`` rounded once (C's ``fmaf``) for float32 arrays.

    ``a * b`` is exact in float64 (24 + 24 bits); the sum with ``c`` is formed as TwoSum
    ``s + e`` exactly, then ``s`` is rounded to odd (moved one float64 ulp towards ``e`` when
    ``e != 0`` and ``s`` is even) so that the final float64 -> float32 rounding is correct
    (rounding to odd with >= 2 extra bits makes double rounding innocuous).
    """
    p = a.astype(np.float64) * b.astype(np.float64)
    c = c.astype(np.float64)
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)
    even = (s.view(np.int64) & 1) == 0
    nudge = (e != 0) & even & np.isfinite(s)
    s = np.where(nudge, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def _sample_max(dy: np.ndarray) -> np.ndarray:
    """``m_b = max|dy|`` over every axis but the first, float32 (N,) (exact: a max)."""
    if dy.ndim == 1:
        return np.abs(dy)
    flat = dy.reshape(dy.shape[0], -1)
    return np.maximum(flat.max(axis=1), -flat.min(axis=1))


def gradient_codes(dy: np.ndarray, g_bits: int, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""f_g's codes: ``(c, m)``, ``c`` uint8 shaped like ``dy`` in ``0..n``, ``m`` float32 (N,).

    With ``n = 2**g_bits - 1`` and ``sigma = noise`` in (-1/2, 1/2), one per element::

        c = round_half_even( n * clip(dy / (2m) + 1/2 + sigma / n, 0, 1) ),
        f_g(dy) = (2m/n) (c - n/2),

    computed in float32 exactly as :func:`dorefa.quantizers.quantize_gradient` does:

        m    = max(max dy, -min dy) per sample      (exact)
        inv  = fl(fl(1 / (2 m')) * n),  m' = m if m > 0 else 1   (torch's ``n / t`` is
               ``reciprocal(t) * n``)
        base = fl(n/2 + sigma)                       (exact for the 16-bit noise and G <= 8)
        x    = fmaf(dy, inv, base)                   (one rounding: torch's CPU ``addcmul`` is
                                                      fused on FMA CPUs)
        c    = rint(clip(x, 0, n))

    A sample with ``m = 0`` has ``dy = 0`` so ``x = base`` and ``c`` is ``n/2 +- 1/2`` by the
    noise; its value ``(2m/n)(c - n/2)`` is exactly 0 because ``m = 0``.

    ``noise`` is what :func:`dorefa.quantizers.gradient_noise` draws (``(i + 1/2) / 2**16 - 1/2``
    for a uniform 16-bit i, exact in float32), so tests can feed torch's own noise.
    """
    g_bits = check_bits("g_bits", g_bits)
    dy = np.asarray(dy, np.float32)
    noise = np.asarray(noise, np.float32)
    if dy.ndim < 1:
        raise ValueError("dy needs a batch axis (at least 1-D); reshape a scalar to (1,)")
    if noise.shape != dy.shape:
        raise ValueError(f"noise has shape {noise.shape} but dy has {dy.shape}; draw one per dy")
    n = np.float32((1 << g_bits) - 1)
    m = _sample_max(dy)
    safe = np.where(m > 0, m, np.float32(1)).reshape((-1,) + (1,) * (dy.ndim - 1))
    inv = (np.float32(1) / (np.float32(2) * safe)) * n
    base = n / np.float32(2) + noise
    x = _fma32(dy, np.broadcast_to(inv, dy.shape), base)
    return np.rint(np.clip(x, np.float32(0), n)).astype(np.uint8), m


def gradient_values(codes: np.ndarray, m: np.ndarray, g_bits: int) -> np.ndarray:
    """The float32 f_g(dy) of torch's ``quantize_gradient``: ``fl(fl(c * fl(m * fl(2/n))) - m)``
    (two roundings away from the exact ``(2m/n)(c - n/2)``: within ``8 * 2**-24 * m``)."""
    n = (1 << check_bits("g_bits", g_bits)) - 1
    mm = np.asarray(m, np.float32).reshape((-1,) + (1,) * (codes.ndim - 1))
    return codes.astype(np.float32) * (mm * np.float32(2.0 / n)) - mm


# ----------------------------------------------------------------------------- input gradient
@dataclass(frozen=True)
class InputGrad:
    """``dx = scale[b] * d[b]``; ``d = 4 t_cp - 2 n_w t_c1 - 2 n_g t_1p + n_g n_w t_11``.

    ``t_cp`` (N, C, H, W), ``t_c1`` (N, 1, H, W), ``t_1p`` (1, C, H, W), ``t_11`` (1, 1, H, W),
    ``d`` (N, C, H, W): int64; ``scale`` float64 (N,) = ``float64(m_b) * w_scale / n_g``.
    """

    t_cp: np.ndarray
    t_c1: np.ndarray
    t_1p: np.ndarray
    t_11: np.ndarray
    d: np.ndarray
    scale: np.ndarray


def _transposed(
    a: np.ndarray, b: np.ndarray, stride: int, padding: int, hw: tuple[int, int]
) -> np.ndarray:
    """``T(a, b)``: int64 (N, C, H, W) = sum over o, taps of a[n, o, i, j] * b[o, c, kh, kw]
    scattered to padded pixel (i*stride + kh, j*stride + kw), then the padding cropped."""
    n, _, oh, ow = a.shape
    _, c, kh, kw = b.shape
    h, w = hw
    out = np.zeros((n, c, h + 2 * padding, w + 2 * padding), np.int64)
    for i in range(kh):
        for j in range(kw):
            tap = np.einsum("nohw,oc->nchw", a, b[:, :, i, j])
            out[:, :, i : i + stride * (oh - 1) + 1 : stride,
                j : j + stride * (ow - 1) + 1 : stride] += tap  # fmt: skip
    return out[:, :, padding : padding + h, padding : padding + w]


def _codes(name: str, a: object, bits: int, layout: str) -> np.ndarray:
    """A 4-D uint8 code array below 2**bits, as int64."""
    a = check_code_array(name, a, layout)
    check_code_range(name, a, bits)
    return a.astype(np.int64)


def _int_pair(name: str, pair: object, minimum: int) -> tuple[int, int]:
    """Two ints >= minimum (a float such as 3.9 had been truncated)."""
    try:
        a, b = pair
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of ints, got {pair!r}") from None
    return check_int(f"{name}[0]", a, minimum), check_int(f"{name}[1]", b, minimum)


def check_kernel_size(kernel: object) -> tuple[int, int]:
    """A convolution's (KH, KW): two ints >= 1."""
    return _int_pair("kernel", kernel, 1)


def check_same_batch(c: np.ndarray, a_codes: np.ndarray) -> None:
    """The gradient codes and the activation codes of a weight gradient come from one batch
    (numpy would broadcast a batch of one)."""
    if len(c) != len(a_codes):
        raise ValueError(
            f"c and a_codes must have the same batch size, got {len(c)} and {len(a_codes)}"
        )


def check_geometry(
    out_hw: tuple[int, int], kernel: tuple[int, int], stride: int, padding: int, hw: tuple
) -> tuple[int, int]:
    """The forward input's (H, W); ValueError unless the gradient's spatial shape ``out_hw`` is
    what a ``kernel`` conv with this stride and padding makes of it."""
    stride, padding = check_int("stride", stride, 1), check_int("padding", padding, 0)
    h, w = _int_pair("input_hw", hw, 0)
    want = (
        conv_out_size(h, kernel[0], stride, padding),
        conv_out_size(w, kernel[1], stride, padding),
    )
    if tuple(out_hw) != want:
        raise ValueError(
            f"gradient codes have spatial shape {tuple(out_hw)} but a {kernel} convolution with "
            f"stride {stride}, padding {padding} of a {h}x{w} input gives {want}; pass the "
            "forward input's (H, W) as input_hw"
        )
    return h, w


def conv_input_grad_codes(
    c: np.ndarray,
    m: np.ndarray,
    g_bits: int,
    w_codes: np.ndarray,
    w_scale: float,
    w_bits: int,
    stride: int,
    padding: int,
    input_hw: tuple[int, int],
) -> InputGrad:
    """The input gradient of a convolution as integer transposed convolutions of codes.

    ``c`` uint8 (N, O, H', W') gradient codes and ``m`` (N,) from :func:`gradient_codes`;
    ``w_codes`` uint8 (O, C, KH, KW) and ``w_scale`` from ``weight_codes``; ``input_hw`` the
    forward input's (H, W) (needed: with stride > 1 it is not a function of H', W').
    See the module docstring for ``D``; here ``dx = (m_b s / n_g) D``.
    """
    ng = (1 << check_bits("g_bits", g_bits)) - 1
    nw = (1 << check_bits("w_bits", w_bits)) - 1
    cc = _codes("c", c, g_bits, "(N, O, H', W')")
    p = _codes("w_codes", w_codes, w_bits, "(O, C, KH, KW)")
    hw = check_geometry(cc.shape[2:], p.shape[2:], stride, padding, input_hw)
    t_cp = _transposed(cc, p, stride, padding, hw)
    t_c1 = _transposed(cc, np.ones((p.shape[0], 1) + p.shape[2:], np.int64), stride, padding, hw)
    one = np.ones((1,) + cc.shape[1:], np.int64)
    t_1p = _transposed(one, p, stride, padding, hw)
    t_11 = _transposed(one, np.ones((p.shape[0], 1) + p.shape[2:], np.int64), stride, padding, hw)
    d = 4 * t_cp - 2 * nw * t_c1 - 2 * ng * t_1p + ng * nw * t_11
    scale = np.asarray(m, np.float32).astype(np.float64) * float(w_scale) / ng
    return InputGrad(t_cp, t_c1, t_1p, t_11, d, scale)


def input_grad_float(parts: InputGrad) -> np.ndarray:
    """dx in float64 (N, C, H, W): ``scale[b] * float64(D)`` (one rounding per element)."""
    return parts.scale[:, None, None, None] * parts.d.astype(np.float64)


# ----------------------------------------------------------------------------- weight gradient
GRID = 2**24 - 1  # Q: the weight gradient's integer grid of per-sample scales


def grid_scales(m: np.ndarray, n_g: int, n_a: int, factor: float = 1.0) -> tuple[np.ndarray, float]:
    """``(q, divisor)`` of the weight gradient (module docstring): ``q`` float64 (N,) =
    ``rint(float64(m_b) * Q / M)``, ``divisor = ((n_g * n_a / factor) * Q) / M``, float64 steps
    in that order; ``factor`` scales the layer's input (a Dropout's 1 / (1 - p)). ``M = 0``: q = 0
    and divisor ``n_g n_a / factor``; a non-finite ``M``: q = NaN."""
    if isinstance(factor, bool) or not isinstance(factor, int | float | np.floating | np.integer):
        raise TypeError(f"factor must be a number (a Dropout's 1 / (1 - p)), got {factor!r}")
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be finite and > 0 (a Dropout's 1 / (1 - p)), got {factor}")
    m64 = np.asarray(m, np.float32).astype(np.float64).reshape(-1)
    base = n_g * n_a / factor
    top = float(m64.max()) if m64.size else 0.0
    if not np.isfinite(top):
        return np.full_like(m64, np.nan), base
    if top == 0.0:
        return np.zeros_like(m64), base
    return np.rint(m64 * GRID / top), base * GRID / top


@dataclass(frozen=True)
class WeightGrad:
    """``dW = (sum_b scale[b] * s[b]) / divisor``; ``s = 2 u_cq - n_g u_1q`` int64 (N, O, C, KH,
    KW) with ``u_cq`` (N, O, C, KH, KW), ``u_1q`` (N, 1, C, KH, KW); ``scale`` float64 (N,) and
    ``divisor`` from :func:`grid_scales`."""

    u_cq: np.ndarray
    u_1q: np.ndarray
    s: np.ndarray
    scale: np.ndarray
    divisor: float


def conv_weight_grad_codes(
    c: np.ndarray,
    m: np.ndarray,
    g_bits: int,
    a_codes: np.ndarray,
    a_bits: int,
    stride: int,
    padding: int,
    kernel: tuple[int, int],
    factor: float = 1.0,
) -> WeightGrad:
    """The weight gradient of a convolution as per-sample integer correlations of codes.

    ``c`` uint8 (N, O, H', W') and ``m`` (N,) from :func:`gradient_codes`; ``a_codes`` uint8
    (N, C, H, W) the forward input's activation codes (the layer's input is ``a_codes * factor /
    n_a``); ``kernel`` (KH, KW). Per sample b,
    ``U(c, q)[o, ci, kh, kw] = sum_{i, j} c[o, i, j] q_pad[ci, i*stride + kh, j*stride + kw]``.
    """
    ng = (1 << check_bits("g_bits", g_bits)) - 1
    na = (1 << check_bits("a_bits", a_bits)) - 1
    cc = _codes("c", c, g_bits, "(N, O, H', W')")
    q = _codes("a_codes", a_codes, a_bits, "(N, C, H, W)")
    kh, kw = check_kernel_size(kernel)
    check_same_batch(cc, q)
    check_geometry(cc.shape[2:], (kh, kw), stride, padding, q.shape[2:])
    qp = np.pad(q, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(qp, (kh, kw), axis=(2, 3))
    win = win[:, :, ::stride, ::stride][
        :, :, : cc.shape[2], : cc.shape[3]
    ]  # (N, C, H', W', KH, KW)
    u_cq = np.einsum("nohw,nchwij->nocij", cc, win)
    u_1q = win.sum(axis=(2, 3))[:, None]
    s = 2 * u_cq - ng * u_1q
    scale, divisor = grid_scales(m, ng, na, factor)
    return WeightGrad(u_cq, u_1q, s, scale, divisor)


def weight_grad_float(parts: WeightGrad) -> np.ndarray:
    """dW in float64 (O, C, KH, KW): :func:`scaled_batch_sum` of the parts, then divided by the
    divisor (one rounding)."""
    return scaled_batch_sum(parts.scale, parts.s) / parts.divisor


def scaled_batch_sum(scale: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``sum_b scale[b] * float64(s[b])`` summed from 0 in batch order (the order fixes every
    bit): float64, shaped like ``s[0]``."""
    out = np.zeros(s.shape[1:], np.float64)
    for b in range(s.shape[0]):
        out += scale[b] * s[b].astype(np.float64)
    return out
