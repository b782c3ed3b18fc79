"""The quantized layer of the runtime: a convolution of activation codes on the integer kernels.

The kernel returns the exact signed dot D = sum (2p - nw) q of the layer (docs/method.md
section 3); the exporter folded weight scale, BatchNorm, clip and re-quantization into what
follows it (:mod:`dorefa.exporter.folding`):

- ``out='codes'``: uint8 codes ``#{j : D >= t_j}`` (direction +1) or ``#{j : D <= t_j}``
  (direction -1) per channel: the next f_a's codes, straight from the kernel;
- ``out='float'``: ``alpha * D + beta`` in float32 per channel (the layer's real output after its
  BatchNorm), then ``clip(., 0, 1)`` when ``clip`` (the input of a float classifier); with a
  residual addition fused in by the loader (``residual``), plus the node's second input.

A 1-D input (N, F) (a quantized linear layer on a vector) runs as a 1x1 conv on (N, F, 1, 1).
Imports numpy and :mod:`dorefa.kernels` only.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .ops import Layer


def _prepared(pw, x_bits, stride, padding, mode, thresholds=None, direction=None):
    """One convolution of fixed weights as a callable ``conv(x, threads)``, everything but the
    input checked once (:func:`dorefa.kernels.prepare_conv`)."""
    if mode == "requant":
        return kernels.prepare_conv(pw, x_bits, stride, padding, mode, thresholds, direction)
    return kernels.prepare_conv(pw, x_bits, stride, padding, mode)


class BitConv(Layer):
    """A quantized layer on the integer kernels; ``groups`` splits the channels (module doc)."""

    op = "bitconv"

    def __init__(
        self,
        codes: np.ndarray,
        x_bits: int,
        w_bits: int,
        stride: int,
        padding: int,
        groups: int,
        out: str,
        out_bits: int | None = None,
        thresholds: np.ndarray | None = None,
        direction: np.ndarray | None = None,
        alpha: np.ndarray | None = None,
        beta: np.ndarray | None = None,
        clip: bool = True,
    ):
        if codes.shape[0] % groups:  # the loader checks it too; BitConv is public
            raise ValueError(f"{codes.shape[0]} output channels do not split into {groups} groups")
        self.shape = codes.shape  # (O, C/groups, KH, KW)
        self.fan_in = codes[0].size  # MACs per output value
        self.x_bits, self.w_bits, self.stride, self.padding = x_bits, w_bits, stride, padding
        self.groups, self.out, self.out_bits, self.clip = groups, out, out_bits, clip
        self.residual = False  # a following add fused in (set by the loader): run(x, r)
        og = codes.shape[0] // groups
        self.packed = [
            kernels.pack_weights(np.ascontiguousarray(codes[g * og : (g + 1) * og]), w_bits)
            for g in range(groups)
        ]
        sl = [slice(g * og, (g + 1) * og) for g in range(groups)]
        if out == "codes":
            self.convs = [
                _prepared(pw, x_bits, stride, padding, "requant", thresholds[s], direction[s])
                for pw, s in zip(self.packed, sl, strict=True)
            ]
        else:
            self.alpha = np.ascontiguousarray(alpha, np.float32).reshape(-1)
            self.beta = np.ascontiguousarray(beta, np.float32).reshape(-1)
            self.convs = [_prepared(pw, x_bits, stride, padding, "signed") for pw in self.packed]

    def run(self, xs, threads):  # (x, the residual added to the float output)
        return self.forward(xs[0], threads, xs[1])

    def forward(self, x, threads, residual=None):
        if x.ndim == 2:
            x = x.reshape(*x.shape, 1, 1)
        if self.groups == 1:
            y = self.convs[0](x, threads)
        else:
            cg = self.shape[1]
            if x.shape[1] != cg * self.groups:  # a slice per group would drop the rest
                raise ValueError(
                    f"x has {x.shape[1]} channels but this convolution takes {cg} x "
                    f"{self.groups} groups = {cg * self.groups}"
                )
            outs = [
                conv(np.ascontiguousarray(x[:, g * cg : (g + 1) * cg]), threads)
                for g, conv in enumerate(self.convs)
            ]
            y = np.concatenate(outs, axis=1)
        if self.out == "float":  # float32(float32(D) * alpha) + beta [clipped] [+ r], one pass
            y = kernels.scale_int_float(y, self.alpha, self.beta, self.clip, threads, residual)
        return y

    def describe(self):
        o, c, kh, kw = self.shape
        g = f" groups {self.groups}" if self.groups > 1 else ""
        if self.out == "codes":
            out = f"{self.out_bits}-bit codes"
        else:
            out = "float clip[0,1]" if self.clip else "float (scale + BN)"
            out += " + residual add (fused)" if self.residual else ""
        return (
            f"bitconv {c * self.groups}->{o} {kh}x{kw} /{self.stride} pad {self.padding}{g} "
            f"W{self.w_bits} A{self.x_bits} -> {out}"
        )
