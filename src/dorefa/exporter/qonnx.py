"""Export a DoReFa model as standard QONNX (the ONNX dialect FINN compiles and Brevitas exports).

``export_qonnx(model, path)`` walks the model with the same torch.fx walk as the ``.dorefa``
exporter (:func:`dorefa.exporter.walk.walk`), after running that exporter's checks, so both
formats accept and refuse the same models. The graph is written with the ``onnx`` helper API
(not ``torch.onnx.export`` of the fake-quant forward: that would trace f_w's tanh/max/round
arithmetic and the STE detach tricks instead of one quantizer node per tensor). It uses the
``qonnx.custom_op.general`` ops ``Quant`` and ``BipolarQuant`` plus standard ONNX ops (opset 13):
Conv, MatMul, Gemm, Mul, Add, BatchNormalization, MaxPool, AveragePool, GlobalAveragePool,
Flatten, Concat, Clip.

How each DoReFa quantizer maps (docs/method.md section 1; n = 2^k - 1):

- f_w, W = 1: ``f_w(w) = E sign(w)`` (sign(0) = +1, E = mean|w|). The weight initializer holds
  ``sign(w)`` in {-1, +1}; ``BipolarQuant(., scale=1)`` (the identity on it: qonnx maps
  ``x >= 0`` to +1, as DoReFa does) marks it BIPOLAR; ``Mul(E)`` follows the Conv/MatMul
  (``conv(x, E s) = E conv(x, s)``), then ``Add(bias)`` if the layer has one.
- f_w, 1 < W <= 8: ``f_w(w) = (2p - n)/n`` with codes p = round(n u) (``weight_codes``). The
  initializer holds the odd integers ``2p - n`` in [-n, n]; ``Quant(., scale=1, zeropt=0,
  bitwidth=W+1, signed=1, narrow=1)`` is the identity on them and marks them INT(W+1);
  ``Mul(1/n)`` follows the Conv/MatMul. Why W+1 bits: the 2^W DoReFa levels are symmetric and
  exclude 0 (W=2: -1, -1/3, 1/3, 1), so no zero-point-0 W-bit integer grid holds them (their
  integer images are odd numbers, step 2); the exact W-bit form needs zeropt = -1/2 (scale 2/n),
  which FINN's FoldQuantWeights refuses ("Only Quant nodes with zero-point == 0") and which
  qonnx's datatype inference turns into FLOAT32. W+1 narrow signed bits is the smallest grid
  FINN accepts that holds them exactly.
- f_a = quantize_k(clip(x, 0, 1)): ``Quant(x, scale=1/n, zeropt=0, bitwidth=A, signed=0,
  narrow=0, rounding_mode="ROUND")``: qonnx computes ``round(clamp(x / scale, 0, n)) * scale``,
  the clip and the rounding in one node (UINT-A codes times 1/n).
  Rounding: qonnx's "ROUND" is ``np.round``, half to even, as ``torch.round`` in DoReFa's
  quantize_k; the two agree on every tie. They can differ only by float arithmetic: qonnx
  divides by the float32 scale ``1/n`` (not exact for A > 1) where torch multiplies by n, so an
  activation within ~1e-7 relative of a step ``(j - 1/2)/n`` can land on the neighbouring code,
  as in the bit runtime (docs/runtime.md). FINN lowers this Quant to a MultiThreshold counting
  ``x >= (j - 1/2)/n``, which rounds an exact tie up: a measure-zero difference.
  The metadata property ``dorefa.weight_bits`` keeps each layer's DoReFa W.
- f_a without rounding (the float classifier's input): ``Clip(x, 0, 1)``.
- f_g: training only; nothing in the inference graph (GradQuant is the identity).
- The float first conv and the float classifier stay float: Conv / Gemm with float32 weights.

The file has a fixed batch size (1 unless given), as FINN expects; qonnx's
``cleanup_model(model, override_inpsize=N)`` changes it.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from torch import nn

from ..fileio import atomic_write_bytes
from ..geometry import conv_out_size
from ..nn import QLinear
from .checks import conv_params, pool_params
from .errors import ExportError, write_failure
from .folding import weight_codes
from .graph import Value

QONNX_DOMAIN = "qonnx.custom_op.general"
OPSET = 13
INSTALL_HINT = "QONNX export needs the onnx package: pip install 'dorefa[qonnx]'"


def _onnx():
    """The ``onnx`` module, imported here only (an optional dependency)."""
    try:
        import onnx
    except ImportError:
        raise ExportError(INSTALL_HINT) from None
    return onnx


class QonnxWriter:
    """Collects ONNX nodes, initializers and value infos; its layer methods are those of
    :class:`dorefa.exporter.graph.GraphWriter` (called by :func:`dorefa.exporter.walk.walk`).
    Every value is written at once (no pending folds): ``kind`` is 'float' or the A bits of
    an f_a's output (still a float tensor, codes times 1/n, as QONNX carries it)."""

    def __init__(self, input_shape: tuple, batch_size: int = 1):
        self.onnx = _onnx()
        self.batch = int(batch_size)
        self.nodes: list = []
        self.inits: list = []
        self.infos: list = []
        self.names = {"input"}
        self.input = Value("float", tuple(input_shape), "input")
        self.output: str | None = None
        self.num_classes: int | None = None
        self.weight_bits: dict[str, int] = {}  # layer name -> DoReFa W (for the report)

    # ------------------------------------------------------------------------- writing
    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}#{k}"
        self.names.add(name)
        return name

    def const(self, base: str, array) -> str:
        """A float32 initializer (scalars as 0-d tensors); returns its name."""
        name = self._unique(base)
        arr = np.asarray(array, dtype=np.float32)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def node(
        self,
        op: str,
        inputs: list[str],
        base: str,
        shape: tuple,
        kind="float",
        batched=True,
        **attrs,
    ) -> Value:
        """Append ``op`` (a QONNX op when ``op`` is Quant/BipolarQuant) with one output named
        after ``base`` of per-image ``shape`` (the whole shape when not ``batched``); returns
        the output as a Value."""
        out = self._unique(base)
        domain = QONNX_DOMAIN if op in ("Quant", "BipolarQuant") else ""
        self.nodes.append(
            self.onnx.helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs)
        )
        dims = [self.batch, *shape] if batched else list(shape)
        tp = self.onnx.TensorProto.FLOAT
        self.infos.append(self.onnx.helper.make_tensor_value_info(out, tp, dims))
        return Value(kind, tuple(shape), out)

    def ready(self, v: Value) -> Value:
        return v

    def as_float(self, v: Value) -> Value:
        return v if v.kind == "float" else Value("float", v.shape, v.name)

    def flatten(self, x: Value) -> Value:
        if len(x.shape) == 1:
            return x
        return self.node("Flatten", [x.name], f"{x.name}.flat", (math.prod(x.shape),), axis=1)

    # ------------------------------------------------------------------------- layers
    def float_conv(self, name: str, m: nn.Conv2d, x: Value) -> Value:
        w = m.weight.detach().float().cpu().numpy()
        b = _bias(m, m.out_channels)
        inputs = [x.name, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)]
        return self._conv(name, m, x, inputs)

    def float_linear(self, name: str, m: nn.Linear, x: Value) -> Value:
        x = self.flatten(x)
        w = self.const(f"{name}.weight", m.weight.detach().float().cpu().numpy())
        b = self.const(f"{name}.bias", _bias(m, m.out_features))
        return self.node("Gemm", [x.name, w, b], name, (m.out_features,), transB=1)

    def _conv(self, name: str, m: nn.Conv2d, x: Value, inputs: list[str]) -> Value:
        stride, pad = conv_params(m, name)
        kh, kw = m.kernel_size
        h, w = x.shape[1:]
        shape = (
            m.out_channels,
            conv_out_size(h, kh, stride, pad),
            conv_out_size(w, kw, stride, pad),
        )
        attrs = dict(kernel_shape=[kh, kw], strides=[stride] * 2, pads=[pad] * 4, group=m.groups)
        return self.node("Conv", inputs, name, shape, **attrs)

    def quant_weight(self, name: str, m) -> tuple[str, float]:
        """The layer's weight as integer levels behind a QONNX quantizer, and the scale that
        turns them into f_w's values (module doc): W = 1 -> (sign(w), E) through BipolarQuant;
        W > 1 -> (2p - n, 1/n) through a (W+1)-bit narrow signed Quant."""
        codes, s = weight_codes(m, name)
        k = int(m.w_bits)
        ints = 2.0 * codes.astype(np.float32) - float((1 << k) - 1)
        if isinstance(m, QLinear):
            ints = ints.T  # MatMul(x, W^T): (in, out)
        w = self.const(f"{name}.weight", ints)
        one = self.const(f"{name}.wscale", 1.0)
        shape = tuple(ints.shape)
        self.weight_bits[name] = k
        if k == 1:
            q = self.node("BipolarQuant", [w, one], f"{name}.wq", shape, batched=False)
        else:
            zero = self.const(f"{name}.wzeropt", 0.0)
            bits = self.const(f"{name}.wbits", float(k + 1))
            q = self.node(
                "Quant",
                [w, one, zero, bits],
                f"{name}.wq",
                shape,
                batched=False,
                signed=1,
                narrow=1,
                rounding_mode="ROUND",
            )
        return q.name, s

    def qconv(self, name: str, m, x: Value) -> Value:
        """A quantized conv or linear layer: Conv/MatMul on the quantized integer weights, then
        ``Mul(s)`` (f_w's scale) and ``Add(bias)`` when the layer has a bias."""
        wq, s = self.quant_weight(name, m)
        if isinstance(m, QLinear):
            x = self.flatten(x)
            y = self.node("MatMul", [x.name, wq], f"{name}.dot", (m.out_features,))
            bshape = (m.out_features,)
        else:
            y = self._conv(f"{name}.dot", m, x, [x.name, wq])
            bshape = (m.out_channels, 1, 1)
        y = self.node("Mul", [y.name, self.const(f"{name}.scale", s)], f"{name}.scaled", y.shape)
        if m.bias is None:
            return y
        b = self.const(f"{name}.bias", m.bias.detach().float().cpu().numpy().reshape(bshape))
        return self.node("Add", [y.name, b], name, y.shape)

    def batchnorm(self, name: str, m: nn.modules.batchnorm._BatchNorm, x: Value) -> Value:
        c = m.num_features
        mean, var = (t.detach().float().cpu().numpy() for t in (m.running_mean, m.running_var))
        g = m.weight.detach().float().cpu().numpy() if m.weight is not None else np.ones(c)
        inputs = [
            x.name,
            self.const(f"{name}.weight", g),
            self.const(f"{name}.bias", _bias(m, c)),
            self.const(f"{name}.running_mean", mean),
            self.const(f"{name}.running_var", var),
        ]
        return self.node("BatchNormalization", inputs, name, x.shape, epsilon=float(m.eps))

    def act(self, name: str, k: int, quantize: bool, x: Value) -> Value:
        """f_a: an unsigned A-bit Quant with scale 1/n (clip and rounding), or, without rounding,
        ``Clip(x, 0, 1)``."""
        if not quantize:
            lo, hi = self.const(f"{name}.min", 0.0), self.const(f"{name}.max", 1.0)
            return self.node("Clip", [x.name, lo, hi], name, x.shape)
        inputs = [
            x.name,
            self.const(f"{name}.scale", 1.0 / ((1 << k) - 1)),
            self.const(f"{name}.zeropt", 0.0),
            self.const(f"{name}.bits", float(k)),
        ]
        attrs = dict(signed=0, narrow=0, rounding_mode="ROUND")
        return self.node("Quant", inputs, name, x.shape, kind=int(k), **attrs)

    def pool(self, name: str, m: nn.Module, x: Value) -> Value:
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.node("GlobalAveragePool", [x.name], name, (x.shape[0], 1, 1))
        k, s, p = pool_params(m, name)
        shape = (x.shape[0], *(conv_out_size(v, k, s, p) for v in x.shape[1:]))
        attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
        if isinstance(m, nn.MaxPool2d):
            return self.node("MaxPool", [x.name], name, shape, kind=x.kind, **attrs)
        # torch's AvgPool2d counts the zero padding (count_include_pad=True; False is refused)
        return self.node("AveragePool", [x.name], name, shape, count_include_pad=1, **attrs)

    def add(self, name: str, a: Value, b: Value) -> Value:
        return self.node("Add", [a.name, b.name], name, a.shape)

    def concat(self, name: str, xs: list[Value]) -> Value:
        shape = (sum(v.shape[0] for v in xs), *xs[0].shape[1:])
        kinds = {v.kind for v in xs}
        kind = kinds.pop() if len(kinds) == 1 else "float"
        return self.node("Concat", [v.name for v in xs], name, shape, kind=kind, axis=1)

    # ------------------------------------------------------------------------- the model
    def model(self, meta: dict):
        """The ONNX ModelProto: input ``input`` (batch, C, H, W), output the logits (batch,
        classes), named after the last layer."""
        helper, tp = self.onnx.helper, self.onnx.TensorProto.FLOAT
        infos = [i for i in self.infos if i.name != self.output]
        graph = helper.make_graph(
            self.nodes,
            "dorefa",
            [helper.make_tensor_value_info("input", tp, [self.batch, *self.input.shape])],
            [helper.make_tensor_value_info(self.output, tp, [self.batch, self.num_classes])],
            initializer=self.inits,
            value_info=infos,
        )
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(QONNX_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="dorefa")
        model.ir_version = 8  # opset 13 needs IR >= 7; 8 keeps older onnxruntime builds reading it
        props = {"dorefa.meta": json.dumps(meta, sort_keys=True, default=str)}
        props["dorefa.weight_bits"] = json.dumps(self.weight_bits)
        helper.set_model_props(model, props)
        return model


def _bias(m: nn.Module, n: int) -> np.ndarray:
    b = getattr(m, "bias", None)
    return b.detach().float().cpu().numpy() if b is not None else np.zeros(n, np.float32)


def build_qonnx(model: nn.Module, input_size: int | None = None, meta=None, batch_size=1):
    """The QONNX ModelProto of ``model`` (eval statistics) for a fixed ``batch_size``.

    The ``.dorefa`` exporter's checks and graph walk run first (:func:`dorefa.exporter.build`),
    so a model either format refuses raises the same ExportError here.
    """
    import torch

    from . import _input_shape, build
    from .walk import walk

    header, _ = build(model, input_size)  # the same checks (and the same refusals) as .dorefa
    shape = _input_shape(model, input_size)
    writer = QonnxWriter(shape, batch_size)
    with torch.no_grad():
        walk(model, writer)
    meta = dict(meta or {}) | {"bits": header["bits"], "input_shape": list(shape)}
    return writer.model(meta)


def export_qonnx(
    model: nn.Module,
    path: str | os.PathLike,
    meta: dict | None = None,
    input_size: int | None = None,
    batch_size: int = 1,
) -> dict:
    """Write ``model`` to ``path`` as QONNX (module doc). Returns ``path``, ``size`` (bytes),
    ``layers`` (ONNX node count) and ``weight_bits`` (layer -> DoReFa W of each quantized
    layer). Raises ExportError for what is unsupported, or when ``onnx`` is missing."""
    proto = build_qonnx(model, input_size, meta, batch_size)
    data = proto.SerializeToString()
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise write_failure(path, exc) from None
    props = {p.key: p.value for p in proto.metadata_props}
    return {
        "path": str(path),
        "size": len(data),
        "layers": len(proto.graph.node),
        "weight_bits": json.loads(props["dorefa.weight_bits"]),
    }


__all__ = ["INSTALL_HINT", "QonnxWriter", "build_qonnx", "export_qonnx"]
