"""Model registry: ``create_model(name, bits=..., ...)`` and ``list_models()`` (timm style).

Every model takes ``bits`` (a Bits or "W,A,G"), ``num_classes``, ``in_channels``, ``width`` (channel
multiplier: the paper's SVHN models B, C, D are widths 0.5, 0.25, 0.125) and ``keep_first_last``
(float first conv and last linear, the paper's default). The layer structure does not depend on
``bits`` (32 bits = identity quantizers), so a float checkpoint loads into a quantized model.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..bits import Bits

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model factory under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def input_size(name: str) -> int:
    """The input resolution (pixels, square) a registered model expects."""
    _load_builtin()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_MODELS))}")
    return _MODELS[name].input_size


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_MODELS)


def create_model(
    name: str,
    bits: Bits | str = "32,32,32",
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    keep_first_last: bool = True,
    **kwargs,
) -> nn.Module:
    """Build a registered model. Raises ValueError for unknown names, listing the known ones."""
    _load_builtin()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_MODELS))}")
    if not (isinstance(width, (int, float)) and 0 < width <= 4):
        raise ValueError(f"width must be a number in (0, 4], got {width!r}")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not (isinstance(in_channels, int) and in_channels >= 1):
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    return _MODELS[name](
        bits=Bits.parse(bits),
        num_classes=num_classes,
        in_channels=in_channels,
        width=float(width),
        keep_first_last=keep_first_last,
        **kwargs,
    )


def _load_builtin() -> None:
    from . import alexnet, resnet, svhn  # noqa: F401  (registration side effect)


__all__ = ["create_model", "input_size", "list_models", "register_model"]
