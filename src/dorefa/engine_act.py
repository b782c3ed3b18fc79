"""The int engine's f_a: :func:`dorefa.quantizers.quantize_activation` (clip to [0, 1], k-bit
rounding, the straight-through gradient inside [0, 1]) in one native pass each way
(``csrc/act_train.h``), bit for bit: torch's ops took seven passes over svhn's maps (clamp,
the mask, the multiply, the rounding, the uint8 codes, the division, and the engine's NaN
check), ~18 ms forward and ~8 ms backward of a 210 ms step at batch 128 on one thread
(Sapphire Rapids class). The forward also gives the uint8 codes the next integer layer reads
and whether a NaN was seen (then the output is not tagged with codes: the layer it feeds checks
and falls back to torch, which propagates the NaN). Float32 CPU tensors only; anything else
runs :func:`quantize_activation`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _ActQuantTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: int, out: list) -> Tensor:
        from .kernels.extension import native

        xn = x.detach().contiguous()
        y, codes, nan = native.act_quant_train(xn.numpy(), k, torch.get_num_threads())
        ctx.save_for_backward(xn)
        out.append((codes, nan))
        return torch.from_numpy(y)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        from .kernels.extension import native

        (x,) = ctx.saved_tensors
        dx = native.act_quant_train_backward(
            x.numpy(), dy.contiguous().numpy(), torch.get_num_threads()
        )
        return torch.from_numpy(dx), None, None


def act_quant_train(x: Tensor, k: int) -> tuple[Tensor, Tensor | None] | None:
    """``(y, codes)`` of f_a with k < 32 bits on the native pass (codes None when x holds a
    NaN), or None where it does not apply (no extension, not a float32 CPU tensor)."""
    from .kernels.extension import native

    if native is None or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    out: list = []
    y = _ActQuantTrain.apply(x, k, out)
    codes, nan = out[0]
    return y, None if nan else torch.from_numpy(codes)
