"""What the bit runtime can run: one check on (model name, bits) used by export and the sweep,
and the module parameters the runtime supports (square stride, zero padding, no dilation)."""

from __future__ import annotations

from torch import nn

from ..bits import FLOAT, Bits
from .errors import ExportError

# registered models the exporter walks as graphs (residual adds included)
EXPORTABLE_MODELS = ("svhn", "alexnet", "resnet18")


def model_names() -> dict[type, str]:
    """Registered model classes -> their names."""
    from ..models.alexnet import AlexNet
    from ..models.resnet import ResNet18
    from ..models.svhn import SVHNNet

    return {SVHNNet: "svhn", AlexNet: "alexnet", ResNet18: "resnet18"}


def bits_reason(bits, keep_first_last: bool) -> str | None:
    """Why a model trained with ``bits`` (and ``keep_first_last``) cannot run, or None."""
    if not keep_first_last:
        return (
            "models trained with --quantize-first-last (quantized first conv on "
            "the float image) are not supported by the bit runtime"
        )
    try:
        b = Bits.parse(bits)
    except ValueError as exc:
        return f"{exc}; the bit runtime needs W and A in 1..8"
    if b.a == FLOAT:
        return (
            f"bits {b}: A = 32 (unbounded ReLU activations) has no integer "
            "codes; the bit runtime needs A in 1..8"
        )
    if b.w == FLOAT:
        return (
            f"bits {b}: W = 32 (float weights in the middle layers) cannot run "
            "on popcount kernels; the bit runtime needs W in 1..8"
        )
    return None


def exportable(model_name: str, bits, keep_first_last: bool = True) -> str | None:
    """None if the bit runtime runs model ``model_name`` trained with ``bits`` (a Bits or
    anything ``Bits.parse`` takes), else the reason it cannot (what :func:`export` raises).

    Runnable: a registered model in EXPORTABLE_MODELS (``svhn``, ``alexnet``, ``resnet18``),
    W and A in 1..8 (G is a training-only setting) and the paper's float first and last layers
    (``keep_first_last``).
    """
    if model_name not in EXPORTABLE_MODELS:
        return (
            f"{model_name} is not a model the exporter knows ({', '.join(EXPORTABLE_MODELS)}); "
            "build yours with dorefa.quantize_model and export the module"
        )
    return bits_reason(bits, keep_first_last)


def check_model(model: nn.Module) -> None:
    """Raise ExportError with :func:`exportable`'s reason for a registered model, or the bits
    reason for any model with ``bits``; a user model's layers are checked one by one later."""
    bits = getattr(model, "bits", None)
    keep = getattr(model, "keep_first_last", True) is not False
    names = model_names()
    if type(model) in names:
        reason = exportable(names[type(model)], bits, keep)
    else:
        reason = bits_reason(bits, keep) if bits is not None else None
    if reason:
        raise ExportError(reason)


def square(v, name: str, what: str) -> int:
    """An int or a tuple of equal ints as one int (else ExportError)."""
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise ExportError(f"{name}: non-square {what} {v} is not supported")
        return int(v[0])
    return int(v)


def conv_params(m: nn.Conv2d, name: str) -> tuple[int, int]:
    """(stride, padding) of a square, zero-padded, undilated conv."""
    st, pd, dl = m.stride, m.padding, m.dilation
    if isinstance(pd, str) or dl != (1, 1) or m.padding_mode != "zeros":
        raise ExportError(
            f"{name}: only zero padding without dilation is supported, got padding {pd!r} "
            f"mode {m.padding_mode} dilation {dl}"
        )
    return square(st, name, "stride"), square(pd, name, "padding")


def pool_params(m: nn.MaxPool2d | nn.AvgPool2d, name: str) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a square pool without ceil_mode/dilation/divisor."""
    k = square(m.kernel_size, name, "kernel")
    s = square(m.stride or m.kernel_size, name, "stride")
    p = square(m.padding, name, "padding")
    d = square(getattr(m, "dilation", 1), name, "dilation")
    if m.ceil_mode or d != 1:
        raise ExportError(f"{name}: pooling with ceil_mode or dilation is not supported")
    if isinstance(m, nn.AvgPool2d) and (
        m.divisor_override is not None or (p and not m.count_include_pad)
    ):
        raise ExportError(
            f"{name}: avg-pool with divisor_override or count_include_pad=False is not supported"
        )
    return k, s, p
