"""Turns a ``.dorefa`` header into runnable nodes, trusting nothing in it.

A graph (format version 2) is ``"nodes"``: a list of ``{"name", "op", "inputs": [names], ...}``
in execution order (every input is ``"input"``, the image, or the name of an earlier node) and
``"output"``, the name of the node giving the logits. A version-1 chain (``"layers"``: each
layer feeds the next) is converted to that graph first (:func:`chain_to_graph`).

Every field is checked before anything is allocated: names, inputs, op parameters, array
dtypes and shapes against the value each node receives, the (kind, shape) of every value
(kind ``'float'`` or the bit width of uint8 codes), the int32 accumulator bound of every
bit convolution and the element count of every activation. Any failure is a
:class:`FormatError` naming the file and the node.
"""

from __future__ import annotations

import math

import numpy as np

from ..geometry import INT32_MAX, accumulator_bound, conv_out_size, fits_int32
from . import ops
from .bitconv import BitConv
from .format import FormatError, Reader

MAX_ELEMENTS = 1 << 26  # per image, per value: refuse headers describing absurd activations
# Per image, over the whole graph: the values alive at once (float32 4 bytes an element, codes 1)
# and the multiply-accumulates. A 60 KB file of 40 float convs, each output kept for a final
# chain of adds, took 4.9 GB to load; one of 100 convs sharing one weight, 849 GMAC, 17 s
# (ResNet-18 and AlexNet: 1.8-1.9 GMAC, a few MB alive).
MAX_LIVE_BYTES = 1 << 30
MAX_MACS = 1 << 37
# Per image: the elements the other nodes read, a pool's k x k per output (they run at a few
# G/s, not as kernels): a 544-byte file of three 64 x 64 average pools on 2048 x 2048 had taken
# 17 s to load (0 MACs).
MAX_OTHER_WORK = 1 << 32
MAX_DIM = 1 << 16
MAX_NODES = 2000
MAX_INPUTS = 64
MAX_NAME = 200
INPUT = "input"
OPS = (
    "conv_float",
    "quantize",
    "dequantize",
    "affine",
    "clip",
    "add",
    "concat",
    "maxpool",
    "avgpool",
    "global_avgpool",
    "flatten",
    "linear_float",
    "bitconv",
)


def _is_dims(v: object, n: int) -> bool:
    """Whether `v` (from a file's JSON) is a list of `n` ints, each in 1..MAX_DIM."""
    return (
        isinstance(v, list)
        and len(v) == n
        and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM for d in v)
    )


def chain_to_graph(layers: object) -> tuple[object, object]:
    """A version-1 ``layers`` list (each feeds the next) as (nodes, output) of a graph; a float
    output of a bitconv was always clipped to [0, 1] in version 1. Non-list input is returned
    as is, for the graph checks to refuse."""
    if not isinstance(layers, list):
        return layers, None
    nodes, prev = [], INPUT
    for i, spec in enumerate(layers):
        if not isinstance(spec, dict):
            return layers, None
        node = dict(spec, name=f"layer{i}", inputs=[prev])
        if spec.get("op") == "bitconv" and spec.get("out") == "float":
            node["clip"] = True
        nodes.append(node)
        prev = node["name"]
    return nodes, prev


def _bytes(value: tuple[str, tuple]) -> int:
    """Bytes per image of a value (kind, shape): float32, or one byte a code."""
    kind, shape = value
    return math.prod(shape) * (4 if kind == "float" else 1)


class GraphBuilder:
    """Checks a graph's nodes and makes its Layers (see the module doc)."""

    # Nodes joined to the node making their input where one native call does both: a float
    # conv and its max-pool / quantize, a BatchNorm and its quantize, a bit convolution's float
    # output and the residual add it feeds. The same bits either way (each fused op is its
    # unfused sequence, tested); False builds every node alone (tests compare the two).
    fuse = True

    def __init__(self, reader: Reader):
        self.r = reader

    def err(self, i: int, what: str) -> FormatError:
        return self.r.error(f"node {i}: {what}")

    def int_(self, i, spec, key, lo, hi) -> int:
        v = spec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise self.err(i, f"'{key}' must be an int in {lo}..{hi}, got {v!r}")
        return v

    def arr(self, i, spec, key, dtype, ndim):
        a = self.r.array(spec.get(key), f"nodes[{i}].{key}", dtype, ndim)
        if a.dtype == np.float32 and not np.all(np.isfinite(a)):
            raise self.err(i, f"'{key}' holds non-finite values")
        return a

    def conv_shape(self, i, shape, kh, kw, stride, padding):
        c, h, w = shape
        if kh > h + 2 * padding or kw > w + 2 * padding:
            raise self.err(i, f"kernel {kh}x{kw} larger than the padded input {h}x{w}+{padding}")
        return conv_out_size(h, kh, stride, padding), conv_out_size(w, kw, stride, padding)

    # ------------------------------------------------------------------------- the graph
    def _names(self, specs, output) -> dict[str, int]:
        """Checks names and inputs (each defined before use); returns consumer counts."""
        if not isinstance(specs, list) or not 1 <= len(specs) <= MAX_NODES:
            raise self.r.error(f"'nodes' must be a list of 1..{MAX_NODES} nodes")
        uses: dict[str, int] = {INPUT: 0}
        for i, spec in enumerate(specs):
            if not isinstance(spec, dict):
                raise self.err(i, "is not an object")
            name, inputs = spec.get("name"), spec.get("inputs")
            if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or name in uses:
                raise self.err(i, f"name {name!r} is not a new string of 1..{MAX_NAME} chars")
            if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
                raise self.err(i, f"'inputs' must be a list of 1..{MAX_INPUTS} names")
            for src in inputs:
                if not isinstance(src, str) or src not in uses:
                    raise self.err(i, f"input {src!r} is not the input or an earlier node")
                uses[src] += 1
            uses[name] = 0
        if not isinstance(output, str) or output not in uses or output == INPUT:
            raise self.r.error(f"'output' {output!r} is not the name of a node")
        uses[output] += 1
        return uses

    def build(self, specs, output, input_shape):
        """(layers in execution order, output name, number of classes)."""
        self.uses = self._names(specs, output)
        self.values = {INPUT: ("float", tuple(input_shape))}
        self.producer: dict[str, ops.Layer] = {}
        self.fused_src = None  # the input whose producer a fused node joined, if not the first
        self.layers: list[ops.Layer] = []
        self.macs = 0  # multiply-accumulates per image (convolutions and linear layers)
        other = 0  # per image, the other nodes' work (MAX_OTHER_WORK)
        last = {name: i for i, spec in enumerate(specs) for name in spec["inputs"]}
        last[output] = len(specs)
        live = _bytes(self.values[INPUT])  # of the values made and still to be read
        for i, spec in enumerate(specs):
            op = spec.get("op")
            if not isinstance(op, str) or op not in OPS:
                raise self.err(i, f"unknown op {op!r}")
            ins = [self.values[n] for n in spec["inputs"]]
            n_in = 2 if op == "add" else None if op == "concat" else 1
            if n_in is not None and len(ins) != n_in:
                raise self.err(i, f"{op} takes {n_in} input(s), got {len(ins)}")
            layer, kind, shape = getattr(self, f"_{op}")(i, spec, ins)
            if math.prod(shape) > MAX_ELEMENTS:
                raise self.err(i, f"activation shape {shape} exceeds {MAX_ELEMENTS} elements")
            self.values[spec["name"]] = (kind, shape)
            fan_in = getattr(layer, "fan_in", 0)
            self.macs += math.prod(shape) * fan_in
            if not fan_in:  # pools: their window per output; else elements
                window = spec["kernel"] ** 2 if op in ("maxpool", "avgpool") else 1
                other += max(math.prod(shape) * window, sum(math.prod(v[1]) for v in ins))
            live += _bytes((kind, shape))
            if live > MAX_LIVE_BYTES or self.macs > MAX_MACS or other > MAX_OTHER_WORK:
                raise self.err(
                    i,
                    f"the network would hold {live} bytes of values at once and run {self.macs} "
                    f"MACs and {other} other operations per image by here (at most "
                    f"{MAX_LIVE_BYTES}, {MAX_MACS} and {MAX_OTHER_WORK})",
                )
            live -= sum(_bytes(self.values[n]) for n in set(spec["inputs"]) if last[n] == i)
            if layer is None:  # fused into the node producing its input: that node renamed
                layer = self.producer.pop(self.fused_src or spec["inputs"][0])
                self.fused_src = None
            else:
                self.layers.append(layer)
                layer.inputs = tuple(spec["inputs"])
                layer.node = spec["name"]  # its own node's name, kept where others fuse in
            layer.name = spec["name"]
            source = spec.get("source")
            layer.source = source if isinstance(source, str) else layer.source
            self.producer[layer.name] = layer
        kind, shape = self.values[output]
        if kind != "float" or len(shape) != 1:
            raise self.r.error(f"the network ends in {kind} {shape}, not float logits")
        return self.layers, output, shape[0]

    def _fusable(self, spec, cls) -> ops.Layer | None:
        """The producer of this node's single input if it is a ``cls`` whose output nothing
        else reads (so it may compute this node's output instead)."""
        src = spec["inputs"][0]
        prev = self.producer.get(src)
        return prev if self.fuse and isinstance(prev, cls) and self.uses[src] == 1 else None

    # ------------------------------------------------------------------------- float ops
    def _float_in(self, i, ins, op, ndim=None):
        kind, shape = ins[0]
        if kind != "float" or (ndim is not None and len(shape) != ndim):
            dims = f"({', '.join('CHW'[:ndim])}) " if ndim == 3 else ""
            raise self.err(i, f"{op} needs a float {dims}input, got {kind} {shape}")
        return shape

    def _conv_float(self, i, spec, ins):
        shape = self._float_in(i, ins, "conv_float", 3)
        w = self.arr(i, spec, "weight", np.float32, 4)
        b = self.arr(i, spec, "bias", np.float32, 1)
        o, c, kh, kw = w.shape
        stride = self.int_(i, spec, "stride", 1, 64)
        padding = self.int_(i, spec, "padding", 0, 64)
        if c != shape[0] or b.shape != (o,) or min(w.shape) < 1:
            raise self.err(i, f"weight {w.shape} / bias {b.shape} do not fit input {shape}")
        ho, wo = self.conv_shape(i, shape, kh, kw, stride, padding)
        return ops.FloatConv(w, b, stride, padding), "float", (o, ho, wo)

    def _quantize(self, i, spec, ins):
        shape = self._float_in(i, ins, "quantize")
        bits = self.int_(i, spec, "bits", 1, 8)
        prev = self._fusable(spec, ops.FloatConv)
        if prev is not None and prev.bits is None and prev.maxpool is None:
            prev.bits = bits  # fused: the conv returns codes (FloatConv.forward)
            return None, bits, shape
        prev = self._fusable(spec, ops.Affine)
        if prev is not None and prev.bits is None:
            prev.bits = bits  # fused: the BatchNorm returns codes (Affine.forward)
            return None, bits, shape
        return ops.Quantize(bits), bits, shape

    def _dequantize(self, i, spec, ins):
        kind, shape = ins[0]
        if kind == "float":
            raise self.err(i, "dequantize needs codes")
        return ops.Dequantize(kind), "float", shape

    def _affine(self, i, spec, ins):
        shape = self._float_in(i, ins, "affine")
        scale = self.arr(i, spec, "scale", np.float32, 1)
        shift = self.arr(i, spec, "shift", np.float32, 1)
        if scale.shape != (shape[0],) or shift.shape != (shape[0],):
            raise self.err(i, f"scale {scale.shape} / shift {shift.shape} do not fit {shape}")
        return ops.Affine(scale, shift), "float", shape

    def _clip(self, i, spec, ins):
        return ops.Clip(), "float", self._float_in(i, ins, "clip")

    def _add(self, i, spec, ins):
        if ins[0] != ins[1] or ins[0][0] != "float":
            raise self.err(i, f"add needs two float inputs of one shape, got {ins}")
        a, b = spec["inputs"]
        for src, other in ((b, a), (a, b)) if self.fuse else ():  # into the bitconv making one
            prev = self.producer.get(src)
            if (
                isinstance(prev, BitConv)
                and prev.out == "float"
                and not prev.clip
                and not prev.residual
                and self.uses[src] == 1
                and src != other
                and self._made_before(other, prev)
            ):
                prev.residual = True  # run(x, other): its float output plus `other`
                prev.inputs = (*prev.inputs, other)
                self.fused_src = src
                return None, "float", ins[0][1]
        return ops.Add(), "float", ins[0][1]

    def _made_before(self, name: str, layer: ops.Layer) -> bool:
        """Whether value ``name`` exists when ``layer`` runs (the input, or an earlier node's)."""
        if name == INPUT:
            return True
        made = self.producer.get(name)
        return made is not None and self.layers.index(made) < self.layers.index(layer)

    def _concat(self, i, spec, ins):
        kinds = {k for k, _ in ins}
        shapes = [s for _, s in ins]
        if len(kinds) != 1 or any(len(s) != 3 or s[1:] != shapes[0][1:] for s in shapes):
            raise self.err(i, f"concat needs (C, H, W) inputs of one kind and size, got {ins}")
        c = sum(s[0] for s in shapes)
        if c > MAX_DIM:
            raise self.err(i, f"concat gives {c} channels, above {MAX_DIM}")
        return ops.Concat(), kinds.pop(), (c, *shapes[0][1:])

    def _pool_args(self, i, spec, shape, op):
        if len(shape) != 3:
            raise self.err(i, f"{op} needs a (C, H, W) input")
        k = self.int_(i, spec, "kernel", 1, 64)
        s = self.int_(i, spec, "stride", 1, 64)
        p = self.int_(i, spec, "padding", 0, k // 2)
        return k, s, p, (shape[0], *self.conv_shape(i, shape, k, k, s, p))

    def _maxpool(self, i, spec, ins):
        kind, shape = ins[0]
        k, s, p, out = self._pool_args(i, spec, shape, "maxpool")
        prev = self._fusable(spec, ops.FloatConv)
        if (
            prev is not None
            and prev.pool == 1
            and prev.bits is None
            and prev.maxpool is None  # a second pool after one fused: its own node (it had
            and p == 0  # replaced the first, silently: wrong logits)
            and k == s
            and shape[1] % k == 0
            and shape[2] % k == 0
        ):
            prev.pool = k  # fused into the GEMM's output (see FloatConv.forward)
            return None, kind, out
        if prev is not None and prev.pool == 1 and prev.bits is None and prev.maxpool is None:
            prev.maxpool = (k, s, p)  # float output: pooled as the conv's rows are made
            return None, kind, out
        return ops.MaxPool(k, s, p), kind, out

    def _avgpool(self, i, spec, ins):
        shape = self._float_in(i, ins, "avgpool", 3)
        k, s, p, out = self._pool_args(i, spec, shape, "avgpool")
        return ops.AvgPool(k, s, p), "float", out

    def _global_avgpool(self, i, spec, ins):
        shape = self._float_in(i, ins, "global_avgpool", 3)
        return ops.GlobalAvgPool(), "float", (shape[0], 1, 1)

    def _flatten(self, i, spec, ins):
        kind, shape = ins[0]
        return ops.Flatten(), kind, (math.prod(shape),)

    def _linear_float(self, i, spec, ins):
        shape = self._float_in(i, ins, "linear_float", 1)
        w = self.arr(i, spec, "weight", np.float32, 2)
        b = self.arr(i, spec, "bias", np.float32, 1)
        if w.shape[1] != shape[0] or b.shape != (w.shape[0],) or w.shape[0] < 1:
            raise self.err(i, f"weight {w.shape} / bias {b.shape} do not fit input {shape}")
        return ops.Linear(w, b), "float", (w.shape[0],)

    # ------------------------------------------------------------------------- bit convolution
    def _bitconv_weights(self, i, spec, shape, kind):
        """(codes (O, C/g, KH, KW), x_bits, w_bits, stride, padding, groups, (O, H', W'))."""
        if kind == "float" or len(shape) not in (1, 3):
            raise self.err(i, "bitconv needs a (C, H, W) or (F,) input of integer codes")
        shape = shape if len(shape) == 3 else (shape[0], 1, 1)
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
            raise self.err(i, f"accumulator bound {bound} exceeds int32 ({INT32_MAX})")
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
        return codes, x_bits, w_bits, stride, padding, groups, (o, ho, wo)

    def _bitconv(self, i, spec, ins):
        kind, shape = ins[0]
        codes, x_bits, w_bits, stride, padding, groups, out_shape = self._bitconv_weights(
            i, spec, shape, kind
        )
        o = out_shape[0]
        args = (codes, x_bits, w_bits, stride, padding, groups)
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
            layer = BitConv(*args, "codes", out_bits, thresholds=t, direction=d)
            return layer, out_bits, out_shape
        if out == "float":
            a = self.arr(i, spec, "alpha", np.float32, 1)
            b = self.arr(i, spec, "beta", np.float32, 1)
            clip = spec.get("clip")
            if a.shape != (o,) or b.shape != (o,):
                raise self.err(i, f"alpha {a.shape} / beta {b.shape} do not fit {o} channels")
            if not isinstance(clip, bool):
                raise self.err(i, f"'clip' must be true or false, got {clip!r}")
            return BitConv(*args, "float", alpha=a, beta=b, clip=clip), "float", out_shape
        raise self.err(i, f"'out' must be 'codes' or 'float', got {out!r}")
