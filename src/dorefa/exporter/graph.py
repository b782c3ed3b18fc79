"""The runtime graph of a DoReFa model, written node by node while the model is walked
(:mod:`dorefa.exporter.walk`).

Every torch value becomes a :class:`Value`: float32 (a float map, or a residual stream), k-bit
codes (an f_a's output), or *pending*: a quantized conv whose output ``alpha * D + beta``
(D the kernel's signed dot) is not written yet, so that what follows folds into it:

- BatchNorm: ``alpha <- a alpha``, ``beta <- a beta + c`` (eval BN is ``a y + c`` per channel);
- max-pool: remembered; it runs on the codes after f_a (max-pool commutes with the monotone
  f_a, :mod:`dorefa.exporter.folding`);
- f_a (ActQuant): integer thresholds on D (``fold_thresholds``): a ``bitconv`` node giving codes;
- f_a without rounding (the classifier's input): a ``bitconv`` giving ``clip(alpha D + beta)``;
- anything else (an add, an avg-pool, the output, ...): a ``bitconv`` giving float32
  ``alpha D + beta``, the layer's real output: the float residual stream.

A flatten is also pending, so that a quantized linear layer on a flattened (C, H, W) code map
runs as one H x W conv over it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from ..geometry import INT32_MAX, accumulator_bound, conv_out_size, fits_int32
from ..nn import QConv2d, QLinear
from .checks import conv_params, pool_params
from .errors import ExportError
from .folding import bn_affine, fold_thresholds, pack_planes, weight_codes


@dataclass
class PendingConv:
    """A quantized conv whose real output is ``alpha * D + beta`` per channel (float64)."""

    x: Value  # its input codes (written)
    spec: dict  # the bitconv node's fields but the output ones
    alpha: np.ndarray
    beta: np.ndarray
    dmax: int  # |D| <= dmax
    shape: tuple  # (O, H', W') before the pool
    name: str
    pool: tuple | None = None  # (kernel, stride, padding, module name) of a max-pool after it


@dataclass
class Value:
    """What flows along an edge: ``kind`` 'float' or the bits of uint8 codes, the runtime
    ``shape`` per image, and the node that holds it (``name``), or a pending conv / flatten."""

    kind: str | int
    shape: tuple
    name: str | None = None
    conv: PendingConv | None = None
    flat_of: Value | None = None


class GraphWriter:
    """Collects the nodes and arrays of a version-2 ``.dorefa`` graph."""

    def __init__(self, input_shape: tuple):
        self.nodes: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.names = {"input"}
        self.input = Value("float", tuple(input_shape), "input")

    # ------------------------------------------------------------------------- writing nodes
    def emit(self, base: str, op: str, inputs: list[Value], source=None, **fields) -> str:
        """Append a node (arrays given as numpy arrays) and return its unique name."""
        name, k = base or op, 1
        while name in self.names:
            k += 1
            name = f"{base or op}#{k}"
        self.names.add(name)
        node = {"name": name, "op": op, "inputs": [v.name for v in inputs]}
        for key, val in fields.items():
            if isinstance(val, np.ndarray):
                self.arrays[f"{name}.{key}"] = val
                val = {"array": f"{name}.{key}"}
            node[key] = val
        if source is not None:
            node["source"] = source
        self.nodes.append(node)
        return name

    def ready(self, v: Value) -> Value:
        """``v`` written out (a pending conv as its float32 output ``alpha D + beta``)."""
        if v.name is not None:
            return v
        if v.flat_of is not None:
            src = self.ready(v.flat_of)
            return Value(src.kind, v.shape, self.emit(f"{src.name}.flat", "flatten", [src]))
        pc = v.conv
        out = self._bitconv(pc, "float", clip=False)
        if pc.pool is None:
            return out
        return self.maxpool(out, pc.pool[:3], pc.pool[3])

    def as_float(self, v: Value) -> Value:
        """``v`` as float32 (codes q of k bits become q / (2^k - 1), the f_a's value)."""
        v = self.ready(v)
        if v.kind == "float":
            return v
        return Value("float", v.shape, self.emit(f"{v.name}.deq", "dequantize", [v]))

    def _bitconv(self, pc: PendingConv, out: str, source=None, **fields) -> Value:
        fields = dict(pc.spec, out=out, **fields)
        if out == "float":
            fields |= {"alpha": pc.alpha.astype(np.float32), "beta": pc.beta.astype(np.float32)}
        name = self.emit(pc.name, "bitconv", [pc.x], source, **fields)
        return Value(fields.get("out_bits", "float"), pc.shape, name)

    # ------------------------------------------------------------------------- layers
    def float_conv(self, name: str, m: nn.Conv2d, x: Value) -> Value:
        if x is not self.input:
            raise ExportError(
                f"{name}: a float-weight conv (W = 32) that is not the first layer cannot run "
                "on popcount kernels; quantize it (QConv2d with w_bits 1..8)"
            )
        stride, pad = conv_params(m, name)
        if m.groups != 1:
            raise ExportError(f"{name}: a grouped float first conv is not supported")
        if m.in_channels != x.shape[0]:
            raise ExportError(f"{name}: expects {m.in_channels} channels, gets {x.shape[0]}")
        w, b = _float_params(m, m.out_channels)
        kh, kw = m.kernel_size
        h, wd = x.shape[1:]
        if kh > h + 2 * pad or kw > wd + 2 * pad:
            raise ExportError(f"{name}: kernel {kh}x{kw} larger than the input {h}x{wd}")
        shape = (
            m.out_channels,
            conv_out_size(h, kh, stride, pad),
            conv_out_size(wd, kw, stride, pad),
        )
        node = self.emit(name, "conv_float", [x], stride=stride, padding=pad, weight=w, bias=b)
        return Value("float", shape, node)

    def float_linear(self, name: str, m: nn.Linear, x: Value) -> Value:
        x = self.as_float(x)
        if len(x.shape) > 1:
            x = self.ready(Value("float", (math.prod(x.shape),), flat_of=x))
        if m.in_features != x.shape[0]:
            raise ExportError(f"{name}: expects {m.in_features} inputs, gets {x.shape[0]}")
        w, b = _float_params(m, m.out_features)
        node = self.emit(name, "linear_float", [x], source=name, weight=w, bias=b)
        return Value("float", (m.out_features,), node)

    def qconv(self, name: str, m: QConv2d | QLinear, x: Value) -> Value:
        """A quantized conv or linear layer on codes: a pending conv."""
        if isinstance(m, QLinear) and x.name is None and x.flat_of is not None:
            x = self.ready(x.flat_of)  # fc over a (C, H, W) map == an H x W valid conv
        x = self.ready(x)
        if x.kind == "float":
            raise ExportError(
                f"{name}: a quantized {type(m).__name__} on a float input cannot run on "
                "popcount kernels; put an f_a (ActQuant, A in 1..8) before it"
            )
        codes, s_w = weight_codes(m, name)
        if isinstance(m, QLinear):
            c, h, w = x.shape if len(x.shape) == 3 else (x.shape[0], 1, 1)
            if len(x.shape) == 2 or m.in_features != c * h * w:
                raise ExportError(f"{name}: expects {m.in_features} inputs, gets {x.shape}")
            codes = codes.reshape(m.out_features, c, h, w)
            stride, pad, groups, in_shape = 1, 0, 1, (c, h, w)
        else:
            stride, pad = conv_params(m, name)
            groups, in_shape = m.groups, x.shape
            if len(in_shape) != 3 or in_shape[0] != m.in_channels:
                raise ExportError(f"{name}: expects {m.in_channels} channels, gets {in_shape}")
        o, cg, kh, kw = codes.shape
        if kh > in_shape[1] + 2 * pad or kw > in_shape[2] + 2 * pad:
            raise ExportError(f"{name}: kernel {kh}x{kw} larger than the input {in_shape}")
        dmax = accumulator_bound(cg * kh * kw, x.kind, m.w_bits)
        if not fits_int32(cg * kh * kw, x.kind, m.w_bits):
            raise ExportError(
                f"{name}: accumulator range {dmax} exceeds int32 ({INT32_MAX}); use fewer input "
                "channels per group or fewer bits"
            )
        spec = {
            "x_bits": int(x.kind),
            "w_bits": int(m.w_bits),
            "stride": stride,
            "padding": pad,
            "groups": int(groups),
            "weight_shape": [o, cg, kh, kw],
            "weight": pack_planes(codes, m.w_bits),
        }
        s = s_w / ((1 << x.kind) - 1)  # y = s * D (+ the conv's bias)
        bias = m.bias.detach().double().cpu().numpy() if m.bias is not None else np.zeros(o)
        shape = (o, conv_out_size(in_shape[1], kh, stride, pad))
        shape += (conv_out_size(in_shape[2], kw, stride, pad),)
        pc = PendingConv(x, spec, np.full(o, s), bias, dmax, shape, name)
        return Value("float", shape, conv=pc)

    def batchnorm(self, name: str, m: nn.modules.batchnorm._BatchNorm, x: Value) -> Value:
        if m.num_features != x.shape[0]:
            raise ExportError(f"{name}: {m.num_features} channels, gets {x.shape}")
        a, c = bn_affine(m)
        if x.conv is not None and x.conv.pool is None:
            pc = x.conv
            pc = replace(pc, alpha=pc.alpha * a, beta=pc.beta * a + c)
            return Value("float", x.shape, conv=pc)
        x = self.as_float(x)
        scale, shift = a.astype(np.float32), c.astype(np.float32)
        return Value("float", x.shape, self.emit(name, "affine", [x], scale=scale, shift=shift))

    def act(self, name: str, k: int, quantize: bool, x: Value) -> Value:
        """f_a: k-bit codes, or (``quantize`` False) the float value clipped to [0, 1]."""
        pc = x.conv
        if quantize and pc is not None:
            t, d = fold_thresholds(pc.alpha, pc.beta, k, pc.dmax)
            src = name if pc.pool is None else None
            out = self._bitconv(pc, "codes", src, out_bits=int(k), thresholds=t, direction=d)
            return out if pc.pool is None else self.maxpool(out, pc.pool[:3], pc.pool[3], name)
        if quantize:
            x = self.as_float(x)
            return Value(k, x.shape, self.emit(name, "quantize", [x], name, bits=int(k)))
        if pc is not None and pc.pool is None:
            return self._bitconv(pc, "float", name, clip=True)
        x = self.as_float(x)
        return Value("float", x.shape, self.emit(name, "clip", [x], name))

    def maxpool(self, x: Value, params: tuple, name: str, source=None) -> Value:
        x = self.ready(x)
        k, s, p = params
        if len(x.shape) != 3 or k > x.shape[1] + 2 * p or k > x.shape[2] + 2 * p or p > k // 2:
            raise ExportError(f"{name}: max-pool {params} does not fit the input {x.shape}")
        shape = (x.shape[0], conv_out_size(x.shape[1], k, s, p), conv_out_size(x.shape[2], k, s, p))
        node = self.emit(name, "maxpool", [x], source, kernel=k, stride=s, padding=p)
        return Value(x.kind, shape, node)

    def pool(self, name: str, m: nn.Module, x: Value) -> Value:
        """MaxPool2d (folded into a pending conv if one precedes), AvgPool2d, global pool."""
        if isinstance(m, nn.MaxPool2d):
            params = pool_params(m, name)
            if x.conv is not None and x.conv.pool is None:
                pc = replace(x.conv, pool=(*params, name))
                k, s, p = params
                h, w = (conv_out_size(v, k, s, p) for v in x.shape[1:])
                return Value("float", (x.shape[0], h, w), conv=pc)
            return self.maxpool(x, params, name)
        x = self.as_float(x)
        if len(x.shape) != 3:
            raise ExportError(f"{name}: {type(m).__name__} needs a (C, H, W) input, gets {x.shape}")
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if m.output_size not in (1, (1, 1)):
                raise ExportError(
                    f"{name}: AdaptiveAvgPool2d to {m.output_size} is not supported "
                    "(only global pooling, output size 1)"
                )
            node = self.emit(name, "global_avgpool", [x])
            return Value("float", (x.shape[0], 1, 1), node)
        k, s, p = pool_params(m, name)
        if k > x.shape[1] + 2 * p or k > x.shape[2] + 2 * p or p > k // 2:
            raise ExportError(f"{name}: avg-pool {(k, s, p)} does not fit the input {x.shape}")
        shape = (x.shape[0], conv_out_size(x.shape[1], k, s, p), conv_out_size(x.shape[2], k, s, p))
        node = self.emit(name, "avgpool", [x], kernel=k, stride=s, padding=p)
        return Value("float", shape, node)

    def add(self, name: str, a: Value, b: Value) -> Value:
        a, b = self.as_float(a), self.as_float(b)
        if a.shape != b.shape:
            raise ExportError(f"{name}: adds shapes {a.shape} and {b.shape} (no broadcasting)")
        return Value("float", a.shape, self.emit(name, "add", [a, b]))

    def concat(self, name: str, xs: list[Value]) -> Value:
        xs = [self.ready(v) for v in xs]
        if len({v.kind for v in xs}) != 1:
            xs = [self.as_float(v) for v in xs]
        if any(len(v.shape) != 3 or v.shape[1:] != xs[0].shape[1:] for v in xs):
            raise ExportError(f"{name}: concatenates {[v.shape for v in xs]} along channels")
        shape = (sum(v.shape[0] for v in xs), *xs[0].shape[1:])
        return Value(xs[0].kind, shape, self.emit(name, "concat", xs))

    def flatten(self, x: Value) -> Value:
        return x if len(x.shape) == 1 else Value(x.kind, (math.prod(x.shape),), flat_of=x)


def _float_params(m: nn.Conv2d | nn.Linear, out: int) -> tuple[np.ndarray, np.ndarray]:
    w = m.weight.detach().float().cpu().numpy()
    b = m.bias.detach().float().cpu().numpy() if m.bias is not None else np.zeros(out, np.float32)
    return w, b
