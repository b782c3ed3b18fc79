"""Argument checks of the float entry points (conv_float, linear_float, the pools, quantize and
affine): made in Python before any path runs, so the reference path refuses what the native
ones refuse (a hostile review found it computing a conv whose weight had more channels than x,
a bias of the wrong length, and a pool wider than its input) and each error says what to fix.
The native bindings keep their own checks (bindings_checks.h)."""

from __future__ import annotations

import numpy as np

from ..geometry import conv_out_size


def float_array(name: str, a: object, ndim: int | None = None, layout: str = "") -> np.ndarray:
    """``a`` as a C-contiguous float32 array of ``ndim`` dimensions: numbers only (a string,
    object, bool or complex array had been cast, or half-cast with a warning)."""
    if (  # the runtime's own calls: nothing to convert (kept cheap, a few calls an image)
        type(a) is np.ndarray
        and a.dtype == np.float32
        and a.flags.c_contiguous
        and (ndim is None or a.ndim == ndim)
    ):
        return a
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float32), got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {layout or f'{ndim}-D'}, got shape {arr.shape}")
    return np.ascontiguousarray(arr, np.float32)


def check_window(what: str, size: tuple[int, int], kernel: tuple[int, int], padding: int) -> None:
    """A window of ``kernel`` (KH, KW) fits the padded map of ``size`` (H, W)."""
    (h, w), (kh, kw) = size, kernel
    if kh > h + 2 * padding or kw > w + 2 * padding:
        raise ValueError(
            f"the {what} {kh}x{kw} is larger than its input {h}x{w} with padding {padding}: "
            f"give an input of at least {max(kh - 2 * padding, 1)}x{max(kw - 2 * padding, 1)}"
        )


def conv_operands(
    x: object, weight: object, bias: object, padding: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (N, C, H, W), weight (O, C, KH, KW) and bias (O,) as float32 arrays that fit each
    other, the kernel inside the padded input."""
    x = float_array("x", x, 4, "(N, C, H, W)")
    weight = float_array("weight", weight, 4, "(O, C, KH, KW)")
    bias = float_array("bias", bias)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight {weight.shape} takes {weight.shape[1]} input channels but x {x.shape} has "
            f"{x.shape[1]}"
        )
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must hold one value per output channel ({weight.shape[0]},), "
                         f"got shape {bias.shape}")  # fmt: skip
    check_window("kernel", x.shape[2:], weight.shape[2:], padding)
    return x, weight, bias


def conv_output_hw(x: np.ndarray, weight: np.ndarray, stride: int, padding: int):
    """(OH, OW) of the conv of x (N, C, H, W) by weight (O, C, KH, KW)."""
    (h, w), (kh, kw) = x.shape[2:], weight.shape[2:]
    return conv_out_size(h, kh, stride, padding), conv_out_size(w, kw, stride, padding)


def conv_pool_fits(x: np.ndarray, weight: np.ndarray, stride: int, padding: int, pool: int):
    """The fused first layer's ``pool`` x ``pool`` max-pool fits the conv's output."""
    oh, ow = conv_output_hw(x, weight, stride, padding)
    if pool > min(oh, ow):
        raise ValueError(f"pool {pool} is larger than the conv output {oh}x{ow}")


def linear_operands(
    x: object, weight: object, bias: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (N, K), weight (O, K) and bias (O,) as float32 arrays that fit each other."""
    x = float_array("x", x, 2, "(N, K)")
    weight = float_array("weight", weight, 2, "(O, K)")
    bias = float_array("bias", bias)
    if weight.shape[1] != x.shape[1] or bias.shape != (weight.shape[0],):
        raise ValueError(
            f"x (N, K), weight (O, K) and bias (O,) must agree, got x {x.shape}, weight "
            f"{weight.shape} and bias {bias.shape}"
        )
    return x, weight, bias
