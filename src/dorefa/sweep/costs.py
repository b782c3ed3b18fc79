"""Cost columns of a cell, per image: the totals of :func:`dorefa.summary` (one forward
pass with a hook on every layer; ``dorefa summary`` prints the same figures per layer):

    macs          sum over conv/linear layers of output elements * (in_channels / groups) * kh * kw
                  (linear: in * out)
    float_macs    the MACs of float-weight layers (W_l = 32)
    infer_bitops  sum MACs * W_l * A_l
    train_bitops  sum MACs * (W_l*A_l + W_l*G_l + A_l*G_l)
                  (forward, backward to the input, backward to the weights)
    weight_bytes  sum (weights * W_l + biases * 32) / 8 over conv/linear layers

W_l is the layer's weight bits, A_l the bits of its input (the k of the f_a that produced it;
32 for the image, e.g. a quantized first layer under ``--quantize-first-last``), G_l the k of
the f_g on its output (32 if none). A float layer (the first conv and last linear under the
paper's ``keep_first_last``) has W_l = A_l = G_l = 32, i.e. its MACs * 32 * 32 are inside the
bit-op totals; its MACs are also listed on their own (``float_macs``). BatchNorm parameters are
not counted in ``weight_bytes`` (they fold into thresholds at inference; the summary's
``bytes`` total counts them as float).
"""

from __future__ import annotations

from ..bits import Bits
from .grid import Cell

COST_KEYS = ("macs", "float_macs", "infer_bitops", "train_bitops", "weight_bytes")
_SUMMARY_KEYS = ("macs", "float_macs", "bitops", "train_bitops", "weight_bytes")


def layer_costs(model, image_size: int, in_channels: int, bits: Bits | None = None) -> dict:
    """The cost columns (module docstring) of ``model`` on a ``in_channels x image_size x
    image_size`` image. Every layer's bits are read from the model itself; ``bits`` is accepted
    for the callers that pass the cell's bits and not needed."""
    from ..model_summary import summary

    totals = summary(model, (in_channels, image_size, image_size)).totals
    return {key: totals[src] for key, src in zip(COST_KEYS, _SUMMARY_KEYS, strict=True)}


def cell_costs(model_name: str, cell: Cell, num_classes: int, in_channels: int) -> dict:
    """:func:`layer_costs` of a freshly built model of ``cell`` (costs do not depend on weights)."""
    from ..models import create_model, input_size

    model = create_model(
        model_name,
        bits=cell.bits,
        num_classes=num_classes,
        in_channels=in_channels,
        width=cell.width,
    )
    return layer_costs(model, input_size(model_name), in_channels, cell.bits)
