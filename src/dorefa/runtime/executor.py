"""Executes a ``.dorefa`` file: float first layer, popcount middle layers, float classifier.

Between the first and the last layer, activations are uint8 codes (docs/method.md section 3): each
quantized layer is one call of :func:`dorefa.kernels.bitconv2d_requant`, whose integer
thresholds (made by :mod:`dorefa.export`) fold the weight scale, BatchNorm, clip and
re-quantization. The last quantized layer instead returns ``clip(alpha * D + beta, 0, 1)`` in
float32 for the float classifier. Imports numpy and :mod:`dorefa.kernels` only (never torch).
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..geometry import INT32_MAX, accumulator_bound, conv_out_size, fits_int32
from .format import FormatError, Reader

MAX_ELEMENTS = 1 << 26  # per image, per layer: refuse headers describing absurd activations
MAX_DIM = 1 << 16


def _is_dims(v: object, n: int) -> bool:
    """Whether `v` (from a file's JSON) is a list of `n` ints, each in 1..MAX_DIM."""
    return (
        isinstance(v, list)
        and len(v) == n
        and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM for d in v)
    )


def _windows(x: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """(N, C, H', W', KH, KW) view of the receptive fields of an already padded x."""
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return win[:, :, ::stride, ::stride]


class Layer:
    """One step of the network; ``forward(x, threads)`` maps a batch to a batch."""

    op = "?"

    def forward(self, x: np.ndarray, threads: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return self.op


class FloatConv(Layer):
    """The float first layer: conv with bias on the raw image, im2col + one float32 GEMM.

    When the loader fuses the following max-pool and quantize into it (``pool``, ``bits``),
    the whole step is one call of :func:`dorefa.kernels.conv_float_quantize` (float64
    accumulation, float32 pool/bias/clip/round) that returns the codes directly."""

    op = "conv_float"

    def __init__(self, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int):
        self.weight, self.bias, self.stride, self.padding = weight, bias, stride, padding
        self.pool = 1  # a following k x k / k max-pool fused in (set by the loader)
        self.bits = None  # a following quantize fused in (set by the loader): output codes
        o = weight.shape[0]
        self.wmat = np.ascontiguousarray(weight.reshape(o, -1))  # (O, C*KH*KW)
        self.bias_col = np.ascontiguousarray(bias.reshape(o, 1))

    def forward(self, x, threads):
        if self.bits is not None:
            return kernels.conv_float_quantize(
                x, self.weight, self.bias, self.stride, self.padding, self.pool, self.bits, threads
            )
        n, c, h, w = x.shape
        _, _, kh, kw = self.weight.shape
        p, k = self.padding, self.pool
        if p:
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        win = _windows(x, kh, kw, self.stride)  # (N, C, H', W', KH, KW)
        ho, wo = win.shape[2] // k, win.shape[3] // k
        # columns grouped by pool phase (a, b): (N, k*k, C*KH*KW, ho*wo); the GEMM's output is
        # then NCHW per phase, and the max-pool is k*k - 1 elementwise maxima of whole blocks
        cols = win.reshape(n, c, ho, k, wo, k, kh, kw).transpose(0, 3, 5, 1, 6, 7, 2, 4)
        cols = cols.reshape(n, k * k, c * kh * kw, ho * wo)
        y = np.matmul(self.wmat, cols)  # (N, k*k, O, ho*wo)
        out = y[:, 0]
        for t in range(1, k * k):
            np.maximum(out, y[:, t], out=out)
        out += self.bias_col  # max(y + b) = max(y) + b per channel
        return out.reshape(n, -1, ho, wo)

    def describe(self):
        o, c, kh, kw = self.weight.shape
        pool = f" + maxpool {self.pool}x{self.pool} /{self.pool} (fused)" if self.pool > 1 else ""
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
        self.n = np.float32((1 << bits) - 1)

    def forward(self, x, threads):
        y = np.clip(x, 0, 1)  # same float32 ops as torch: clamp, * n, round half to even
        y *= self.n
        return np.rint(y, out=y).astype(np.uint8)

    def describe(self):
        return f"quantize -> {self.bits}-bit codes"


class MaxPool(Layer):
    """Max-pool of codes (padding = code 0, below or equal to every real code, and torch's
    padding never fills a whole window) or of floats (padding = -inf)."""

    op = "maxpool"

    def __init__(self, kernel: int, stride: int, padding: int):
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x, threads):
        k, s, p = self.kernel, self.stride, self.padding
        if x.dtype == np.uint8:
            return kernels.maxpool_codes(x, k, s, p)
        n, c, h, w = x.shape
        ho, wo = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
        if p:
            fill = 0 if x.dtype == np.uint8 else -np.inf
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
        # separable: max over the k row taps, then over the k column taps
        rows = None
        for i in range(k):
            tap = x[:, :, i : i + s * (ho - 1) + 1 : s, :]  # (N, C, H', W + 2p)
            rows = tap.copy() if rows is None else np.maximum(rows, tap, out=rows)
        out = None
        for j in range(k):
            tap = rows[:, :, :, j : j + s * (wo - 1) + 1 : s]  # (N, C, H', W')
            out = tap.copy() if out is None else np.maximum(out, tap, out=out)
        return out

    def describe(self):
        return f"maxpool {self.kernel}x{self.kernel} /{self.stride} pad {self.padding}"


class BitConv(Layer):
    """A quantized layer on popcount kernels; ``groups`` splits the channels.

    ``out='codes'``: uint8 codes via per-channel integer thresholds on the signed dot D.
    ``out='float'``: ``clip(alpha * D + beta, 0, 1)`` in float32 (input of the float classifier).
    """

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
    ):
        self.shape = codes.shape  # (O, C/groups, KH, KW)
        self.x_bits, self.w_bits, self.stride, self.padding = x_bits, w_bits, stride, padding
        self.groups, self.out, self.out_bits = groups, out, out_bits
        og = codes.shape[0] // groups
        self.packed = [
            kernels.pack_weights(np.ascontiguousarray(codes[g * og : (g + 1) * og]), w_bits)
            for g in range(groups)
        ]
        sl = [slice(g * og, (g + 1) * og) for g in range(groups)]
        if out == "codes":
            self.thresholds, self.direction = [], []
            for s in sl:  # validated once here, not per call
                t, d = kernels.reference.check_requant(thresholds[s], direction[s], og)
                self.thresholds.append(t)
                self.direction.append(d)
        else:
            self.alpha = alpha[None, :, None, None]
            self.beta = beta[None, :, None, None]
        # Arguments of the native call after the weights, checked once (see forward)
        self.native_args = [
            (
                og,
                self.shape[1],
                self.shape[2],
                self.shape[3],
                x_bits,
                w_bits,
                stride,
                padding,
            )
            for pw in self.packed
        ]

    def forward(self, x, threads):
        b = kernels.kernel_name()
        if (
            self.groups == 1
            and b != "reference"
            and type(x) is np.ndarray
            and x.dtype == np.uint8
            and x.flags.c_contiguous
            and type(threads) is int
        ):
            # Fast path: the arguments were validated when the layer was built; the native
            # call re-checks shapes and code ranges itself.
            kernels._ran("native")
            if self.out == "codes":
                return kernels._native.bitconv(
                    b,
                    x,
                    kernels.weight_words(self.packed[0], b),
                    *self.native_args[0],
                    threads,
                    "requant",
                    self.thresholds[0],
                    self.direction[0],
                )
            words = kernels.weight_words(self.packed[0], b)
            y = kernels._native.bitconv(b, x, words, *self.native_args[0], threads, "signed")
            return np.clip(y.astype(np.float32) * self.alpha + self.beta, 0, 1)
        cg = self.shape[1]
        outs = []
        for g, pw in enumerate(self.packed):
            xg = x if self.groups == 1 else np.ascontiguousarray(x[:, g * cg : (g + 1) * cg])
            if self.out == "codes":
                outs.append(
                    kernels.bitconv2d_requant(
                        xg,
                        pw,
                        self.x_bits,
                        self.stride,
                        self.padding,
                        self.thresholds[g],
                        self.direction[g],
                        threads,
                    )
                )
            else:
                outs.append(
                    kernels.bitconv2d_signed(
                        xg, pw, self.x_bits, self.stride, self.padding, threads
                    )
                )
        y = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
        if self.out == "float":
            y = np.clip(y.astype(np.float32) * self.alpha + self.beta, 0, 1)
        return y

    def describe(self):
        o, c, kh, kw = self.shape
        g = f" groups {self.groups}" if self.groups > 1 else ""
        out = f"{self.out_bits}-bit codes" if self.out == "codes" else "float clip[0,1]"
        return (
            f"bitconv {c * self.groups}->{o} {kh}x{kw} /{self.stride} pad {self.padding}{g} "
            f"W{self.w_bits} A{self.x_bits} -> {out}"
        )


class Flatten(Layer):
    op = "flatten"

    def forward(self, x, threads):
        return x.reshape(len(x), -1)


class Linear(Layer):
    """The float classifier: ``x @ W.T + b`` in float32."""

    op = "linear_float"

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight, self.bias = weight, bias
        self.wt = np.ascontiguousarray(weight.T)

    def forward(self, x, threads):
        return x.astype(np.float32, copy=False) @ self.wt + self.bias

    def describe(self):
        o, i = self.weight.shape
        return f"linear_float {i}->{o} (float32, bias)"


# ----------------------------------------------------------------------------- building
class _Builder:
    """Turns the header's layer list into Layers, checking every field and the shape chain.

    The state is (kind, shape): kind 'float' or an int (bits of the uint8 codes)."""

    def __init__(self, reader: Reader):
        self.r = reader

    def err(self, i: int, what: str) -> FormatError:
        return self.r.error(f"layer {i}: {what}")

    def int_(self, i, spec, key, lo, hi) -> int:
        v = spec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise self.err(i, f"'{key}' must be an int in {lo}..{hi}, got {v!r}")
        return v

    def arr(self, i, spec, key, dtype, ndim):
        a = self.r.array(spec.get(key), f"layers[{i}].{key}", dtype, ndim)
        if a.dtype == np.float32 and not np.all(np.isfinite(a)):
            raise self.err(i, f"'{key}' holds non-finite values")
        return a

    def check_elements(self, i, shape):
        if math.prod(shape) > MAX_ELEMENTS:
            raise self.err(i, f"activation shape {shape} exceeds {MAX_ELEMENTS} elements")

    def conv_shape(self, i, shape, kh, kw, stride, padding):
        c, h, w = shape
        if kh > h + 2 * padding or kw > w + 2 * padding:
            raise self.err(i, f"kernel {kh}x{kw} larger than the padded input {h}x{w}+{padding}")
        return conv_out_size(h, kh, stride, padding), conv_out_size(w, kw, stride, padding)

    def build(self, specs, input_shape):
        if not isinstance(specs, list) or not 1 <= len(specs) <= 1000:
            raise self.r.error("'layers' must be a list of 1..1000 layers")
        kind, shape = "float", tuple(input_shape)
        layers = self.layers = []
        for i, spec in enumerate(specs):
            if not isinstance(spec, dict):
                raise self.err(i, "is not an object")
            op = spec.get("op")
            method = getattr(self, f"_{op}", None) if isinstance(op, str) else None
            if (
                op
                not in ("conv_float", "quantize", "maxpool", "bitconv", "flatten", "linear_float")
                or method is None
            ):
                raise self.err(i, f"unknown op {op!r}")
            layer, kind, shape = method(i, spec, kind, shape)
            self.check_elements(i, shape)
            if layer is not None:
                layers.append(layer)
        if kind != "float" or len(shape) != 1:
            raise self.r.error(f"the network ends in {kind} {shape}, not float logits")
        return layers, shape[0]

    def _conv_float(self, i, spec, kind, shape):
        if kind != "float" or len(shape) != 3:
            raise self.err(i, "conv_float needs a float (C, H, W) input")
        w = self.arr(i, spec, "weight", np.float32, 4)
        b = self.arr(i, spec, "bias", np.float32, 1)
        o, c, kh, kw = w.shape
        stride = self.int_(i, spec, "stride", 1, 64)
        padding = self.int_(i, spec, "padding", 0, 64)
        if c != shape[0] or b.shape != (o,) or min(w.shape) < 1:
            raise self.err(i, f"weight {w.shape} / bias {b.shape} do not fit input {shape}")
        ho, wo = self.conv_shape(i, shape, kh, kw, stride, padding)
        return FloatConv(w, b, stride, padding), "float", (o, ho, wo)

    def _quantize(self, i, spec, kind, shape):
        if kind != "float":
            raise self.err(i, "quantize needs a float input")
        bits = self.int_(i, spec, "bits", 1, 8)
        prev = self.layers[-1] if self.layers else None
        if isinstance(prev, FloatConv) and prev.bits is None:
            prev.bits = bits  # fused: the first conv returns codes (FloatConv.forward)
            return None, bits, shape
        return Quantize(bits), bits, shape

    def _maxpool(self, i, spec, kind, shape):
        if len(shape) != 3:
            raise self.err(i, "maxpool needs a (C, H, W) input")
        k = self.int_(i, spec, "kernel", 1, 64)
        s = self.int_(i, spec, "stride", 1, 64)
        p = self.int_(i, spec, "padding", 0, k // 2)
        c = shape[0]
        ho, wo = self.conv_shape(i, shape, k, k, s, p)
        prev = self.layers[-1] if self.layers else None
        if (
            isinstance(prev, FloatConv)
            and prev.pool == 1
            and p == 0
            and k == s
            and shape[1] % k == 0
            and shape[2] % k == 0
        ):
            prev.pool = k  # fused into the GEMM's output (see FloatConv.forward)
            return None, kind, (c, ho, wo)
        return MaxPool(k, s, p), kind, (c, ho, wo)

    def _bitconv(self, i, spec, kind, shape):
        if kind == "float" or len(shape) != 3:
            raise self.err(i, "bitconv needs a (C, H, W) input of integer codes")
        x_bits = self.int_(i, spec, "x_bits", 1, 8)
        if x_bits != kind:
            raise self.err(i, f"x_bits {x_bits} but the input holds {kind}-bit codes")
        w_bits = self.int_(i, spec, "w_bits", 1, 8)
        stride = self.int_(i, spec, "stride", 1, 64)
        padding = self.int_(i, spec, "padding", 0, 64)
        groups = self.int_(i, spec, "groups", 1, MAX_DIM)
        ws = spec.get("weight_shape")
        if not _is_dims(ws, 4):
            raise self.err(i, f"'weight_shape' must be 4 ints in 1..{MAX_DIM}, got {ws!r}")
        o, cg, kh, kw = ws
        if o % groups or cg * groups != shape[0]:
            raise self.err(i, f"weight_shape {ws} with groups {groups} does not fit input {shape}")
        if not fits_int32(cg * kh * kw, x_bits, w_bits):
            bound = accumulator_bound(cg * kh * kw, x_bits, w_bits)
            raise self.err(i, f"accumulator range {bound} exceeds int32 ({INT32_MAX})")
        count = o * cg * kh * kw
        packed = self.arr(i, spec, "weight", np.uint8, 1)
        if packed.size != w_bits * (-(-count // 8)):
            raise self.err(
                i,
                f"packed weight has {packed.size} bytes, expected "
                f"{w_bits} bit planes of {-(-count // 8)} bytes",
            )
        planes = np.unpackbits(
            packed.reshape(w_bits, -1), axis=1, count=count, bitorder="little"
        )  # (W, count)
        codes = np.zeros(count, np.uint8)
        for k in range(w_bits):
            codes |= planes[k] << k
        codes = codes.reshape(o, cg, kh, kw)
        ho, wo = self.conv_shape(i, shape, kh, kw, stride, padding)
        out = spec.get("out")
        if out == "codes":
            out_bits = self.int_(i, spec, "out_bits", 1, 8)
            t = self.arr(i, spec, "thresholds", np.int32, 2)
            d = self.arr(i, spec, "direction", np.int8, 1)
            if t.shape != (o, (1 << out_bits) - 1) or d.shape != (o,):
                raise self.err(
                    i,
                    f"thresholds {t.shape} / direction {d.shape} do not fit "
                    f"{o} channels of {out_bits}-bit codes",
                )
            if not np.all(np.abs(d.astype(np.int16)) == 1):
                raise self.err(i, "direction values must be +1 or -1")
            layer = BitConv(
                codes,
                x_bits,
                w_bits,
                stride,
                padding,
                groups,
                "codes",
                out_bits,
                thresholds=t,
                direction=d,
            )
            return layer, out_bits, (o, ho, wo)
        if out == "float":
            a = self.arr(i, spec, "alpha", np.float32, 1)
            b = self.arr(i, spec, "beta", np.float32, 1)
            if a.shape != (o,) or b.shape != (o,):
                raise self.err(i, f"alpha {a.shape} / beta {b.shape} do not fit {o} channels")
            layer = BitConv(
                codes, x_bits, w_bits, stride, padding, groups, "float", alpha=a, beta=b
            )
            return layer, "float", (o, ho, wo)
        raise self.err(i, f"'out' must be 'codes' or 'float', got {out!r}")

    def _flatten(self, i, spec, kind, shape):
        return Flatten(), kind, (math.prod(shape),)

    def _linear_float(self, i, spec, kind, shape):
        if kind != "float" or len(shape) != 1:
            raise self.err(i, "linear_float needs a flat float input")
        w = self.arr(i, spec, "weight", np.float32, 2)
        b = self.arr(i, spec, "bias", np.float32, 1)
        if w.shape[1] != shape[0] or b.shape != (w.shape[0],) or w.shape[0] < 1:
            raise self.err(i, f"weight {w.shape} / bias {b.shape} do not fit input {shape}")
        return Linear(w, b), "float", (w.shape[0],)


class Model:
    """A loaded ``.dorefa`` network. Call it on float32 (N, C, H, W) in [0, 1] (already at the
    model's input size) to get float32 logits (N, classes).

    Attributes: ``layers``, ``bits`` ("W,A,G" it was trained with), ``w_bits``, ``a_bits``,
    ``size`` (file bytes), ``input_shape`` (C, H, W), ``num_classes``, ``meta``, ``threads``.
    """

    def __init__(self, path, threads: int = 1):
        reader = Reader(path)
        h = reader.header
        shape = h.get("input_shape")
        if not _is_dims(shape, 3):
            raise reader.error(f"'input_shape' must be 3 ints in 1..{MAX_DIM}, got {shape!r}")
        self.path = reader.path
        self.size = reader.size
        self.input_shape = tuple(shape)
        self.layers, self.num_classes = _Builder(reader).build(h.get("layers"), self.input_shape)
        nc = h.get("num_classes")
        if nc != self.num_classes:
            raise reader.error(f"num_classes {nc!r} but the network outputs {self.num_classes}")
        meta = h.get("meta", {})
        self.meta = meta if isinstance(meta, dict) else {}
        self.bits = str(h.get("bits", "?"))
        self.w_bits = next((la.w_bits for la in self.layers if isinstance(la, BitConv)), None)
        self.a_bits = next((la.x_bits for la in self.layers if isinstance(la, BitConv)), None)
        self.threads = threads

    def __call__(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"input must be (N, {', '.join(map(str, self.input_shape))}) "
                f"float32 at the model's input size, got shape {x.shape}"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        threads = self.threads if threads is None else threads
        for layer in self.layers:
            x = layer.forward(x, threads)
        return x

    def summary(self) -> str:
        lines = [
            f"{self.path}: {self.size} bytes, bits {self.bits}, input "
            f"{'x'.join(map(str, self.input_shape))}, {self.num_classes} classes, "
            f"kernel backend {kernels.backend()}"
        ]
        lines += [f"  {i:2d} {layer.describe()}" for i, layer in enumerate(self.layers)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"dorefa.runtime.Model({str(self.path)!r}, bits={self.bits}, "
            f"layers={len(self.layers)}, size={self.size})"
        )
