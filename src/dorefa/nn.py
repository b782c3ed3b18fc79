"""DoReFa layers: quantized conv/linear with float shadow weights, activation quantizer, and
``quantize_model`` that turns a float network into its DoReFa form (docs/method.md section 2)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .bits import FLOAT, Bits, check_bits
from .quantizers import GradQuant, quantize_activation, quantize_weight

__all__ = [
    "QConv2d",
    "QLinear",
    "ActQuant",
    "GradQuant",
    "quantize_model",
    "set_engine",
    "set_grad_generator",
]


# Mixed precision (torch.autocast): only the conv/linear products run in bf16/fp16. The quantizers
# must stay exact, so f_w runs with autocast off on the float32 shadow weight, a QConv2d/QLinear
# hands its output back in float32 (so f_g sees, and returns, float32 gradients, and BatchNorm
# normalizes in float32), and f_a casts its input to float32. Outside autocast nothing changes.
# The meta device (shapes only, dorefa.summary) has no autocast.
def _autocast_on(t: Tensor) -> bool:
    return t.device.type != "meta" and torch.is_autocast_enabled(t.device.type)


def _float32_region(t: Tensor):
    if t.device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)


def _autocast_output(y: Tensor, like: Tensor) -> Tensor:
    if y.dtype != like.dtype and _autocast_on(y):
        return y.to(like.dtype)
    return y


class QConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose float shadow weight passes through f_w (``quantize_weight``) on every
    forward pass. The optimizer updates the float weight; checkpoints hold it. No bias by default
    (a BatchNorm follows). ``w_bits = 32`` is a plain convolution."""

    int_engine = None  # dorefa.engine.IntLayer when set_engine(model, "int") put it there

    def __init__(self, *args, w_bits: int = 1, bias: bool = False, **kwargs) -> None:
        super().__init__(*args, bias=bias, **kwargs)
        self.w_bits = check_bits(w_bits, "w_bits")

    def quantized_weight(self) -> Tensor:
        with _float32_region(self.weight):
            return quantize_weight(self.weight, self.w_bits)

    def forward(self, x: Tensor) -> Tensor:
        if self.int_engine is not None and (y := self.int_engine.run(self, x)) is not None:
            return y
        y = _autocast_output(self._conv_forward(x, self.quantized_weight(), self.bias), self.weight)
        if x.dim() == 3 and y.requires_grad:  # one (C, H, W) image: f_g takes one scale for
            y._dorefa_unbatched = True  # it, not one per channel (GradQuant reads this)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self.w_bits}"


class QLinear(nn.Linear):
    """``nn.Linear`` with f_w on its float shadow weight (see ``QConv2d``); no bias by default."""

    int_engine = None  # dorefa.engine.IntLayer (see QConv2d)

    def __init__(
        self, in_features: int, out_features: int, *, w_bits: int = 1, bias: bool = False, **kwargs
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.w_bits = check_bits(w_bits, "w_bits")

    def quantized_weight(self) -> Tensor:
        with _float32_region(self.weight):
            return quantize_weight(self.weight, self.w_bits)

    def forward(self, x: Tensor) -> Tensor:
        if self.int_engine is not None and (y := self.int_engine.run(self, x)) is not None:
            return y
        return _autocast_output(F.linear(x, self.quantized_weight(), self.bias), self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self.w_bits}"


class ActQuant(nn.Module):
    """f_a as a module: ``quantize_k(clip(x, 0, 1))``; ``k = 32`` is ReLU.

    ``quantize=False`` keeps the clip but not the rounding: the input of the float last layer
    is clipped to [0, 1] and left in full precision (docs/method.md section 2).
    """

    def __init__(self, k: int, quantize: bool = True) -> None:
        super().__init__()
        self.k = check_bits(k, "activation bits")
        self.quantize = quantize
        # set by the int engine: tag each output with its codes (dorefa.engine.tag_codes)
        self.emit_codes = False

    def forward(self, x: Tensor) -> Tensor:
        if _autocast_on(x):
            with _float32_region(x):
                return quantize_activation(x.float(), self.k, self.quantize)
        if not (
            self.emit_codes
            and self.quantize
            and self.k != FLOAT
            and x.device.type == "cpu"
            and not torch.is_inference_mode_enabled()  # inference tensors have no version
        ):
            return quantize_activation(x, self.k, self.quantize)
        from .engine import tag_codes
        from .engine_act import act_quant_train

        native = act_quant_train(x, self.k)  # one pass each way, the same bits
        if native is not None:
            y, codes = native
            return y if codes is None else tag_codes(y, self.k, codes, nan_free=True)
        codes: list = []
        return tag_codes(quantize_activation(x, self.k, True, codes), self.k, codes[0])

    def extra_repr(self) -> str:
        return f"k={self.k}" + ("" if self.quantize else ", quantize=False")


def set_engine(model: nn.Module, engine: str, bits: Bits | None = None) -> dict[str, str]:
    """Train ``model``'s quantized layers on ``engine``: "torch" (float32 emulation, the
    default) or "int" (the integer kernels: :func:`dorefa.engine.set_engine`, which this is).
    Returns, per QConv2d/QLinear, "int" or "torch: <why>"."""
    from .engine import set_engine as _set_engine

    return _set_engine(model, engine, bits)


def set_grad_generator(model: nn.Module, generator: torch.Generator | None) -> int:
    """Point every GradQuant of ``model`` at ``generator``; returns how many were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, GradQuant):
            module.generator = generator
            count += 1
    return count


def _copy_params(src: nn.Module, dst: nn.Module) -> nn.Module:
    """``dst`` holding ``src``'s own Parameters (new copies had untied tied weights, made frozen
    layers trainable again and left an optimizer built before on the old tensors); values
    copied where src computes its weight (legacy weight_norm)."""
    dst = dst.to(device=src.weight.device, dtype=src.weight.dtype)
    for name in ("weight", "bias"):
        value = getattr(src, name)
        if isinstance(value, nn.Parameter):
            setattr(dst, name, value)
        elif value is not None:
            with torch.no_grad():
                getattr(dst, name).copy_(value)
    return dst


def _quantized_copy(layer: nn.Module, w_bits: int) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        q = QConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            w_bits=w_bits,
            padding_mode=layer.padding_mode,
        )
    else:
        q = QLinear(
            layer.in_features, layer.out_features, bias=layer.bias is not None, w_bits=w_bits
        )
    return _copy_params(layer, q)


_CONVERTED = (nn.Conv2d, nn.Linear)  # exactly these types: a subclass's forward is not ours
# Activations quantize_model leaves as they are (only nn.ReLU becomes f_a).
_OTHER_ACTIVATIONS = (
    nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus,
)  # fmt: skip


def _traced_graph(model: nn.Module, relus: set[str]):
    """The fx graph of ``model``'s forward, or None where it cannot be traced (a warning where
    it has nn.ReLU modules, whose calls then go unchecked). What tracing assigned to the
    modules (a counter, a cached proxy) is undone."""
    import warnings

    saved = [(m, dict(m.__dict__)) for m in model.modules()]
    try:
        return torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 (a data-dependent forward: nothing to count)
        if relus:
            warnings.warn(
                f"quantize_model cannot trace this model's forward ({type(exc).__name__}), so it "
                "cannot check that no nn.ReLU module is called twice: give each use its own "
                "nn.ReLU (a shared one becomes one f_a, and the one before the last layer only "
                "clips)",
                UserWarning,
                stacklevel=4,
            )
        return None
    finally:
        for m, attrs in saved:
            m.__dict__.clear()
            m.__dict__.update(attrs)


_LAYER_FNS = (F.conv1d, F.conv2d, F.conv3d, F.linear, torch.conv2d, torch.matmul)
_RELU_FNS = (F.relu, torch.relu, torch.relu_, F.relu_)


def _check_relu_calls(model: nn.Module, graph, relus: set[str]) -> None:
    """ValueError for an nn.ReLU module called twice; warnings for ReLUs on the outputs (after
    the last conv/linear) and for functional ReLUs (F.relu, torch.relu, x.relu()), which stay
    float: a hostile review found a model of F.relu calls trained with no f_a, unsaid."""
    import warnings

    calls: dict[str, int] = {}
    after_last: list[str] = []  # ReLUs called after the last conv/linear: on the outputs
    functional: list[str] = []
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _LAYER_FNS:
            after_last = []  # a layer traced into (a parametrized conv)
        if (node.op == "call_function" and node.target in _RELU_FNS) or (
            node.op == "call_method" and node.target in ("relu", "relu_")
        ):
            functional.append(node.name)
        if node.op != "call_module":
            continue
        if isinstance(modules.get(node.target), (nn.modules.conv._ConvNd, nn.Linear)):
            after_last = []
        elif node.target in relus:
            calls[node.target] = calls.get(node.target, 0) + 1
            after_last.append(node.target)
    if functional:
        warnings.warn(
            f"the forward calls ReLU as a function ({', '.join(functional[:4])}): "
            "quantize_model converts nn.ReLU modules only, so these stay float ReLUs and "
            "their outputs are not quantized by f_a; use one nn.ReLU module per use",
            UserWarning,
            stacklevel=4,
        )
    if after_last:
        warnings.warn(
            f"{', '.join(after_last)} (nn.ReLU) acts on the model's outputs, after its last "
            "conv/linear: quantize_model makes it f_a (clipped to [0, 1] and rounded); "
            "remove it if the outputs are logits",
            UserWarning,
            stacklevel=4,
        )
    shared = {name: n for name, n in calls.items() if n > 1}
    if shared:
        name, n = next(iter(shared.items()))
        raise ValueError(
            f"{name} (an nn.ReLU) is called {n} times in forward: quantize_model makes each "
            "ReLU module one f_a, so give each use its own nn.ReLU (torchvision's "
            "BasicBlock shares self.relu)"
        )


def _check_convertible(model: nn.Module, kept: tuple = ()) -> None:
    """ValueError for an nn.ReLU module called more than once in forward (each module becomes
    one f_a, and the one before the last layer only a clip: every use would follow it); warnings
    naming the layers quantize_model leaves float (other activations, functional ReLUs,
    parametrized convs and linears: ``type`` is not nn.Conv2d / nn.Linear), a ReLU on the
    outputs, the hooks of the layers it replaces (all but ``kept``), or that it cannot trace the
    forward."""
    import warnings

    from torch.nn.utils import parametrize

    relus = {name for name, m in model.named_modules() if type(m) is nn.ReLU}
    graph = _traced_graph(model, relus)
    if graph is not None:
        _check_relu_calls(model, graph, relus)
    left = [
        name
        for name, m in model.named_modules()
        if isinstance(m, _OTHER_ACTIVATIONS)
        or (isinstance(m, (nn.Conv2d, nn.Linear)) and parametrize.is_parametrized(m))
        or (isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and type(m) not in _CONVERTED)
    ]  # other convs (Conv1d, ConvTranspose2d, ...) and subclasses: their forward is not ours
    if left:
        warnings.warn(
            f"quantize_model converts nn.Conv2d, nn.Linear and nn.ReLU only; {', '.join(left)} "
            "stay float (use nn.ReLU for f_a, plain nn.Conv2d / nn.Linear for quantized "
            "weights; remove a parametrization first with "
            "torch.nn.utils.parametrize.remove_parametrizations)",
            UserWarning,
            stacklevel=3,
        )
    hooked = [
        name
        for name, m in model.named_modules()
        if type(m) in _CONVERTED
        and not any(m is k for k in kept)
        and (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
    ]
    if hooked:
        warnings.warn(
            f"quantize_model replaces {', '.join(hooked)}, whose hooks (or legacy weight_norm) "
            "stay on the float module: register them on the quantized one",
            UserWarning,
            stacklevel=3,
        )


def quantize_model(model: nn.Module, bits: Bits | str, keep_first_last: bool = True) -> nn.Module:
    """Turn a float model built from Conv2d/Linear/BatchNorm/ReLU into its DoReFa form, in place.

    * every Conv2d/Linear becomes ``Sequential(QConv2d|QLinear, GradQuant(g))`` with the same
      weights (its state-dict keys gain a ``.0``);
    * every ReLU becomes ``ActQuant(a)`` (a ReLU module called twice in forward is refused;
      other activations and parametrized layers stay float, with a warning);
    * a module registered under several names stays one module (its uses share the quantized
      layer, and its Parameters: the converted layers hold the float ones, so tied weights,
      ``requires_grad`` and an optimizer's references carry over); a model already quantized
      is refused; a ReLU the traced forward calls after the last Conv2d/Linear (on the
      outputs) is warned about;
    * with ``keep_first_last`` (the default, as in the paper), the first Conv2d/Linear in module
      order keeps float weights and its input, and the last one keeps float weights, no f_g
      after it, and its input is clipped to [0, 1] but not quantized (the ReLU after the last
      quantized layer becomes ``ActQuant(a, quantize=False)``).

    "First" and "last" are by module registration order, which is the data-flow order for
    sequential models; pass a model whose order differs with ``keep_first_last=False`` and handle
    those layers yourself. Returns the model.
    """
    bits = Bits.parse(bits)
    if any(isinstance(m, (QConv2d, QLinear, ActQuant, GradQuant)) for m in model.modules()):
        raise ValueError(
            "the model is already quantized (it holds dorefa modules): quantize the float model "
            "it came from, with the bits you want"
        )  # a second call with other bits had kept the first call's silently
    layers = [m for m in model.modules() if type(m) in _CONVERTED]
    if not layers:
        raise ValueError("quantize_model found no nn.Conv2d or nn.Linear layer to quantize")
    first, last = layers[0], layers[-1]
    _check_convertible(model, (first, last) if keep_first_last else ())
    order = {id(m): i for i, m in enumerate(model.modules())}
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    last_relu = None
    if keep_first_last and bits.a != FLOAT:
        before_last = [r for r in relus if order[id(r)] < order[id(last)]]
        last_relu = before_last[-1] if before_last else None
    made: dict[int, nn.Module] = {}  # a module registered under several names: one conversion

    def converted(child: nn.Module) -> nn.Module | None:
        if type(child) in _CONVERTED:
            if keep_first_last and child in (first, last):
                return None
            return nn.Sequential(_quantized_copy(child, bits.w), GradQuant(bits.g))
        if isinstance(child, nn.ReLU):
            return ActQuant(bits.a, quantize=child is not last_relu)
        return None

    def convert(parent: nn.Module) -> None:
        for name, child in list(parent._modules.items()):  # every name, shared or not
            if child is None:
                continue
            if id(child) not in made:
                new = converted(child)
                if new is None:
                    convert(child)
                made[id(child)] = new if new is not None else child
            setattr(parent, name, made[id(child)])

    convert(model)
    return model
