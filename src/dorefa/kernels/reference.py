"""Plain NumPy reference of the bit-convolution kernels: this file is the spec.

Every native kernel (``dorefa/csrc``) must agree with these functions bit for bit; they are
also the ``'reference'`` backend of :mod:`dorefa.kernels` and share its signatures.

Operands are unsigned integer codes (DoReFa-Net, arXiv:1606.06160, section 3 and
docs/method.md section 3): activations ``q`` in ``[0, 2**x_bits)``, weights ``p`` in
``[0, 2**w_bits)``, stored as ``uint8``. Zero padding adds code 0. A convolution returns the
exact integer sum over ``(c, kh, kw)`` of ``q * p`` as int32 (N, O, H', W').

The signed dot of a DoReFa layer: a k-bit weight is ``2p / nw - 1`` with ``nw = 2**w_bits - 1``
(1-bit weights: ``E * (2p - 1)``, i.e. nw = 1), so

    sum (2p - nw) * q = 2 * sum p*q - nw * sum q,        D := that integer,

and the layer's real output is ``scale * D``. Re-quantisation to the next layer's codes is a
monotone step function of D per output channel, given by integer thresholds (see
``csrc/output_transform.h`` for the derivation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import (
    INT32_MAX,
    accumulator_bound,
    check_int,
    check_threads,
    conv_out_size,
    fits_int32,
)

MAX_BITS = 8
LANES = 8  # output channels per packed weight block (see csrc/bitconv.h)


@dataclass(frozen=True, eq=False)
class PackedWeights:
    """Weights packed once at load time.

    ``codes``: uint8 (O, C, KH, KW), read-only copy (what the reference computes with).
    ``words``: uint64 (ceil(O/8), bits, KH*KW*ceil(C/64), 8): bit plane k of output channel
    ``o = 8*b + lane`` at ``words[b, k, (kh*KW + kw)*CW + c//64, lane]``, bit ``c % 64``
    (what the native popcount kernels compute with); None where
    ``dorefa.kernels.pack_weights(..., planes=False)`` left them to the first popcount call.
    ``layouts``: the other layouts of native kernels (e.g. ``'int8'``), made from ``codes`` at
    their first use and kept (:func:`dorefa.kernels.weight_words`).
    """

    codes: np.ndarray
    bits: int
    words: np.ndarray | None
    shape: tuple[int, int, int, int] = field(init=False)  # (O, C, KH, KW)
    layouts: dict = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.codes.shape))


# ----------------------------------------------------------------------------- validation
def check_bits(name: str, bits: object) -> int:
    """``bits`` must be a Python/NumPy int in 1..8."""
    return check_int(name, bits, 1, MAX_BITS)


def check_code_array(name: str, a: object, layout: str) -> np.ndarray:
    """A 4-D uint8 array (C-contiguous copy if needed); dtype and rank checked, not values."""
    if type(a) is np.ndarray and a.dtype == np.uint8 and a.ndim == 4 and a.flags.c_contiguous:
        return a
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint8 array {layout}, got {type(a).__name__}")
    if a.dtype != np.uint8:
        raise TypeError(
            f"{name} must have dtype uint8 (unsigned codes), got {a.dtype}; "
            "convert with .astype(np.uint8) after checking the range"
        )
    if a.ndim != 4:
        raise ValueError(f"{name} must be 4-D {layout}, got shape {a.shape}")
    return np.ascontiguousarray(a)


def check_code_range(name: str, a: np.ndarray, bits: int) -> None:
    """Every code must be below 2**bits (same message as the native check)."""
    if a.size and int(a.max()) >= 1 << bits:
        raise ValueError(
            f"{name} holds code {int(a.max())} >= 2**{bits} = {1 << bits}; "
            "codes must be unsigned ints below 2**bits"
        )


def check_conv(
    x_codes: object,
    pw: PackedWeights,
    x_bits: object,
    stride: object,
    padding: object,
    threads: object,
    *,
    check_values: bool = True,
) -> tuple[np.ndarray, int, int, int, int]:
    """Validates a convolution call; returns (x, x_bits, stride, padding, threads)."""
    if not isinstance(pw, PackedWeights):
        raise TypeError(f"weights must come from pack_weights(), got {type(pw).__name__}")
    x = check_code_array("x_codes", x_codes, "(N, C, H, W)")
    x_bits = check_bits("x_bits", x_bits)
    stride = check_int("stride", stride, 1)
    padding = check_int("padding", padding, 0)
    threads = check_threads(threads)
    o, c, kh, kw = pw.shape
    if x.shape[1] != c:
        raise ValueError(f"x_codes has {x.shape[1]} channels but the weights expect {c}")
    h, w = x.shape[2] + 2 * padding, x.shape[3] + 2 * padding
    if kh > h or kw > w:
        raise ValueError(
            f"kernel {kh}x{kw} larger than the padded input {h}x{w} "
            f"(input {x.shape[2]}x{x.shape[3]}, padding {padding})"
        )
    if not fits_int32(c * kh * kw, x_bits, pw.bits):
        bound = accumulator_bound(c * kh * kw, x_bits, pw.bits)
        raise ValueError(
            f"C*KH*KW*(2**x_bits-1)*(2**w_bits-1) = {bound} exceeds int32 ({INT32_MAX}); "
            "split the input channels"
        )
    if check_values:
        check_code_range("x_codes", x, x_bits)
    return x, x_bits, stride, padding, threads


def check_requant(
    thresholds: object, direction: object, out_channels: int, *, check_values: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """thresholds int32 (O, T), 1 <= T <= 255; direction int8 (O,) of +1/-1 (the values are
    left to the native kernels when ``check_values`` is false: they check them too)."""
    if not isinstance(thresholds, np.ndarray) or thresholds.dtype != np.int32:
        raise TypeError("thresholds must be a numpy int32 array (O, T)")
    if not isinstance(direction, np.ndarray) or direction.dtype != np.int8:
        raise TypeError("direction must be a numpy int8 array (O,)")
    if thresholds.ndim != 2 or thresholds.shape[0] != out_channels:
        raise ValueError(f"thresholds must have shape ({out_channels}, T), got {thresholds.shape}")
    if not 1 <= thresholds.shape[1] <= 255:
        raise ValueError(f"thresholds must have 1..255 columns, got {thresholds.shape[1]}")
    if direction.shape != (out_channels,):
        raise ValueError(f"direction must have shape ({out_channels},), got {direction.shape}")
    if check_values and not np.all(np.abs(direction.astype(np.int64)) == 1):
        raise ValueError("direction values must be +1 or -1")
    return np.ascontiguousarray(thresholds), np.ascontiguousarray(direction)


# ----------------------------------------------------------------------------- packing
def pack_weight_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """The native weight layout, built with NumPy (the spec of csrc/bitpack.cpp)."""
    o, c, kh, kw = codes.shape
    cw = -(-c // 64)
    ob = -(-o // LANES)
    planes = (codes[None] >> np.arange(bits, dtype=np.uint8)[:, None, None, None, None]) & 1
    planes = planes.transpose(1, 0, 3, 4, 2)  # (O, K, KH, KW, C)
    padded = np.zeros((ob * LANES, bits, kh, kw, cw * 64), np.uint8)
    padded[:o, :, :, :, :c] = planes
    packed = np.packbits(
        padded.reshape(ob * LANES, bits, kh * kw * cw, 64), axis=-1, bitorder="little"
    )  # (O8, K, L, 8) bytes: channel c%64 -> bit c%64
    words = np.ascontiguousarray(packed).view("<u8")[..., 0].astype(np.uint64)  # (O8, K, L)
    words = words.reshape(ob, LANES, bits, kh * kw * cw).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(words)  # (OB, K, L, 8)


def pack_weights(w_codes: np.ndarray, w_bits: int) -> PackedWeights:
    """Validates weight codes (O, C, KH, KW) and packs them once."""
    w = check_code_array("w_codes", w_codes, "(O, C, KH, KW)")
    w_bits = check_bits("w_bits", w_bits)
    if min(w.shape) < 1:
        raise ValueError(f"w_codes must have no empty dimension, got shape {w.shape}")
    check_code_range("w_codes", w, w_bits)
    codes = w.copy()
    codes.flags.writeable = False
    return PackedWeights(codes, w_bits, pack_weight_words(codes, w_bits))


# ----------------------------------------------------------------------------- convolutions
def _windows(x: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """Receptive fields (N, C, H', W', KH, KW) of the zero-padded codes, as int64."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return win[:, :, ::stride, ::stride]


def _acc(x: np.ndarray, pw: PackedWeights, stride: int, padding: int) -> np.ndarray:
    """sum over (c, kh, kw) of q * p, int64 (N, O, H', W')."""
    _, _, kh, kw = pw.shape
    win = _windows(x, kh, kw, stride, padding)
    out = np.tensordot(win, pw.codes.astype(np.int64), axes=([1, 4, 5], [1, 2, 3]))
    return out.transpose(0, 3, 1, 2)  # (N, H', W', O) -> (N, O, H', W')


def _signed(x: np.ndarray, pw: PackedWeights, stride: int, padding: int) -> np.ndarray:
    """D = 2 * sum p*q - nw * sum q, int64 (N, O, H', W')."""
    _, _, kh, kw = pw.shape
    nw = (1 << pw.bits) - 1
    s = _windows(x, kh, kw, stride, padding).sum(axis=(1, 4, 5))  # (N, H', W')
    return 2 * _acc(x, pw, stride, padding) - nw * s[:, None]


def bitconv2d_packed(
    x_codes: np.ndarray,
    pw: PackedWeights,
    x_bits: int,
    stride: int = 1,
    padding: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Exact sum over (c, kh, kw) of x * w: int32 (N, O, H', W')."""
    x, _, stride, padding, _ = check_conv(x_codes, pw, x_bits, stride, padding, threads)
    return _acc(x, pw, stride, padding).astype(np.int32)


def bitconv2d(
    x_codes: np.ndarray,
    w_codes: np.ndarray,
    x_bits: int,
    w_bits: int,
    stride: int = 1,
    padding: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """``bitconv2d_packed(x_codes, pack_weights(w_codes, w_bits), ...)``."""
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
    """D = sum (2p - nw) * q, nw = 2**w_bits - 1: int32 (N, O, H', W')."""
    x, _, stride, padding, _ = check_conv(x_codes, pw, x_bits, stride, padding, threads)
    return _signed(x, pw, stride, padding).astype(np.int32)


def requantize(d: np.ndarray, thresholds: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Per channel o: +1 -> #{j : D >= t[o, j]}, -1 -> #{j : D <= t[o, j]}; uint8 codes."""
    t = thresholds.astype(np.int64)[None, :, None, None, :]  # (1, O, 1, 1, T)
    dd = d.astype(np.int64)[..., None]  # (N, O, H', W', 1)
    up = (dd >= t).sum(axis=-1)
    down = (dd <= t).sum(axis=-1)
    return np.where(direction[None, :, None, None] > 0, up, down).astype(np.uint8)


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
    """Fused signed conv + threshold re-quantisation: uint8 codes (N, O, H', W')."""
    x, _, stride, padding, _ = check_conv(x_codes, pw, x_bits, stride, padding, threads)
    thresholds, direction = check_requant(thresholds, direction, pw.shape[0])
    return requantize(_signed(x, pw, stride, padding), thresholds, direction)


# ----------------------------------------------------------------------------- float first layer
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
    """The float first layer, fused: conv (float32 x, weight) -> max-pool pool x pool / pool
    (floor) -> + bias -> codes ``rint(clip(z, 0, 1) * (2**bits - 1))``: uint8 (N, O, PH, PW);
    a NaN anywhere in a pooling window makes its value NaN (numpy's max), whose code is 0.

    Each conv output is summed in float64 over (c, kh, kw) in that order starting from 0 (the
    products of float32 values are exact in float64, so this order fixes every bit), then
    rounded to float32; pooling, bias, clip, scale and round-half-to-even are float32 ops.
    """
    bias = np.asarray(bias, np.float32)
    y = _conv_sums64(x, weight, stride, padding).astype(np.float32)
    n, o, oh, ow = y.shape
    ph, pw = oh // pool, ow // pool
    y = y[:, :, : ph * pool, : pw * pool].reshape(n, o, ph, pool, pw, pool).max(axis=(3, 5))
    z = y + bias[None, :, None, None]
    z = np.clip(z, np.float32(0), np.float32(1))
    z *= np.float32((1 << bits) - 1)
    z[np.isnan(z)] = 0  # a NaN sum (inf - inf from non-finite inputs) pools to NaN: code 0
    return np.rint(z).astype(np.uint8)


def conv_float(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int
) -> np.ndarray:
    """A float conv with bias, float32 output (N, O, H', W'): each output summed in float64 over
    (c, kh, kw), rounded to float32, plus the bias in float32. The native paths are checked
    against it within float32 rounding (their sums are float32 FMAs), not to the bit."""
    acc = _conv_sums64(x, weight, stride, padding)
    return acc.astype(np.float32) + np.asarray(bias, np.float32)[None, :, None, None]


def _conv_sums64(x: np.ndarray, weight: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """The float64 sums (N, O, H', W') of a conv of float32 ``x`` with float32 ``weight``,
    zero padding, taken in order over (c, kh, kw) from 0.0 (each product is exact in
    float64, so this order fixes every bit)."""
    x = np.asarray(x, np.float32)
    weight = np.asarray(weight, np.float32)
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w, kw, stride, padding)
    acc = np.zeros((n, o, oh, ow))
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, ci, i : i + stride * (oh - 1) + 1 : stride,
                           j : j + stride * (ow - 1) + 1 : stride]  # fmt: skip
                acc += patch[:, None] * weight[:, ci, i, j].astype(np.float64)[None, :, None, None]
    return acc


def linear_float(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A float linear layer, float32 (N, O): ``x @ weight.T`` summed in float64, rounded to
    float32, plus the bias in float32. The native paths (float32 FMA sums in a fixed order) are
    checked against it within float32 rounding."""
    x = np.asarray(x, np.float32).astype(np.float64)
    acc = x @ np.asarray(weight, np.float32).astype(np.float64).T
    return acc.astype(np.float32) + np.asarray(bias, np.float32)


def _tap_range(i: int, p: int, s: int, n_out: int, n_in: int) -> tuple[int, int]:
    """Outputs [r0, r1) whose tap i reads inside the input: 0 <= r s + i - p < n_in."""
    r0 = max(0, -((i - p) // s))  # ceil((p - i) / s)
    r1 = min(n_out, (n_in - 1 - i + p) // s + 1)
    return r0, max(r0, r1)


def maxpool_float(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Max-pool of a float32 map (N, C, H, W), padding -inf (never wins), NaN propagating:
    float32 (N, C, H', W'). Separable: the max over the k row taps, then the column taps."""
    x = np.asarray(x, np.float32)
    k, s, p = kernel, stride, padding
    n, c, h, w = x.shape
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    rows = np.full((n, c, ho, w), -np.inf, np.float32)
    for i in range(k):
        r0, r1 = _tap_range(i, p, s, ho, h)
        if r0 < r1:
            src = x[:, :, r0 * s + i - p : (r1 - 1) * s + i - p + 1 : s]
            np.maximum(rows[:, :, r0:r1], src, out=rows[:, :, r0:r1])
    out = np.full((n, c, ho, wo), -np.inf, np.float32)
    for j in range(k):
        c0, c1 = _tap_range(j, p, s, wo, w)
        if c0 < c1:
            src = rows[:, :, :, c0 * s + j - p : (c1 - 1) * s + j - p + 1 : s]
            np.maximum(out[:, :, :, c0:c1], src, out=out[:, :, :, c0:c1])
    return out


def maxpool_codes(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Max-pool of uint8 codes (N, C, H, W); padding is code 0 (<= every code)."""
    n, c, h, w = x.shape
    oh, ow = conv_out_size(h, kernel, stride, padding), conv_out_size(w, kernel, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((n, c, oh, ow), np.uint8)
    for i in range(kernel):
        for j in range(kernel):
            tap = xp[:, :, i : i + stride * (oh - 1) + 1 : stride,
                     j : j + stride * (ow - 1) + 1 : stride]  # fmt: skip
            np.maximum(out, tap, out=out)
    return out


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """A (C,) vector shaped to broadcast over (N, C, ...) of ``ndim`` dimensions."""
    return np.asarray(v, np.float32).reshape(1, -1, *(1,) * (ndim - 2))


def quantize_float(x: np.ndarray, bits: int) -> np.ndarray:
    """f_a's codes of a float32 map, as torch computes them: ``rint(clip(x, 0, 1) * n)`` in
    float32 (``n = 2^bits - 1``, ties to even); a NaN gives code 0."""
    y = np.clip(np.asarray(x, np.float32), np.float32(0), np.float32(1))
    y *= np.float32((1 << bits) - 1)
    np.rint(y, out=y)
    y[np.isnan(y)] = 0
    return y.astype(np.uint8)


def affine_float(x: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Per-channel ``x * scale + shift`` of an (N, C, ...) float32 array: a product, then a
    sum, each rounded to float32 (an eval BatchNorm)."""
    y = np.asarray(x, np.float32) * _per_channel(scale, x.ndim)
    y += _per_channel(shift, x.ndim)
    return y


def scale_int_float(d: np.ndarray, alpha: np.ndarray, beta: np.ndarray, clip: bool) -> np.ndarray:
    """A bit convolution's float output from its int32 D (N, C, ...): ``float32(D) * alpha +
    beta`` per channel, each step rounded to float32, then ``clip(., 0, 1)`` when ``clip``."""
    y = d.astype(np.float32)
    np.multiply(y, _per_channel(alpha, d.ndim), out=y)
    np.add(y, _per_channel(beta, d.ndim), out=y)
    if clip:  # y unless below 0 or above 1: NaN and -0 pass (NumPy's clip before 2.1 made -0 +0)
        y = np.where(y < 0, np.float32(0), np.where(y > 1, np.float32(1), y))
    return y


def avgpool_float(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Average pool of a float32 map (N, C, H, W): per window, 0 plus its taps row by row in
    float32 (a padding tap adds 0: torch's ``count_include_pad=True``), then / k^2."""
    k, s, p = kernel, stride, padding
    n, c, h, w = x.shape
    ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    if p:
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, c, ho, wo), np.float32)
    for i in range(k):
        for j in range(k):
            out += x[:, :, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s]
    return out / np.float32(k * k)
