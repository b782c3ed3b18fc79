"""The int engine's float convolution: a network's first layer keeps float weights (W = 32),
so it is not one of the integer products, yet torch's convolution of one input channel is
slow: svhn's 1->48 5x5 layer took 15.8 ms forward at batch 128 on one thread (Sapphire Rapids
class, the int engine's step 210 ms).

Where the backend in force is AVX-512 and the kernel 3x3 or 5x5 (up to 4 input channels), the
forward and the weight and bias gradients run on the training kernels of
``csrc/conv_float_train.h`` (``conv_float_train_forward``, ``conv_float_weight_grad``): float32
sums in another order than torch's, within its rounding. svhn's layer at batch 128 on one Zen 4
thread: forward 4.6 ms (the runtime's kernel below 9.7), weight and bias gradients 4.85 ms
(torch's ``conv2d_weight`` 8.3 ms and ``dy.sum`` 1.7 ms). Elsewhere the forward runs on the
runtime's float first-layer kernel (:func:`dorefa.kernels.conv_float`, ``csrc/conv_float.h``:
the same products summed in another order, within float32 rounding of torch's; on svhn's layer
the two agreed to the bit) and the gradients are torch's own, as the input's gradient
(``conv2d_input``) wherever one is needed.

Only first layers (up to 4 input channels), stride 1, groups 1, dilation 1, zero padding equal
on all sides (the kernel's strided paths use Winograd transforms, whose rounding differs
more); a call runs torch's convolution
when its input is not a float32 (N, C, H, W) CPU tensor, is empty, or autocast is on.
:func:`dorefa.engine.set_engine` puts it on the float convs of a model for the int engine.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight

from .bits import FLOAT


def float_conv_fits(module: nn.Module) -> bool:
    """True for a float-weight QConv2d on an image (at most 4 input channels: the layer the
    kernel is built for; a float network's inner layers stay on torch's convolution). Its
    geometry is checked by :func:`dorefa.engine.set_engine` (stride 1, as the engine's
    ``_geometry`` reads it)."""
    return (
        isinstance(module, nn.Conv2d)
        and getattr(module, "w_bits", None) == FLOAT
        and module.in_channels <= 4
    )


class _FloatConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        w = weight.detach().contiguous().numpy()
        b = bias.detach().numpy() if bias is not None else np.zeros(w.shape[0], np.float32)
        xn = x.detach().contiguous().numpy()
        y = forward_output(xn, w, b, padding, torch.get_num_threads())
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = conv2d_input(x.shape, weight, dy, padding=ctx.padding)
        want_db = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1]:
            dw, db = param_grads(x, dy, weight.shape, ctx.padding, want_db)
            if dw.stride() != weight.stride():  # torch's layout contract (DDP's buckets)
                dw = torch.empty_like(weight).copy_(dw)
        elif want_db:
            db = dy.sum((0, 2, 3))
        return dx, dw, db, None


def _native_training() -> bool:
    """True where the training kernels of ``csrc/conv_float_train.h`` may run: the extension
    is there and the backend in force is AVX-512 (they decline other CPUs and shapes)."""
    from .kernels.extension import native
    from .kernels.selection import backend_of, current_kernel

    return native is not None and backend_of(current_kernel()) == "avx512"


def forward_output(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, padding: int, threads: int
) -> np.ndarray:
    """A stride-1 float conv's output (float32 x, w, b) as the int engine computes it: on
    ``conv_float_train_forward`` where it runs, else on :func:`dorefa.kernels.conv_float`."""
    from . import kernels
    from .kernels.extension import native

    y = native.conv_float_train_forward(x, w, b, padding, threads) if _native_training() else None
    return y if y is not None else kernels.conv_float(x, w, b, 1, padding, threads)


def param_grads(
    x: Tensor, dy: Tensor, shape: torch.Size, padding: int, bias: bool
) -> tuple[Tensor, Tensor | None]:
    """(dW, db, None without ``bias``) of a stride-1 float conv as the int engine computes
    them: on ``conv_float_weight_grad`` where it runs, else torch's ``conv2d_weight`` and
    ``dy.sum``."""
    from .kernels.extension import native

    sums = None
    if _native_training() and dy.dtype == torch.float32:
        sums = native.conv_float_weight_grad(
            x.detach().contiguous().numpy(),
            dy.detach().contiguous().numpy(),
            *shape[2:],
            padding,
            bias,
            torch.get_num_threads(),
        )
    if sums is None:
        return conv2d_weight(x, shape, dy, padding=padding), dy.sum((0, 2, 3)) if bias else None
    dw, db = sums
    return torch.from_numpy(dw), None if db is None else torch.from_numpy(db)


class FloatConvLayer:
    """``module.int_engine`` of a float conv (:func:`float_conv_fits`, stride 1, ``padding`` on
    every side): :meth:`run` is its output on the float kernel, or None (then the module runs
    torch's convolution)."""

    def __init__(self, padding: int) -> None:
        self.padding = padding

    def run(self, module: nn.Module, x: Tensor) -> Tensor | None:
        from .kernels.extension import native

        usable = (
            native is not None
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and module.weight.dtype == torch.float32
            and x.dim() == 4
            and x.numel() > 0
            and not torch.is_autocast_enabled("cpu")
        )
        if not usable:
            return None
        return _FloatConvFn.apply(x, module.weight, module.bias, self.padding)
