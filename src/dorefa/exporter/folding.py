"""Folding a DoReFa layer into what the bit runtime computes: weight codes and bit planes,
eval BatchNorm as a per-channel affine map, and integer thresholds for the next f_a.

Threshold derivation (docs/method.md sections 2-3)
--------------------------------------------------
A quantized layer receives activation codes q in 0..na, na = 2^A - 1 (activation = q / na) and
has weight codes p in 0..nw, nw = 2^W - 1. Its conv output is an exact multiple of the integer
signed dot D = sum (2p - nw) q (what ``bitconv2d_signed`` returns):

    W > 1:  w = 2p/nw - 1 = (2p - nw)/nw        =>  y = D / (nw * na)
    W = 1:  w = E (2p - 1)   (nw = 1)           =>  y = E * D / na
    so y = s * D with s = 1/(nw na) or E/na (E = mean|W| of the layer, s > 0).

Eval BatchNorm is affine per channel: z = g (y - mu) / sqrt(var + eps) + b, so

    z = alpha * D + beta,   alpha = s g / sqrt(var + eps),   beta = b - mu g / sqrt(var + eps).

The next code is c(z) = round(clip(z, 0, 1) * n), n = 2^A_out - 1. It is non-decreasing in z,
and c(z) >= j  (j = 1..n)  iff  z >= (j - 1/2)/n  (away from exact ties, below). So

    c = #{ j : alpha D + beta >= (j - 1/2)/n },   r_j := ((j - 1/2)/n - beta) / alpha

  alpha > 0:  alpha D + beta >= (j-1/2)/n  iff  D >= r_j   iff  D >= ceil(r_j)   (D integer)
              -> direction +1, thresholds t_j = ceil(r_j):  c = #{j : D >= t_j}
  alpha < 0:  dividing by alpha flips the inequality: D <= r_j  iff  D <= floor(r_j)
              -> direction -1, thresholds t_j = floor(r_j): c = #{j : D <= t_j}
  alpha = 0:  (g = 0) z = beta for every D: a constant code c0 = round(clip(beta, 0, 1) n),
              encoded as direction +1 with c0 thresholds that always hold (-(Dmax+1)) and n - c0
              that never hold (Dmax+1).

|D| <= Dmax = C KH KW na nw, so every threshold is clamped to [-(Dmax+1), Dmax+1] (this also
keeps huge r_j from a tiny alpha inside int32; the kernel already requires Dmax < 2^31).
Max-pooling sits between BN and f_a; since c(z) is non-decreasing in z (whatever the sign of
alpha), max-pool(c(z)) = c(max-pool(z)): the runtime pools the output codes, padding with code 0
(<= every code; torch's pool padding never fills a whole window).

Ties. torch rounds half to even, so at z n = j - 1/2 exactly it goes down for odd j. Our
thresholds round such a point up (D >= ceil(r_j) includes r_j itself). An exact tie needs
alpha D + beta = (j - 1/2)/n in real arithmetic for some integer D, i.e. r_j to be an integer:
BN statistics and learned parameters are continuous floats, so this has measure zero. More to
the point, torch itself computes z in float32 (conv sum order, then BN), so near any boundary its
code is decided by rounding noise of ~1e-6 relative, not by the tie rule; the runtime computes
the exact rational step (thresholds from float64 parameters) and can differ from torch only for
activations within that noise of a boundary. Those rare flips are the only source of prediction
differences (measured in tests/test_export_runtime.py and docs/runtime.md).

Where no f_a follows (the input of the float classifier, or a residual stream the model adds
conv outputs to), the runtime computes the real value alpha D + beta in float32 from stored
alpha, beta (then clip(., 0, 1) for the classifier's input).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import quantizers
from ..geometry import INT32_MAX
from ..nn import QConv2d, QLinear
from .errors import ExportError


# ----------------------------------------------------------------------------- weight codes
def weight_codes(layer: QConv2d | QLinear, name: str = "") -> tuple[np.ndarray, float]:
    """Unsigned weight codes p (uint8) of the layer's f_w and the scale s_w
    (:func:`dorefa.quantizers.weight_codes` on the float32 weight); ``name`` names the layer in
    the errors:

    W > 1: weight = 2p/nw - 1, s_w = 1/nw.   W = 1: weight = E (2p - 1), s_w = E = mean|w|.
    """
    weight = layer.weight.detach().float().cpu()
    codes, scale = quantizers.weight_codes(weight, layer.w_bits)
    if not math.isfinite(scale):  # thresholds would fold to nonsense, silently
        what = f"{name or 'a quantized layer'} ({type(layer).__name__})"
        if not bool(weight.any()):  # all zero: tanh(w) / max|tanh(w)| is 0 / 0
            raise ExportError(
                f"{what}: its weights are all zero, where f_w (tanh(w) / max|tanh(w)|) is "
                "undefined, in torch too: train it, or remove the layer"
            )
        if bool(torch.isfinite(weight).all()):  # W = 1: mean|w| past float32's range
            raise ExportError(
                f"{what}: its weights' scale overflows float32 (max |w| = "
                f"{weight.abs().max().item():.3g}): export a checkpoint from before they grew"
            )
        raise ExportError(
            f"{what}: its weights are not finite (the run diverged): export a checkpoint from "
            "before it did"
        )
    return codes.numpy(), scale


def pack_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes -> ``bits`` bit planes of ceil(size/8) bytes each (np.packbits, little)."""
    flat = codes.reshape(-1)
    planes = (flat[None, :] >> np.arange(bits, dtype=np.uint8)[:, None]) & 1  # (bits, size)
    return np.packbits(planes, axis=1, bitorder="little").reshape(-1)


def fold_thresholds(alpha: np.ndarray, beta: np.ndarray, out_bits: int, dmax: int):
    """Per-channel integer thresholds (O, 2^out_bits - 1) and directions (see module doc)."""
    n = (1 << out_bits) - 1
    alpha = np.asarray(alpha, np.float64)[:, None]
    beta = np.asarray(beta, np.float64)[:, None]
    levels = (np.arange(1, n + 1, dtype=np.float64) - 0.5) / n  # (n,)
    big = float(dmax + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (levels[None, :] - beta) / alpha  # (O, n)
    t = np.where(alpha > 0, np.ceil(r), np.floor(r))
    # alpha == 0: a constant code c0; c0 thresholds always met, the rest never
    c0 = np.rint(np.clip(beta, 0, 1) * n)  # (O, 1)
    const = np.where(np.arange(n)[None, :] < c0, -big, big)
    t = np.where(alpha == 0, const, t)
    t = np.clip(t, -big, big)
    direction = np.where(alpha[:, 0] < 0, -1, 1).astype(np.int8)
    return t.astype(np.int64).clip(-INT32_MAX, INT32_MAX).astype(np.int32), direction


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """Eval BatchNorm as z = a x + b per channel (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(f"{bn}: BatchNorm without running statistics cannot be folded")
    mean = bn.running_mean.detach().double().cpu().numpy()
    var = bn.running_var.detach().double().cpu().numpy()
    g = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(mean)
    b = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(mean)
    if np.any(var + bn.eps <= 0):  # only an edited checkpoint has one
        raise ExportError(f"{bn}: BatchNorm running variance {var.min()} is negative")
    inv = g / np.sqrt(var + bn.eps)
    a, c = inv, b - mean * inv
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(c))):
        raise ExportError(f"{bn}: BatchNorm parameters/statistics are not finite")
    return a, c
