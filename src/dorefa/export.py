"""Export a trained DoReFa model to a ``.dorefa`` file for the torch-free bit runtime.

``export(model, path)`` packs the quantized weights at W bits (bit planes), folds every
BatchNorm (and the weight/activation scales, clip and re-quantization) into per-channel integer
thresholds, and keeps the first conv and the classifier in float32. ``dorefa export CKPT -o
model.dorefa`` does the same for a training checkpoint. The file layout is described in
:mod:`dorefa.runtime.format`.

Supported: sequential models (``svhn`` at any width, ``alexnet``) with W and A in 1..8 and the
paper's float first/last layers. Not supported (clear ExportError): residual models (resnet18),
A = 32 (unbounded ReLU activations have no integer codes), W = 32 middle layers, and models
trained with ``--quantize-first-last``.

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

The last quantized layer feeds the float classifier through clip(0, 1) without quantization:
the runtime computes clip(alpha D + beta, 0, 1) in float32 from stored alpha, beta.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import quantizers
from .bits import FLOAT, Bits
from .geometry import INT32_MAX, accumulator_bound, conv_out_size, fits_int32
from .nn import ActQuant, GradQuant, QConv2d, QLinear
from .runtime import format as fmt


class ExportError(ValueError):
    """The model cannot be run by the bit runtime (says what is unsupported and why)."""


# ----------------------------------------------------------------------------- weight codes
def weight_codes(layer: QConv2d | QLinear) -> tuple[np.ndarray, float]:
    """Unsigned weight codes p (uint8) of the layer's f_w and the scale s_w
    (:func:`dorefa.quantizers.weight_codes` on the float32 weight):

    W > 1: weight = 2p/nw - 1, s_w = 1/nw.   W = 1: weight = E (2p - 1), s_w = E = mean|w|.
    """
    codes, scale = quantizers.weight_codes(layer.weight.detach().float().cpu(), layer.w_bits)
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


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """Eval BatchNorm as z = a x + b per channel (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(f"{bn}: BatchNorm without running statistics cannot be folded")
    mean = bn.running_mean.detach().double().cpu().numpy()
    var = bn.running_var.detach().double().cpu().numpy()
    g = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(mean)
    b = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(mean)
    inv = g / np.sqrt(var + bn.eps)
    a, c = inv, b - mean * inv
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(c))):
        raise ExportError(f"{bn}: BatchNorm parameters/statistics are not finite")
    return a, c


# ----------------------------------------------------------------------------- what can be exported
EXPORTABLE_MODELS = ("svhn", "alexnet")  # plain conv/BN/pool chains; resnets have branches


def _model_names() -> dict[type, str]:
    from .models.alexnet import AlexNet
    from .models.svhn import SVHNNet

    return {SVHNNet: "svhn", AlexNet: "alexnet"}


def _bits_reason(bits, keep_first_last: bool) -> str | None:
    if not keep_first_last:
        return (
            "models trained with --quantize-first-last (quantized first conv on "
            "the float image) are not supported by the bit runtime"
        )
    try:
        b = Bits.parse(bits)
    except ValueError as exc:
        return f"{exc}; the bit runtime needs W and A in 1..8"
    if b.a == FLOAT:
        return (
            f"bits {b}: A = 32 (unbounded ReLU activations) has no integer "
            "codes; the bit runtime needs A in 1..8"
        )
    if b.w == FLOAT:
        return (
            f"bits {b}: W = 32 (float weights in the middle layers) cannot run "
            "on popcount kernels; the bit runtime needs W in 1..8"
        )
    return None


def exportable(model_name: str, bits, keep_first_last: bool = True) -> str | None:
    """None if the bit runtime runs model ``model_name`` trained with ``bits`` (a Bits or
    anything ``Bits.parse`` takes), else the reason it cannot (what :func:`export` raises).

    Runnable: a plain conv/BN/pool chain (``svhn``, ``alexnet``), W and A in 1..8 (G is a
    training-only setting) and the paper's float first and last layers (``keep_first_last``).
    """
    if model_name not in EXPORTABLE_MODELS:
        return (
            f"{model_name} is not a sequential conv/BN/pool chain (e.g. resnet18 adds "
            "residual branches), which the bit runtime cannot run; export svhn or alexnet models"
        )
    return _bits_reason(bits, keep_first_last)


# ----------------------------------------------------------------------------- walking the model
def _modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's leaf modules in data-flow order (only for known sequential models)."""
    from .models.alexnet import AlexNet
    from .models.svhn import SVHNNet

    out = []

    def walk(prefix, m):
        children = list(m.named_children())
        if not children or isinstance(m, (QConv2d, QLinear)):
            out.append((prefix, m))
            return
        if not isinstance(m, (nn.Sequential, SVHNNet, AlexNet)):
            raise ExportError(f"{prefix}: container {type(m).__name__} is not supported")
        for name, child in children:
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return out


def _conv_params(m: nn.Conv2d, name: str) -> tuple[int, int]:
    ks, st, pd, dl = m.kernel_size, m.stride, m.padding, m.dilation
    if not (
        st[0] == st[1]
        and isinstance(pd, tuple)
        and pd[0] == pd[1]
        and dl == (1, 1)
        and m.padding_mode == "zeros"
    ):
        raise ExportError(
            f"{name}: only square stride/zero padding without dilation is "
            f"supported, got stride {st} padding {pd} dilation {dl}"
        )
    del ks
    return st[0], pd[0]


def _pool_params(m: nn.MaxPool2d, name: str) -> tuple[int, int, int]:
    def one(v):
        if isinstance(v, tuple):
            if len(set(v)) != 1:
                raise ExportError(f"{name}: non-square max-pool {v} is not supported")
            return v[0]
        return v

    k, s, p, d = one(m.kernel_size), one(m.stride or m.kernel_size), one(m.padding), one(m.dilation)
    if m.ceil_mode or d != 1:
        raise ExportError(f"{name}: max-pool with ceil_mode or dilation is not supported")
    return k, s, p


def _check_exportable(model: nn.Module) -> None:
    """Raise ExportError with :func:`exportable`'s reason if the bit runtime cannot run it."""
    names = _model_names()
    bits = getattr(model, "bits", None)
    keep = getattr(model, "keep_first_last", True) is not False
    if type(model) in names:
        reason = exportable(names[type(model)], bits, keep)
    elif isinstance(model, nn.Sequential):  # a hand-made chain: its layers are checked one by one
        reason = _bits_reason(bits, keep) if bits is not None else None
    else:
        reason = exportable(type(model).__name__, bits, keep)
    if reason:
        raise ExportError(reason)


def build(model: nn.Module) -> tuple[dict, dict[str, np.ndarray]]:
    """The runtime's layer list (header dict) and its arrays for ``model`` (see module doc)."""
    _check_exportable(model)
    mods = [
        (n, m)
        for n, m in _modules(model)
        if not isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten, GradQuant))
    ]  # identity at inference; a flatten is implied by the layer after it
    first = next((m for _, m in mods if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ExportError("the model has no conv layer")
    size = getattr(model, "input_size", None)
    if not isinstance(size, int):
        raise ExportError(f"{type(model).__name__} has no integer input_size attribute")
    shape = (first.in_channels, size, size)
    layers: list[dict] = []
    arrays: dict[str, np.ndarray] = {}
    kind: str | int = "float"  # what flows: float map or k-bit codes

    def arr(name: str, a: np.ndarray) -> dict:
        key = f"{len(layers)}.{name}"
        arrays[key] = a
        return {"array": key}

    i = 0
    while i < len(mods):
        name, m = mods[i]
        if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "w_bits", FLOAT) == FLOAT:
            if kind != "float":
                raise ExportError(
                    f"{name}: float-weight layer in the middle of the network "
                    "(W = 32 middle layers) cannot run on popcount kernels"
                )
            shape = _float_layer(name, m, shape, not layers, i == len(mods) - 1, layers, arr)
            i += 1
        elif isinstance(m, nn.MaxPool2d):
            k, s, p = _pool_params(m, name)
            layers.append({"op": "maxpool", "kernel": k, "stride": s, "padding": p})
            shape = (shape[0], conv_out_size(shape[1], k, s, p), conv_out_size(shape[2], k, s, p))
            i += 1
        elif isinstance(m, ActQuant):
            if kind != "float" or m.k == FLOAT or not m.quantize:
                raise ExportError(f"{name}: activation {m} in an unsupported position")
            layers.append({"op": "quantize", "bits": m.k})
            kind = m.k
            i += 1
        elif isinstance(m, (QConv2d, QLinear)):
            if kind == "float":
                raise ExportError(
                    f"{name}: quantized layer on float input (quantized first "
                    "layer) is not supported"
                )
            i, shape, kind = _quantized_layer(mods, i, shape, kind, layers, arr)
        else:
            raise ExportError(f"{name}: {type(m).__name__} is not supported by the bit runtime")
    if kind != "float" or len(shape) != 1:
        raise ExportError("the model must end with a float linear classifier")
    header = {
        "format": fmt.FORMAT_NAME,
        "input_shape": [int(v) for v in (first.in_channels, size, size)],
        "num_classes": int(shape[0]),
        "bits": str(model.bits) if getattr(model, "bits", None) else None,
        "layers": layers,
    }
    return header, arrays


def _float_params(m: nn.Conv2d | nn.Linear, out: int) -> tuple[np.ndarray, np.ndarray]:
    w = m.weight.detach().float().cpu().numpy()
    b = m.bias.detach().float().cpu().numpy() if m.bias is not None else np.zeros(out, np.float32)
    return w, b


def _float_layer(name, m, shape, is_first, is_last, layers, arr) -> tuple:
    """The float first conv (``conv_float``) or the float classifier (``[flatten]
    linear_float``), appended to ``layers``; returns the output shape."""
    if is_first and isinstance(m, nn.Conv2d):
        stride, pad = _conv_params(m, name)
        if m.groups != 1:
            raise ExportError(f"{name}: grouped float first conv is not supported")
        w, b = _float_params(m, m.out_channels)
        layers.append(
            {
                "op": "conv_float",
                "stride": stride,
                "padding": pad,
                "weight": arr("weight", w),
                "bias": arr("bias", b),
            }
        )
        kh, kw = m.kernel_size
        h, wd = conv_out_size(shape[1], kh, stride, pad), conv_out_size(shape[2], kw, stride, pad)
        return (m.out_channels, h, wd)
    if is_last and isinstance(m, nn.Linear):
        n_in = math.prod(shape)
        if m.in_features != n_in:
            raise ExportError(f"{name}: expects {m.in_features} inputs, gets {n_in}")
        if len(shape) > 1:
            layers.append({"op": "flatten"})
        w, b = _float_params(m, m.out_features)
        layers.append({"op": "linear_float", "weight": arr("weight", w), "bias": arr("bias", b)})
        return (m.out_features,)
    raise ExportError(
        f"{name}: float-weight layer in the middle of the network "
        "(W = 32 middle layers) cannot run on popcount kernels"
    )


def _quantized_layer(mods, i, shape, x_bits, layers, arr):
    """conv|linear (f_w) -> BN -> [max-pool] -> f_a: one bitconv (+ maxpool on codes)."""
    name, m = mods[i]
    seq = [type(mm).__name__ for _, mm in mods[i : i + 4]]
    if i + 2 >= len(mods) or not isinstance(mods[i + 1][1], nn.modules.batchnorm._BatchNorm):
        raise ExportError(
            f"{name}: a quantized layer must be followed by BatchNorm "
            f"(conv -> BN -> [pool] -> f_a), got {seq}"
        )
    bn = mods[i + 1][1]
    j = i + 2
    pool = None
    if isinstance(mods[j][1], nn.MaxPool2d):
        pool = _pool_params(mods[j][1], mods[j][0])
        j += 1
    if j >= len(mods) or not isinstance(mods[j][1], ActQuant):
        raise ExportError(f"{name}: expected conv -> BN -> [pool] -> f_a, got {seq}")
    act = mods[j][1]
    if act.k == FLOAT:
        raise ExportError(f"{mods[j][0]}: A = 32 (ReLU) activations are not supported")
    if m.w_bits == FLOAT:
        raise ExportError(f"{name}: W = 32 middle layer is not supported")

    codes, s_w = weight_codes(m)
    if isinstance(m, QLinear):
        # fc over a (C, H, W) code map == an HxW valid conv; over a vector == a 1x1 conv
        c, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
        if m.in_features != c * h * w:
            raise ExportError(f"{name}: expects {m.in_features} inputs, gets {c * h * w}")
        codes = codes.reshape(m.out_features, c, h, w)
        stride, pad, groups, shape = 1, 0, 1, (c, h, w)
    else:
        stride, pad = _conv_params(m, name)
        groups = m.groups
    o, cg, kh, kw = codes.shape
    na = (1 << x_bits) - 1
    dmax = accumulator_bound(cg * kh * kw, x_bits, m.w_bits)  # |D| <= dmax
    if not fits_int32(cg * kh * kw, x_bits, m.w_bits):
        raise ExportError(
            f"{name}: accumulator range {dmax} exceeds int32 ({INT32_MAX}); use fewer input "
            "channels per group or fewer bits"
        )
    s = s_w / na  # y = s * D
    a_bn, b_bn = _bn_affine(bn)
    alpha, beta = s * a_bn, b_bn  # z = alpha * D + beta
    ho, wo = conv_out_size(shape[1], kh, stride, pad), conv_out_size(shape[2], kw, stride, pad)
    spec = {
        "op": "bitconv",
        "x_bits": int(x_bits),
        "w_bits": int(m.w_bits),
        "stride": stride,
        "padding": pad,
        "groups": int(groups),
        "weight_shape": [o, cg, kh, kw],
        "weight": arr("weight", pack_planes(codes, m.w_bits)),
    }
    if act.quantize:
        t, d = fold_thresholds(alpha, beta, act.k, dmax)
        spec |= {
            "out": "codes",
            "out_bits": int(act.k),
            "thresholds": arr("thresholds", t),
            "direction": arr("direction", d),
        }
        kind = act.k
    else:
        if pool is not None:
            raise ExportError(f"{name}: max-pool before the float classifier is not supported")
        spec |= {
            "out": "float",
            "alpha": arr("alpha", alpha.astype(np.float32)),
            "beta": arr("beta", beta.astype(np.float32)),
        }
        kind = "float"
    layers.append(spec)
    shape = (o, ho, wo)
    if pool is not None:
        k, ps, pp = pool
        layers.append({"op": "maxpool", "kernel": k, "stride": ps, "padding": pp})
        shape = (o, conv_out_size(ho, k, ps, pp), conv_out_size(wo, k, ps, pp))
    return j + 1, shape, kind


# ----------------------------------------------------------------------------- public API
def export(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> dict:
    """Write ``model`` (a DoReFa svhn/alexnet, eval statistics) to ``path`` as a .dorefa file.

    ``meta`` (JSON-able) is stored in the header. Returns a summary dict: ``path``, ``size``
    (bytes), ``layers`` (count), ``float_bytes`` (float32 bytes of the same parameters and BN
    statistics). Raises ExportError (a ValueError) saying what is unsupported.
    """
    with torch.no_grad():
        header, arrays = build(model)
    header["meta"] = dict(meta or {})
    try:
        size = fmt.write(path, header, arrays)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"cannot write {path}: {exc}") from None
    float_bytes = sum(
        t.numel() * 4
        for t in model.state_dict().values()
        if torch.is_tensor(t) and t.is_floating_point()
    )
    return {
        "path": str(path),
        "size": size,
        "layers": len(header["layers"]),
        "float_bytes": float_bytes,
    }


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint)
    out = args.output or str(Path(args.checkpoint).with_suffix(".dorefa"))
    meta = dict(ckpt["meta"]) | {
        "checkpoint": str(args.checkpoint),
        "epoch": int(ckpt.get("epoch", -1)) + 1,
    }
    info = export(model, out, meta=meta)
    ckpt_float = Path(args.checkpoint)
    print(
        f"exported {ckpt['meta']['model']} bits {ckpt['meta']['bits']} width "
        f"{ckpt['meta']['width']} -> {out}: {info['layers']} layers, {info['size']} bytes "
        f"({info['float_bytes'] / info['size']:.1f}x smaller than the float32 weights, "
        f"{info['float_bytes']} bytes; checkpoint file {ckpt_float.stat().st_size} bytes)"
    )
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to a .dorefa bit-runtime file")
    p.add_argument("checkpoint", help="checkpoint.pt from `dorefa train`")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="output .dorefa file (default: the checkpoint's name with .dorefa)",
    )
    p.set_defaults(func=cmd_export)


__all__ = [
    "EXPORTABLE_MODELS",
    "ExportError",
    "build",
    "export",
    "exportable",
    "fold_thresholds",
    "pack_planes",
    "register_cli",
    "weight_codes",
]
