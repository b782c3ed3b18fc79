"""The runtime's operations: one class per node op of a ``.dorefa`` graph.

Values flowing between nodes are float32 maps (N, C, H, W) / vectors (N, F), or uint8
activation codes q of k-bit f_a outputs (the activation is q / (2^k - 1), docs/method.md
section 3). ``run(inputs, threads)`` maps the node's input batches to its output batch and never
writes into an input. Imports numpy and :mod:`dorefa.kernels` only (never torch).
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels


def _windows(x: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """(N, C, H', W', KH, KW) view of the receptive fields of an already padded x."""
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return win[:, :, ::stride, ::stride]


class Layer:
    """One node of the network: ``name``, ``inputs`` (value names), ``source`` (the torch module
    whose output this node reproduces, if the exporter recorded it)."""

    op = "?"
    name = ""
    inputs: tuple[str, ...] = ()
    source: str | None = None
    fan_in = 0  # multiply-accumulates per output value (convolutions, linear layers)

    def forward(self, x: np.ndarray, threads: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def run(self, xs: list[np.ndarray], threads: int) -> np.ndarray:
        return self.forward(xs[0], threads)

    def describe(self) -> str:
        return self.op


COLS_BYTES = 64 << 20  # FloatConv's GEMM path: im2col columns held at once (by images)


class FloatConv(Layer):
    """A float conv with bias (the first layer).

    When the loader fuses the following max-pool and quantize into it (``pool``, ``bits``),
    the whole step is one call of :func:`dorefa.kernels.conv_float_quantize` (float64
    accumulation, float32 pool/bias/clip/round) that returns the codes directly. With a float
    output it is :func:`dorefa.kernels.conv_float`, with a following max-pool of any window
    fused in when the loader found one (``maxpool = (k, s, p)``: ResNet's stem and its 3x3/2
    pool); a fused k x k / k pool with a float output and no quantize takes im2col + one float32
    GEMM per pool phase."""

    op = "conv_float"

    def __init__(self, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int):
        self.weight, self.bias, self.stride, self.padding = weight, bias, stride, padding
        self.pool = 1  # a following k x k / k max-pool fused in (set by the loader)
        self.bits = None  # a following quantize fused in (set by the loader): output codes
        self.maxpool = None  # (k, s, p) of a following max-pool fused in, float output
        o = weight.shape[0]
        self.fan_in = weight[0].size  # MACs per output value
        self.wmat = np.ascontiguousarray(weight.reshape(o, -1))  # (O, C*KH*KW)
        self.bias_col = np.ascontiguousarray(bias.reshape(o, 1))

    def forward(self, x, threads):
        if self.bits is not None:
            return kernels.conv_float_quantize(
                x, self.weight, self.bias, self.stride, self.padding, self.pool, self.bits, threads
            )
        if self.pool == 1:  # float output (ResNet's stem): the kernel's direct conv
            return kernels.conv_float(
                x, self.weight, self.bias, self.stride, self.padding, threads, self.maxpool
            )
        n, c, h, w = x.shape
        _, _, kh, kw = self.weight.shape
        p, k = self.padding, self.pool
        # the columns (and the GEMM's output) of at most COLS_BYTES at once, by images: conv
        # 3->32 7x7 + pool 2 at 128x128, batch 64, had taken 979 MB for 12 MB of input
        per_image = 4 * (c * kh * kw + self.wmat.shape[0]) * ((h + 2 * p) * (w + 2 * p))
        step = max(1, COLS_BYTES // max(per_image, 1))
        if n > step:
            parts = [self.forward(x[i : i + step], threads) for i in range(0, n, step)]
            return np.concatenate(parts)
        if p:
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        win = _windows(x, kh, kw, self.stride)  # (N, C, H', W', KH, KW)
        ho, wo = win.shape[2] // k, win.shape[3] // k
        # columns grouped by pool phase (a, b): (N, k*k, C*KH*KW, ho*wo); the GEMM's output is
        # then NCHW per phase, and the max-pool is k*k - 1 elementwise maxima of whole blocks
        cols = win[:, :, : ho * k, : wo * k].reshape(n, c, ho, k, wo, k, kh, kw)
        cols = cols.transpose(0, 3, 5, 1, 6, 7, 2, 4).reshape(n, k * k, c * kh * kw, ho * wo)
        y = np.matmul(self.wmat, cols)  # (N, k*k, O, ho*wo)
        out = y[:, 0]
        for t in range(1, k * k):
            np.maximum(out, y[:, t], out=out)
        out += self.bias_col  # max(y + b) = max(y) + b per channel
        return out.reshape(n, self.wmat.shape[0], ho, wo)  # no -1: N may be 0

    def describe(self):
        o, c, kh, kw = self.weight.shape
        pool = f" + maxpool {self.pool}x{self.pool} /{self.pool} (fused)" if self.pool > 1 else ""
        if self.maxpool is not None:
            k, s, p = self.maxpool
            pool = f" + maxpool {k}x{k} /{s} pad {p} (fused)"
        quant = f" + quantize -> {self.bits}-bit codes (fused)" if self.bits is not None else ""
        return (
            f"conv_float {c}->{o} {kh}x{kw} /{self.stride} pad {self.padding} "
            f"(float32, bias){pool}{quant}"
        )


class Quantize(Layer):
    """f_a on a float map: codes ``round(clip(x, 0, 1) * (2^k - 1))``, half to even as torch."""

    op = "quantize"

    def __init__(self, bits: int):
        self.bits = bits

    def forward(self, x, threads):
        return kernels.quantize_float(x, self.bits, threads)  # torch's float32 ops, one pass

    def describe(self):
        return f"quantize -> {self.bits}-bit codes"


class Dequantize(Layer):
    """k-bit codes back to the activation values ``q / (2^k - 1)`` in float32 (torch's f_a
    computes ``round(x n) / n`` in float32: the same number)."""

    op = "dequantize"

    def __init__(self, bits: int):
        self.bits = bits
        self.n = np.float32((1 << bits) - 1)

    def forward(self, x, threads):
        return x.astype(np.float32) / self.n

    def describe(self):
        return f"dequantize {self.bits}-bit codes -> float32"


class Affine(Layer):
    """Per-channel ``x * scale + shift`` in float32 (an eval BatchNorm on a float value); with a
    following quantize fused in by the loader (``bits``), that quantize's codes, one pass."""

    op = "affine"

    def __init__(self, scale: np.ndarray, shift: np.ndarray):
        self.scale = np.ascontiguousarray(scale, np.float32).reshape(-1)
        self.shift = np.ascontiguousarray(shift, np.float32).reshape(-1)
        self.bits = None  # a following quantize fused in (set by the loader): output codes

    def forward(self, x, threads):
        if self.bits is not None:
            return kernels.affine_quantize_float(x, self.scale, self.shift, self.bits, threads)
        return kernels.affine_float(x, self.scale, self.shift, threads)

    def describe(self):
        quant = f" + quantize -> {self.bits}-bit codes (fused)" if self.bits is not None else ""
        return f"affine {self.scale.size} channels (float32 BatchNorm){quant}"


class Clip(Layer):
    """``clip(x, 0, 1)`` in float32 (f_a without rounding, before a float layer)."""

    op = "clip"

    def forward(self, x, threads):
        return np.clip(x, np.float32(0), np.float32(1))


class Add(Layer):
    """Elementwise sum of two float32 values (a residual addition)."""

    op = "add"

    def run(self, xs, threads):
        return xs[0] + xs[1]


class Concat(Layer):
    """Channel concatenation of values of one kind (float32, or codes of one bit width)."""

    op = "concat"

    def forward(self, x, threads):  # one input (``torch.cat([x], 1)``): a copy
        return self.run([x], threads)

    def run(self, xs, threads):
        return np.concatenate(xs, axis=1)


class MaxPool(Layer):
    """Max-pool of codes (padding = code 0, below or equal to every real code, and torch's
    padding never fills a whole window) or of floats (padding = -inf)."""

    op = "maxpool"

    def __init__(self, kernel: int, stride: int, padding: int):
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x, threads):
        k, s, p = self.kernel, self.stride, self.padding
        if x.dtype == np.uint8:
            return kernels.maxpool_codes(x, k, s, p, threads)
        return kernels.maxpool_float(x, k, s, p, threads)

    def describe(self):
        return f"maxpool {self.kernel}x{self.kernel} /{self.stride} pad {self.padding}"


class AvgPool(Layer):
    """Average pool of a float32 map: ``sum of the k x k window / k^2`` (zero padding counted,
    as torch's default ``count_include_pad=True``)."""

    op = "avgpool"

    def __init__(self, kernel: int, stride: int, padding: int):
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x, threads):
        return kernels.avgpool_float(x, self.kernel, self.stride, self.padding, threads)

    def describe(self):
        return f"avgpool {self.kernel}x{self.kernel} /{self.stride} pad {self.padding}"


class GlobalAvgPool(Layer):
    """Mean over H x W of a float32 map: (N, C, H, W) -> (N, C, 1, 1)."""

    op = "global_avgpool"

    def forward(self, x, threads):
        return x.mean(axis=(2, 3), dtype=np.float32, keepdims=True)


class Flatten(Layer):
    op = "flatten"

    def forward(self, x, threads):
        return x.reshape(len(x), math.prod(x.shape[1:]))  # -1 is ambiguous for an empty batch


class Linear(Layer):
    """A float linear layer: ``x @ W.T + b`` in float32 (the kernels' linear_float: no BLAS)."""

    op = "linear_float"

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight = np.ascontiguousarray(weight, np.float32)
        self.bias = np.ascontiguousarray(bias, np.float32)
        self.fan_in = weight.shape[1]  # MACs per output value

    def forward(self, x, threads):
        return kernels.linear_float(x, self.weight, self.bias, threads)

    def describe(self):
        o, i = self.weight.shape
        return f"linear_float {i}->{o} (float32, bias)"
