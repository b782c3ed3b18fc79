"""The int engine's max-pool: torch's ``max_pool2d`` on float32 NCHW took 54 ms forward for
svhn's first pool at batch 128 on one thread (Zen 4; 6 ms on a channels-last copy), more than
the integer forward products of all six quantized convs together. For non-overlapping windows
(kernel = stride, no padding, dilation 1, floor mode: every pool of the registered models) the
native kernel (``csrc/pool_train.h``) gives torch's results bit for bit: the same maxima, the
same window position for ties (the first maximum; NaN wins) and so the same gradient
(``dx = 0 + dy`` at that position, 0 elsewhere). :func:`dorefa.engine.set_engine` switches a
model's ``nn.MaxPool2d`` modules to :class:`IntMaxPool2d` for the int engine and back; any other
pool, input or device runs torch's own code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _window(module: nn.MaxPool2d) -> int | None:
    """The window k when ``module`` pools non-overlapping k x k windows, else None."""

    def square(v):
        v = tuple(v) if isinstance(v, tuple | list) else (v, v)
        return v[0] if len(v) == 2 and v[0] == v[1] else None

    k, s = square(module.kernel_size), square(module.stride or module.kernel_size)
    plain = square(module.padding) == 0 and square(module.dilation) == 1
    if k is None or k != s or not 1 <= k <= 15 or not plain:
        return None
    return None if module.ceil_mode or module.return_indices else k


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: int) -> Tensor:
        from .kernels.extension import native

        threads = torch.get_num_threads()
        y, pos = native.maxpool_train(x.detach().contiguous().numpy(), k, threads)
        ctx.pos, ctx.k, ctx.hw, ctx.threads = pos, k, tuple(x.shape[2:]), threads
        return torch.from_numpy(y)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        from .kernels.extension import native

        h, w = ctx.hw
        dy = dy.contiguous().numpy()
        dx = native.maxpool_train_backward(dy, ctx.pos, h, w, ctx.k, ctx.threads)
        return torch.from_numpy(dx), None


class IntMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with the native kernel where it gives torch's bits (see the module)."""

    def forward(self, x: Tensor) -> Tensor:
        from .kernels.extension import native

        k = _window(self)
        usable = native is not None and x.device.type == "cpu" and x.dtype == torch.float32
        if k is None or not usable or x.dim() != 4 or min(x.shape[2:]) < k or x.numel() == 0:
            return super().forward(x)
        return _MaxPool.apply(x, k)


def switch_modules(model: nn.Module, plain: type, native: type, engine: str) -> int:
    """Every module of ``model`` of exactly class ``plain`` (or ``native``, its int-engine
    subclass) to ``native`` for the int engine, and back to ``plain`` for the torch engine;
    returns how many were switched (the state dicts do not change)."""
    count = 0
    for module in model.modules():
        if type(module) in (plain, native):
            module.__class__ = native if engine == "int" else plain
            count += 1
    return count


def set_pools(model: nn.Module, engine: str) -> int:
    """Every ``nn.MaxPool2d`` of ``model`` (not subclasses) to :class:`IntMaxPool2d` for the int
    engine, and back for the torch engine; returns how many were switched."""
    return switch_modules(model, nn.MaxPool2d, IntMaxPool2d, engine)
