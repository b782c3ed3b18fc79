"""DoReFa-Net quantizers (Zhou et al. 2016, arXiv:1606.06160, section 2; docs/method.md section 1).

Three maps, one per part of the (W, A, G) triple, each "off" at 32 bits:

* ``quantize_k``          the k-bit uniform quantizer on [0, 1] with a straight-through gradient;
* ``quantize_weight``     f_w, applied to the float shadow weight on every forward pass;
* ``weight_codes``        the unsigned integer codes f_w's values stand for (what export packs);
* ``quantize_activation`` f_a = quantize_k(clip(x, 0, 1));
* ``quantize_gradient``   f_g, the stochastic gradient quantizer; ``GradQuant`` applies it in the
  backward pass of an identity module.

Rounding is half-to-even (``torch.round``), as in tensorpack's reproduction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bits import FLOAT, check_bits


def _levels(k: int) -> int:
    return (1 << k) - 1


def quantize_k(x: Tensor, k: int) -> Tensor:
    r"""k-bit uniform quantizer with a straight-through gradient.

    Forward:  ``q = round((2^k - 1) * x) / (2^k - 1)``  (x is expected in [0, 1]).
    Backward: ``dq/dx = 1`` everywhere, inside and outside [0, 1] (straight-through estimator).
    ``k = 32`` is the identity.
    """
    k = check_bits(k, "k")
    if k == FLOAT:
        return x
    n = _levels(k)
    # x + (q - x).detach(): value q, gradient of x (the STE) without a custom autograd node.
    return x + (_codes(x, n) / n - x).detach()


def _check_float(t: Tensor, what: str) -> None:
    """TypeError for a tensor that is not floating point (the quantizers' arithmetic is float;
    an integer tensor had failed inside torch, or not, by bit width)."""
    if not t.is_floating_point():
        raise TypeError(f"{what} takes a floating-point tensor, got {t.dtype}: use .float()")


def _codes(x: Tensor, n: int) -> Tensor:
    """``round(n x)``: the integer code (as a float) of x in [0, 1] on n + 1 levels."""
    return torch.round(x * n)


def _tanh_unit(w: Tensor) -> Tensor:
    """``u = tanh(w) / (2 max|tanh(w)|) + 1/2`` in [0, 1], max over the whole layer
    (differentiable through tanh and the max)."""
    t = torch.tanh(w)
    return t / (2 * t.abs().max()) + 0.5


def _sign_codes(w: Tensor) -> tuple[Tensor, Tensor]:
    """1-bit f_w: ``p = [w >= 0]`` (bool; sign(0) = +1) and ``E = mean(|w|)`` (no gradient)."""
    w = w.detach()
    return w >= 0, w.abs().mean()


def quantize_weight(w: Tensor, k: int) -> Tensor:
    r"""f_w: the DoReFa weight quantizer (paper section 2.3).

    * ``k = 1``:  ``E * sign(w)`` with ``E = mean(|w|)`` over the whole layer, ``sign(0) = +1``.
      E is a constant (no gradient through it); the gradient w.r.t. w is the identity (STE).
    * ``1 < k < 32``: ``2 * quantize_k(tanh(w) / (2 * max|tanh(w)|) + 1/2) - 1``, max over the
      whole layer. The gradient flows through tanh and through the max (not detached); the
      rounding is straight-through. Levels are symmetric in [-1, 1] and exclude 0
      (k = 2 gives -1, -1/3, 1/3, 1).
    * ``k = 32``: identity.

    One scale per layer, never per channel: per-channel scales would stop bit kernels from being
    used for the backward convolution.
    """
    k = check_bits(k, "weight bits")
    _check_float(w, "f_w")
    if k == FLOAT:
        return w
    if k == 1:
        p, e = _sign_codes(w)
        q = torch.where(p, e, -e)
        return w + (q - w).detach()
    return 2 * quantize_k(_tanh_unit(w), k) - 1


def weight_codes(w: Tensor, k: int) -> tuple[Tensor, float]:
    r"""The unsigned codes p (uint8, shaped like w) of f_w(w) and the scale s such that
    ``quantize_weight(w, k) = s (2p - n)``, n = 2^k - 1 (the same float ops decide p in both):

    * ``k = 1``:      ``p = [w >= 0]``, ``s = E = mean(|w|)``;
    * ``1 < k <= 8``: ``p = round(n u)``, ``u = tanh(w) / (2 max|tanh(w)|) + 1/2``, ``s = 1/n``
      (NaN if a weight is NaN, or all are 0: then every f_w(w) is 0 / 0).

    Computed on ``w.detach()`` in w's dtype and device (export passes float32 on the CPU).
    """
    k = check_bits(k, "weight bits")
    _check_float(w, "f_w")
    if not 1 <= k <= 8:
        raise ValueError(f"weight codes exist for 1..8 weight bits (uint8), got {k}")
    if k == 1:
        p, e = _sign_codes(w)
        return p.to(torch.uint8), float(e)
    n = _levels(k)
    u = _tanh_unit(w.detach())
    # A NaN weight, or weights all 0, make every f_w NaN (max|tanh(w)| is NaN or 0), which codes
    # cannot hold: the scale carries it, as E does for k = 1 (the int engine then outputs NaN,
    # as the torch engine does).
    scale = float("nan") if bool(torch.isnan(u).any()) else 1.0 / n
    return _codes(u, n).to(torch.uint8), scale


class _ActQuantFn(torch.autograd.Function):
    """clip(x, 0, 1) then k-bit rounding, fused; backward passes the gradient where 0 <= x <= 1.
    With a list ``codes``, the uint8 codes ``round(n clip(x))`` are appended to it."""

    @staticmethod
    def forward(ctx, x: Tensor, k: int, quantize: bool, codes: list | None = None) -> Tensor:
        y = x.clamp(0, 1)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(y == x)  # 1 where 0 <= x <= 1: one pass instead of three
        if quantize:
            n = _levels(k)
            y.mul_(n).round_()
            if codes is not None:
                codes.append(y.to(torch.uint8))
            y.div_(n)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def quantize_activation(
    x: Tensor, k: int, quantize: bool = True, codes: list | None = None
) -> Tensor:
    r"""f_a: ``quantize_k(clip(x, 0, 1))`` (paper section 2.4).

    Backward: the STE through the rounding times the clip's gradient, i.e. ``1`` for
    ``0 <= x <= 1`` and ``0`` outside. ``k = 32`` gives ReLU (the unbounded activation of the
    float network). ``quantize=False`` keeps only the clip (the input of the float last layer).
    A list ``codes`` receives the uint8 codes ``round(n clip(x))`` (k < 32 and quantize only).
    """
    k = check_bits(k, "activation bits")
    _check_float(x, "f_a")
    if k == FLOAT:
        return torch.relu(x)
    return _ActQuantFn.apply(x, k, quantize, codes)


def quantize_gradient(g: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    r"""f_g, the gradient quantizer itself (paper section 2.5), applied to a tensor.

    ``f_g(dr) = 2 m [ quantize_k( clip(dr / (2m) + 1/2 + N(k), 0, 1) ) - 1/2 ]``

    with ``m = max |dr|`` over every axis but the first (batch) axis, i.e. one scale per sample,
    and ``N(k) = sigma / (2^k - 1)``, ``sigma ~ Uniform(-1/2, 1/2)`` drawn per element from
    ``generator``. This is unbiased stochastic rounding onto 2^k levels in [-m, m] (the clip,
    as in tensorpack, only acts at the extremes). A sample whose gradient is all zero gives zero
    (tensorpack divides by zero there). ``k = 32`` is the identity. A float16 or bfloat16
    ``g`` (autocast) is quantized in float32 and the result rounded back to its dtype.
    """
    k = check_bits(k, "gradient bits")
    _check_float(g, "f_g")
    if k == FLOAT:
        return g
    n = _levels(k)
    x, m = gradient_codes(g, k, generator)
    # 2m (x/n - 1/2) == x * (2m/n) - m ; an all-zero sample has m = 0 and gives exactly 0.
    return x.mul_(m * (2.0 / n)).sub_(m).to(g.dtype)


def gradient_codes(
    g: Tensor, k: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """f_g's unsigned codes and scales in one pass: ``(c, m)``, ``c`` float with integer values
    in 0..n shaped like ``g`` (``f_g(g) = (2m/n)(c - n/2)``), ``m = max|g|`` per sample shaped
    to broadcast against ``g``. The same noise draws as :func:`quantize_gradient` (which is
    this, then the affine map). A float16 or bfloat16 ``g`` (autocast) is quantized in float32:
    ``c`` and ``m`` are float32, and the codes are those of ``g.float()``."""
    n = _levels(check_bits(k, "gradient bits"))
    _check_float(g, "f_g")
    if g.dtype in _NARROW:
        # In 16-bit floats the noise is rounded away: bfloat16 keeps 8 significant bits, so
        # at 6 bits 31 + u holds u in eighths and the rounding is biased; float16 overflows
        # 2m for m > 32752 and gave wrong values, not inf.
        g = g.float()
    if g.dim() <= 1 or g.numel() == 0:  # the first axis is the batch: a 1-D g is N samples
        m = g.abs()
    else:  # max|g| per sample as max(max g, -min g): two fast reductions, no |g| temporary
        flat = g.flatten(1)  # reshape(N, -1) has no size for N = 0
        m = torch.maximum(flat.amax(1), -flat.amin(1)).view((-1,) + (1,) * (g.dim() - 1))
    inv_n = n / (2.0 * torch.where(m > 0, m, torch.ones_like(m)))
    # n * (dr/(2m) + 1/2 + (u - 1/2)/n) == g * n/(2m) + u + (n-1)/2,  u ~ U(0, 1)
    x = _uniform16(g, generator, offset=(n - 1) / 2).addcmul_(g, inv_n)  # in place: one buffer
    return x.clamp_(0, n).round_(), m


_NARROW = (torch.float16, torch.bfloat16)  # f_g computes in float32 for these (gradient_codes)


def _uniform16(like: Tensor, generator: torch.Generator | None, offset: float = 0.0) -> Tensor:
    """``offset`` + uniform noise in (0, 1) with 16-bit resolution, shaped like ``like``.

    Four noise values per 64-bit draw: on the CPU this is about 4x faster than ``torch.rand``
    (which spends one Mersenne-Twister draw per element), and the noise is most of f_g's cost.
    The values are (i + 1/2) / 2^16 for i uniform in 0..2^16-1, so the stochastic rounding is
    unbiased up to 2^-17 of one quantization step.
    """
    halves = noise_draws(like, generator).view(like.shape).to(like.dtype)  # in -2^15..2^15-1
    return halves.mul_(1.0 / 65536).add_(offset + 0.5 + 0.5 / 65536)


def noise_draws(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """The int16 draws behind :func:`_uniform16`'s noise, flat (``like.numel()``): four per
    64-bit word of ``generator``."""
    count = like.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=like.device)
    words.random_(-(2**63), 2**63 - 1, generator=generator)
    return words.view(torch.int16)[:count]


def gradient_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The noise ``sigma`` in (-1/2, 1/2) that ``quantize_gradient(like, k, generator)`` adds
    (``(i + 1/2) / 2^16 - 1/2``, exact in float32): the same draws from the same generator
    state, for specs that take the noise as an input (``dorefa.kernels.reference_grad``)."""
    return _uniform16(like, generator, offset=-0.5)


class _GradQuantFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        ctx.k = k
        ctx.generator = generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if grad.dim() == 1:  # a layer's output for an unbatched input: one sample (as N
            # samples of one element, f_g had returned it unchanged)
            return quantize_gradient(grad[None], ctx.k, ctx.generator)[0], None, None
        return quantize_gradient(grad, ctx.k, ctx.generator), None, None


class GradQuant(nn.Module):
    """Identity in the forward pass; f_g (``quantize_gradient``) in the backward pass.

    It sits right after each quantized conv/linear, so the same quantized gradient feeds both
    backward products (input gradient and weight gradient). The noise comes from ``generator``
    (a ``torch.Generator`` on the tensor's device) so that runs can be seeded; ``None`` uses
    torch's global generator.
    """

    def __init__(self, k: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.k = check_bits(k, "gradient bits")
        self.generator = generator

    fused = None  # dorefa.engine.IntLayer whose backward performs this f_g (engine "int")

    def forward(self, x: Tensor) -> Tensor:
        if self.k == FLOAT or not (torch.is_grad_enabled() and x.requires_grad):
            return x
        if self.fused is not None and (taken := self.fused.take(x)) is not None:
            return taken  # the integer layer that produced x applies f_g in its backward
        if getattr(x, "_dorefa_unbatched", False):  # a QConv2d's output for one (C, H, W)
            # image: one sample (as (C, H, W) its channels had each been a sample, a scale each)
            return _GradQuantFn.apply(x[None], self.k, self.generator)[0]
        return _GradQuantFn.apply(x, self.k, self.generator)

    def extra_repr(self) -> str:
        return f"k={self.k}"
