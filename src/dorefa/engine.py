"""Integer training: every quantized conv/linear runs its three products on the library's
integer kernels (``dorefa train --engine int``, :func:`set_engine`).

A DoReFa layer ``conv (f_w) -> f_g -> ...`` fed by f_a has three products, all of small
unsigned codes (docs/training.md, section "Integer training"):

* forward      ``y  = (s / n_a) sum (2p - n_w) q``                  (activation x weight codes)
* input grad   ``dx = (m_b s / n_g) sum (2c - n_g)(2p - n_w)``      (gradient x weight codes)
* weight grad  ``dW = (sum_b m_b sum (2c - n_g) q) / (n_g n_a)``    (gradient x activation codes;
  the m_b on an integer grid, ``kernels.reference_grad.grid_scales``)

with ``q = round(n_a x)`` the activation codes, ``p, s`` the weight codes and scale
(:func:`dorefa.quantizers.weight_codes`), ``c, m_b`` f_g's codes and per-sample scales
(:func:`dorefa.quantizers.gradient_codes`, drawn from the layer's GradQuant generator, so the
same seed gives the same noise as the torch engine). The integer parts run in
:mod:`dorefa.kernels.training` (forward: ``bitconv2d_signed``); the scales (themselves float64
roundings of ``s / n_a`` and ``m_b s / n_g``) multiply the exact integers in float64, then one
rounding to float32. f_g is fused into the conv's backward: the GradQuant right after an
integer layer passes its gradient through untouched.

A layer runs on the torch path instead (:func:`set_engine` returns why, per layer) when one of
W, A, G is 32, it has a bias, groups, dilation or asymmetric padding, sums that could pass
int32, or no GradQuant follows it; a call falls back when its input is not A-bit codes, is on
CUDA, is not float32, is empty, or (Linear) is not (N, C), with a RuntimeWarning once per layer
and reason (an empty batch: silently). The GradQuant must take the conv's
output directly (``gq(conv(x))``, as every registered model does), and the output's gradient
must come through it alone: the conv's backward checks that the gradient it got is the one its
GradQuant passed on, and raises otherwise (no GradQuant on the path, a second use of the raw
output, a module hook between them) rather than quantize a gradient the torch engine would not.
A gradient of a gradient (``create_graph=True``) raises too: the integer products are not
differentiable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .bits import FLOAT, Bits
from .engine_bn import set_batch_norms
from .engine_float import FloatConvLayer, float_conv_fits
from .engine_pool import set_pools
from .geometry import fits_int32
from .quantizers import GradQuant, gradient_codes, noise_draws, weight_codes

ENGINES = ("torch", "int")


@dataclass
class IntLayer:
    """What the integer path of one QConv2d/QLinear needs: its bits and geometry, and the
    GradQuant whose f_g it performs (and whose generator draws the noise)."""

    a_bits: int
    w_bits: int
    g_bits: int
    stride: int
    padding: int
    grad_quant: GradQuant
    # the factor of a Dropout right before the layer in training (1 / (1 - p)): its input is
    # then codes * factor / n_a
    input_factor: float = 1.0
    fell_back: set[str] = field(default_factory=set)  # the reasons calls ran on torch (warned)

    def codes(self, x: Tensor) -> tuple[np.ndarray, float] | None:
        """x's A-bit codes q (uint8) and the factor f with ``x == q * f / n_a`` (f = 1, or the
        Dropout factor), or None if x is neither. An ActQuant's tag (:func:`tag_codes`) is
        taken as is; other tensors are checked."""
        tag = getattr(x, "_dorefa_codes", None)
        if tag is not None and tag[0] == self.a_bits and tag[1] == x._version:
            return tag[2], 1.0
        n = (1 << self.a_bits) - 1
        for factor in dict.fromkeys((self.input_factor, 1.0)):
            q = torch.round(x * (n / factor))  # n / 1.0 is n exactly
            y = q / n if factor == 1.0 else q / n * factor
            if torch.equal(y, x) and not (q.numel() and (q.min() < 0 or q.max() > n)):
                return q.to(torch.uint8).numpy(), factor
        return None

    def run(self, module: nn.Module, x: Tensor) -> Tensor | None:
        """The layer's output on the integer path, or None (then the caller runs torch)."""
        conv = isinstance(module, nn.Conv2d)
        if x.numel() == 0:
            return None  # an empty batch: torch
        if x.dim() != (4 if conv else 2):
            wanted = "(N, C, H, W)" if conv else "(N, C)"
            return self._fallback(module, f"a {x.dim()}-D input, not {wanted}")
        if x.device.type != "cpu" or x.dtype != torch.float32:
            return self._fallback(module, f"a {x.dtype} input on {x.device}, not float32 on cpu")
        x4 = x if conv else x.reshape(x.shape[0], -1, 1, 1)
        found = self.codes(x4)
        if found is None:
            return self._fallback(module, f"an input that is not {self.a_bits}-bit codes")
        # The weight input only routes dL/d f_w(W) back to W: for W = 1, f_w's straight-through
        # gradient is the identity, so the weight itself does (no float f_w(W) to compute).
        wq = module.weight if self.w_bits == 1 else module.quantized_weight()
        passed = _Passed()
        y = _IntConvFn.apply(x4, wq, module, self, *found, passed)  # Linear: (N, O)
        if torch.is_grad_enabled() and y.requires_grad:
            y._dorefa_fg = (self, passed)  # this layer's backward applies f_g to y's gradient
        return y

    def _fallback(self, module: nn.Module, why: str) -> None:
        """None (the call runs on torch), said once per layer and reason."""
        if why not in self.fell_back:
            self.fell_back.add(why)
            warnings.warn(f"int engine: {module!r} ran on torch: {why}", RuntimeWarning, 3)

    def take(self, x: Tensor) -> Tensor | None:
        """``x`` through an identity that notes the gradient it passes back, if ``x`` is this
        layer's integer output (its f_g runs in the conv's backward); else None."""
        tag = getattr(x, "_dorefa_fg", None)
        if tag is None or tag[0] is not self:
            return None
        return _ThroughGradQuant.apply(x, tag[1])


class _Passed:
    """The gradient a GradQuant passed back to its integer conv's output (None: none yet)."""

    __slots__ = ("grad",)

    def __init__(self) -> None:
        self.grad: Tensor | None = None


class _ThroughGradQuant(torch.autograd.Function):
    """Identity; its backward notes the gradient it hands on (the conv's backward checks that
    this gradient, and no other, reached it)."""

    @staticmethod
    def forward(ctx, y: Tensor, passed: _Passed) -> Tensor:
        ctx.passed = passed
        # an alias, not a view: a view made in a custom Function may not be changed in place
        # (`gq(conv(x)) += skip` ran before this identity existed)
        return y.detach()

    @staticmethod
    def backward(ctx, g: Tensor):
        ctx.passed.grad = g
        return g, None


def tag_codes(y: Tensor, k: int, codes: Tensor, nan_free: bool = False) -> Tensor:
    """Mark an ActQuant output ``y = codes / n_k`` with its uint8 codes, so that the integer
    layer it feeds skips the check. Not when y holds a NaN (its uint8 code would be 0: the
    check path then sends the layer to torch, which propagates it; ``nan_free``: the caller
    knows there is none). An in-place change to ``y`` bumps its version, which drops the tag;
    writes that bypass autograd's version counter (``y.data``, a numpy view) are not seen, as
    they are not by autograd itself."""
    if nan_free or y.numel() == 0 or not torch.isnan(y.max()):  # max propagates NaN
        y._dorefa_codes = (k, y._version, codes.numpy())
    return y


def _weights(module: nn.Module) -> tuple[np.ndarray, float]:
    """The layer's weight codes (O, C, KH, KW) uint8 and scale s (f_w = s (2p - n_w))."""
    p, s = weight_codes(module.weight.detach(), module.w_bits)
    p = p.numpy()
    return (p if p.ndim == 4 else p.reshape(p.shape + (1, 1))), s


def _gradient_codes(dy: Tensor, layer: IntLayer, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """f_g's codes uint8 (shaped like dy) and per-sample scales m float32 (N,): the native
    one-pass kernel (``csrc/grad_codes.h``: the same float32 steps and noise draws as
    :func:`dorefa.quantizers.gradient_codes`), or that function itself without the extension."""
    from .kernels.extension import native

    gen = layer.grad_quant.generator
    if native is None or dy.dtype != torch.float32 or dy.dim() < 2:
        c, m = gradient_codes(dy, layer.g_bits, gen)
        return c.to(torch.uint8).numpy(), m.reshape(-1).numpy()
    draws = noise_draws(dy, gen).numpy()
    flat = dy.reshape(len(dy), -1).numpy()
    c, m = native.gradient_codes(flat, draws, (1 << layer.g_bits) - 1, threads)
    return c.reshape(dy.shape), m


def _scaled(d: np.ndarray, scale: float, threads: int) -> np.ndarray:
    """``float32(float64(d) * scale)`` for int32 ``d``: one native pass over the threads (NumPy's
    cast-and-multiply took a third of the forward product's time), NumPy without the
    extension."""
    from .kernels.extension import native

    if native is not None and d.dtype == np.int32 and d.flags.c_contiguous:
        return native.scale_to_float(d, scale, threads)
    y = np.empty(d.shape, np.float32)  # the same rounding: no float32 step in between
    np.multiply(d, scale, out=y, casting="unsafe")
    return y


class _IntConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, wq, module: nn.Module, layer: IntLayer, q, factor: float, passed: _Passed):
        from .kernels import bitconv2d_signed, pack_weights

        p, s = _weights(module)
        threads = torch.get_num_threads()
        d = bitconv2d_signed(
            q,
            pack_weights(p, layer.w_bits, planes=False),
            layer.a_bits,
            layer.stride,
            layer.padding,
            threads,
        )
        n_a = (1 << layer.a_bits) - 1
        ctx.layer, ctx.q, ctx.p, ctx.s, ctx.threads = layer, q, p, s, threads
        ctx.wq_shape, ctx.factor, ctx.passed, ctx.out_shape = wq.shape, factor, passed, d.shape
        y = torch.from_numpy(_scaled(d, s * factor / n_a, threads))
        # a Linear's (N, O) made here, so that its GradQuant's gradient reaches backward as is
        return y if isinstance(module, nn.Conv2d) else y.reshape(len(y), -1)

    @staticmethod
    def backward(ctx, dy: Tensor):
        from .kernels.training import conv_input_grad, conv_weight_grad

        _check_gradient(ctx, dy)
        layer, q, p = ctx.layer, ctx.q, ctx.p
        c, m = _gradient_codes(dy.reshape(ctx.out_shape).contiguous(), layer, ctx.threads)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = conv_input_grad(
                c, m, layer.g_bits, p, ctx.s, layer.w_bits, layer.stride, layer.padding,
                q.shape[2:], ctx.threads,
            )  # fmt: skip
            dx = torch.from_numpy(dx)
        if ctx.needs_input_grad[1]:
            dw = conv_weight_grad(
                c, m, layer.g_bits, q, layer.a_bits, layer.stride, layer.padding, p.shape[2:],
                ctx.threads, ctx.factor,
            )  # fmt: skip
            dw = torch.from_numpy(dw).reshape(ctx.wq_shape)
        return dx, dw, None, None, None, None, None


def _check_gradient(ctx, dy: Tensor) -> None:
    """The gradient must be the one the layer's GradQuant passed back (module docstring)."""
    passed, ctx.passed.grad = ctx.passed.grad, None
    gq = ctx.layer.grad_quant
    if torch.is_grad_enabled():
        raise RuntimeError(
            "a gradient of a gradient (create_graph=True) through the int engine's layers: "
            "their integer products are not differentiable; use set_engine(model, 'torch')"
        )
    if passed is not dy:
        raise RuntimeError(
            f"the int engine's conv before {gq!r} got a gradient that did not come through that "
            "GradQuant alone (its output used elsewhere too, a GradQuant not applied to it "
            "directly as gq(conv(x)), or a module hook between them): f_g would quantize what "
            "the torch engine does not; use set_engine(model, 'torch') for this model"
        )


def _geometry(module: nn.Module) -> tuple[int, int] | str:
    """(stride, padding) of a conv the integer path (or the float first layer's) runs, or why
    it cannot."""
    if isinstance(module, nn.Linear):
        return 1, 0
    if module.groups != 1 or tuple(module.dilation) != (1, 1):
        return "groups or dilation"
    stride, padding = tuple(module.stride), module.padding
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same" and all(k % 2 for k in module.kernel_size):  # stride 1 (torch's rule)
        padding = tuple(k // 2 for k in module.kernel_size)
    if isinstance(padding, str) or len(set(stride)) != 1 or len(set(padding)) != 1:
        return "asymmetric stride or padding"
    if module.padding_mode != "zeros":
        return f"padding mode {module.padding_mode}"
    return stride[0], padding[0]


def _pairs(model: nn.Module):
    """(name, QConv2d/QLinear, the GradQuant registered right after it in the same parent, the
    module registered right before it or None)."""
    from .nn import QConv2d, QLinear

    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if isinstance(child, QConv2d | QLinear):
                after = children[i + 1][1] if i + 1 < len(children) else None
                before = children[i - 1][1] if i > 0 else None
                full = f"{parent_name}.{name}" if parent_name else name
                yield full, child, after if isinstance(after, GradQuant) else None, before


def _dropout_factor(module: nn.Module | None) -> float:
    """1 / (1 - p) of a Dropout (what it multiplies kept elements by in training), else 1."""
    if isinstance(module, nn.Dropout) and 0 < module.p < 1:
        return 1.0 / (1.0 - module.p)
    return 1.0


def set_engine(model: nn.Module, engine: str, bits: Bits | None = None) -> dict[str, str]:
    """Run ``model``'s quantized layers on ``engine`` ("int" or "torch"); returns, per
    QConv2d/QLinear, "int" or "torch: <why>". ``bits`` (default: ``model.bits``, else the bits
    of the model's ActQuant modules where they all have the same) gives the activation bits A
    of the layers' inputs."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    from .nn import ActQuant

    bits = Bits.parse(bits) if bits is not None else getattr(model, "bits", None)
    a_bits = bits.a if bits is not None else _activation_bits(model)
    report = {}

    for module in model.modules():
        if isinstance(module, ActQuant):
            module.emit_codes = engine == "int"
    set_pools(model, engine)
    set_batch_norms(model, engine)
    for name, module, gq, before in _pairs(model):
        module.int_engine = None
        if gq is not None:
            gq.fused = None
        if engine == "torch":
            report[name] = "torch"
            continue
        why = _refusal(module, gq, a_bits)
        geometry = _geometry(module) if why and float_conv_fits(module) else None
        if isinstance(geometry, tuple) and geometry[0] == 1:  # a float first layer, stride 1:
            module.int_engine = FloatConvLayer(geometry[1])  # its forward on our float kernel
            report[name] = f"torch: {why}; the forward on the float conv kernel"
            continue
        if why:
            report[name] = f"torch: {why}"
            continue
        stride, padding = _geometry(module)
        layer = IntLayer(a_bits, module.w_bits, gq.k, stride, padding, gq, _dropout_factor(before))
        module.int_engine, gq.fused = layer, layer
        report[name] = "int"
    return report


def _activation_bits(model: nn.Module) -> int | None:
    """The bits of the model's rounding ActQuant modules where they all have the same (a
    quantize_model network has no .bits: every layer had stayed on torch, said only in the
    returned report); None where there are none, or several."""
    from .nn import ActQuant

    ks = {m.k for m in model.modules() if isinstance(m, ActQuant) and m.quantize}
    return ks.pop() if len(ks) == 1 else None


def _refusal(module: nn.Module, gq: GradQuant | None, a_bits: int | None) -> str:
    if a_bits is None:
        return (
            "the model has no .bits and its ActQuant modules do not have one bit width; pass "
            "set_engine(model, 'int', bits=...)"
        )
    if FLOAT in (module.w_bits, a_bits) or not 1 <= module.w_bits <= 8 or a_bits > 8:
        return f"W={module.w_bits}, A={a_bits}: float weights or inputs"
    if gq is None:
        return "no GradQuant follows it"
    if gq.k == FLOAT or gq.k > 8:
        return f"G={gq.k}: a float gradient"
    if module.bias is not None:
        return "a bias (its gradient would need f_g's values)"
    geometry = _geometry(module)
    if isinstance(geometry, str):
        return geometry
    o, c = module.weight.shape[:2]
    taps = int(np.prod(module.weight.shape[2:]))
    if not fits_int32(c * taps, a_bits, module.w_bits) or not fits_int32(
        o * taps, gq.k, module.w_bits
    ):
        return "fan-in too large for int32 sums"
    return ""


def engine_summary(report: dict[str, str]) -> str:
    """One log line: how many layers run on the integer kernels, and why the others do not."""
    on_int = [k for k, v in report.items() if v == "int"]
    others = [f"{k} ({v.removeprefix('torch: ')})" for k, v in report.items() if v != "int"]
    line = f"engine int: {len(on_int)} of {len(report)} quantized layers on the integer kernels"
    return line + (f"; on torch: {', '.join(others)}" if others else "")


def use_int_engine(model: nn.Module, device: torch.device) -> str:
    """``dorefa train --engine int``: the integer path for ``model`` on ``device``; returns the
    line to log (which layers run where, and why)."""
    if device.type != "cpu":
        return (
            f"engine int: the integer kernels run on the CPU; on {device} every layer runs on "
            "the torch path"
        )
    return engine_summary(set_engine(model, "int"))
