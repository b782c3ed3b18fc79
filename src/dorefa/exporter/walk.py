"""Walks a DoReFa model as a graph (torch.fx symbolic tracing, which sees residual adds and
concatenations) and writes its runtime graph (:class:`dorefa.exporter.graph.GraphWriter`).

The DoReFa layers (QConv2d, QLinear, ActQuant, GradQuant) and torch's own modules are leaves;
user modules are traced through. Supported: Conv2d / Linear (float first conv and float
classifier, or quantized), BatchNorm1d/2d, ActQuant, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d(1), Flatten, Dropout, Identity, GradQuant, ``+`` / ``torch.add`` of two
tensors, ``torch.cat(dim=1)`` and ``torch.flatten(x, 1)``. Anything else is an ExportError
naming the module or operation and what is not supported.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from ..bits import FLOAT
from ..nn import ActQuant, GradQuant, QConv2d, QLinear
from .errors import ExportError
from .graph import GraphWriter, Value

_IDENTITY = (nn.Dropout, nn.Identity, GradQuant)
_SUPPORTED = (
    "Conv2d, Linear, BatchNorm, ActQuant, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten, "
    "Dropout, Identity, residual adds and channel concatenation"
)


class _InPlaceProxy(fx.Proxy):
    """Records ``x += y`` as ``operator.iadd`` (fx's Proxy records it as ``x + y``), so that the
    walk can refuse one whose x is read again later under another name."""

    def __iadd__(self, other):
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QConv2d, QLinear, ActQuant, GradQuant)):
            return True
        return super().is_leaf_module(m, qualname)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _InPlaceProxy(node, self)


def trace(model: nn.Module) -> fx.Graph:
    """The model's forward as an fx graph (ExportError if it cannot be traced)."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"{type(model).__name__}: torch.fx cannot trace its forward ({first[:200]}); "
            "the exporter needs a forward without data-dependent control flow"
        ) from None


def _module(w: GraphWriter, name: str, m: nn.Module, x: Value) -> Value:
    if isinstance(m, _IDENTITY):
        return x
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        w_bits = getattr(m, "w_bits", FLOAT)
        if w_bits != FLOAT:
            return w.qconv(name, m, x)
        if isinstance(m, nn.Conv2d):
            return w.float_conv(name, m, x)
        return w.float_linear(name, m, x)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return w.batchnorm(name, m, x)
    if isinstance(m, ActQuant):
        if m.k == FLOAT:
            raise ExportError(
                f"{name}: ActQuant with A = 32 (ReLU) has no integer codes; the bit runtime "
                "needs A in 1..8"
            )
        return w.act(name, m.k, m.quantize, x)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return w.pool(name, m, x)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ExportError(f"{name}: Flatten({m.start_dim}, {m.end_dim}) is not supported")
        return w.flatten(x)
    if isinstance(m, nn.ReLU):
        raise ExportError(
            f"{name}: ReLU is an A = 32 activation without integer codes; convert the model "
            "with dorefa.quantize_model and A in 1..8"
        )
    raise ExportError(
        f"{name}: {type(m).__name__} is not supported by the bit runtime (it runs {_SUPPORTED})"
    )


def _function(w: GraphWriter, node: fx.Node, args: list, kwargs: dict) -> Value:
    fn = node.target
    what = getattr(fn, "__name__", str(fn))
    if fn is operator.iadd and _used_after(node.args[0], node):
        raise ExportError(
            f"{node.name}: `x += y` where x is used again after it (under another name: torch "
            "changes that tensor in place, which a graph of values cannot follow); write "
            "x = x + y"
        )
    if fn in (operator.add, operator.iadd, torch.add) and len(args) == 2 and not kwargs:
        if all(isinstance(a, Value) for a in args):
            return w.add(node.name, *args)
    if fn in (torch.cat, torch.concat):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        xs = args[0]
        if dim == 1 and isinstance(xs, (list, tuple)) and all(isinstance(v, Value) for v in xs):
            return w.concat(node.name, list(xs))
        raise ExportError(f"{node.name}: torch.cat is supported along dim=1 only, got dim={dim}")
    if fn is torch.flatten and isinstance(args[0], Value):
        start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
        end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
        if start == 1 and end == -1:
            return w.flatten(args[0])
    raise ExportError(
        f"{node.name}: function {what}{tuple(type(a).__name__ for a in args)} is not supported "
        f"by the bit runtime (it runs {_SUPPORTED})"
    )


def _used_after(value: object, node: fx.Node) -> bool:
    """Whether graph node ``value`` has a user after ``node``."""
    if not isinstance(value, fx.Node):
        return False
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return any(order[u] > order[node] for u in value.users)


def _method(w: GraphWriter, node: fx.Node, args: list, kwargs: dict) -> Value:
    if node.target in ("add", "__add__") and len(args) == 2 and not kwargs:
        if all(isinstance(a, Value) for a in args):
            return w.add(node.name, *args)
    if node.target == "flatten" and isinstance(args[0], Value):
        if tuple(args[1:]) == (1,) and not kwargs:
            return w.flatten(args[0])
    raise ExportError(
        f"{node.name}: tensor method .{node.target}() is not supported by the bit runtime "
        f"(it runs {_SUPPORTED})"
    )


def write_graph(model: nn.Module, input_shape: tuple) -> GraphWriter:
    """The runtime graph of ``model`` for one (C, H, W) input; the writer holds nodes, arrays,
    and ``output`` (the logits' node name)."""
    return walk(model, GraphWriter(input_shape))


def walk(model: nn.Module, w):
    """Call ``w``'s layer methods (those of :class:`GraphWriter`: ``qconv``, ``act``, ``pool``,
    ``add``, ...) along the model's fx graph and return ``w`` with ``output`` and
    ``num_classes`` set; the QONNX writer (:mod:`dorefa.exporter.qonnx`) walks the same way."""
    graph = trace(model)
    modules = dict(model.named_modules())
    env: dict[fx.Node, object] = {}
    for node in graph.nodes:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            if any(v is w.input for v in env.values()):
                raise ExportError(f"{node.name}: the model takes more than one input")
            env[node] = w.input
        elif node.op == "call_module":
            if len(args) != 1 or kwargs or not isinstance(args[0], Value):
                raise ExportError(f"{node.target}: called with {len(args)} arguments")
            env[node] = _module(w, node.target, modules[node.target], args[0])
        elif node.op == "call_function":
            env[node] = _function(w, node, list(args), dict(kwargs))
        elif node.op == "call_method":
            env[node] = _method(w, node, list(args), dict(kwargs))
        elif node.op == "output":
            out = args[0]
            if not isinstance(out, Value):
                raise ExportError("the model must return one tensor (the logits)")
            out = w.as_float(out)
            if len(out.shape) != 1:
                out = w.ready(w.flatten(out))
            w.output, w.num_classes = out.name, out.shape[0]
        else:
            raise ExportError(f"{node.name}: {node.op} {node.target} is not supported")
    return w
