"""The int engine's BatchNorm2d in training mode: torch's CPU kernel took ~28 ms (forward and
backward) of a 167 ms svhn step at batch 128 on one thread (Sapphire Rapids class), the
library's (``csrc/bn_train.h``) three passes forward and two backward over channels split
among the threads. The same formulas, the sums in another order (float32 within a plane or a
block of 32 samples, float64 across):
within float32 rounding of torch's, not bit for bit. The running statistics are updated as
torch does (``momentum``, the unbiased variance). :func:`dorefa.engine.set_engine` switches a
model's ``nn.BatchNorm2d`` modules to :class:`IntBatchNorm2d` for the int engine and back; in
eval mode, without affine parameters or running statistics, with ``momentum=None`` (the
cumulative average), for batches of one value a channel, and for any other input than a
float32 CPU (N, C, H, W) tensor, torch's own code runs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


class _BatchNormTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float, out: list) -> Tensor:
        from .kernels.extension import native

        xn = x.detach().contiguous()
        w = weight.detach().contiguous()
        y, mean, var, invstd = native.batch_norm_train(
            xn.numpy(), w.numpy(), bias.detach().contiguous().numpy(), eps, torch.get_num_threads()
        )
        ctx.save_for_backward(x, weight)  # x itself, as torch's kernel keeps it (engine.py's
        # check that an integer conv's output goes straight to its GradQuant relies on that)
        ctx.mean, ctx.invstd = mean, invstd
        out.append((mean, var))
        return torch.from_numpy(y)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        from .kernels.extension import native

        x, w = (t.detach().contiguous() for t in ctx.saved_tensors)
        dx, dw, db = native.batch_norm_train_backward(
            x.numpy(),
            dy.contiguous().numpy(),
            w.numpy(),
            ctx.mean,
            ctx.invstd,
            torch.get_num_threads(),
        )
        return torch.from_numpy(dx), torch.from_numpy(dw), torch.from_numpy(db), None, None


class IntBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the native training kernel (see the module)."""

    def forward(self, x: Tensor) -> Tensor:
        from .kernels.extension import native

        usable = (
            native is not None
            and self.training
            and self.affine
            and self.track_running_stats
            and self.momentum is not None
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.dim() == 4
            and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and not torch.is_autocast_enabled("cpu")
        )
        if not usable:
            return super().forward(x)
        out: list = []
        y = _BatchNormTrain.apply(x, self.weight, self.bias, self.eps, out)
        mean, var = out[0]
        m = x.shape[0] * x.shape[2] * x.shape[3]
        with torch.no_grad():
            mom = self.momentum
            self.running_mean.mul_(1 - mom).add_(torch.from_numpy(mean).float(), alpha=mom)
            unbiased = torch.from_numpy(var * (m / (m - 1))).float()
            self.running_var.mul_(1 - mom).add_(unbiased, alpha=mom)
            self.num_batches_tracked.add_(1)
        return y


def set_batch_norms(model: nn.Module, engine: str) -> int:
    """Every ``nn.BatchNorm2d`` of ``model`` (not subclasses) to :class:`IntBatchNorm2d` for the
    int engine, and back for the torch engine; returns how many were switched."""
    from .engine_pool import switch_modules

    return switch_modules(model, nn.BatchNorm2d, IntBatchNorm2d, engine)
