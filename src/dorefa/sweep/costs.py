"""Cost columns of a cell, per image, from one forward pass with hooks on every QConv2d/QLinear:

    MACs(layer)              = output elements * (in_channels / groups) * kh * kw   (linear: in*out)
    inference bit-ops        = sum MACs * W_l * A_l
    training bit-ops         = sum MACs * (W_l*A_l + W_l*G_l + A_l*G_l)
                               (forward, backward to the input, backward to the weights)
    weight storage (bytes)   = sum (weights * W_l + biases * 32) / 8

A float layer (``w_bits == 32``: the first conv and last linear under the paper's
``keep_first_last``) counts W_l = A_l = G_l = 32, i.e. its MACs * 32 * 32 are inside the bit-op
totals; its MACs are also listed on their own (``float_macs``). A quantized layer has W_l = W,
G_l = G and A_l = A, except the network's first layer, whose input is the image (A_l = 32).
BatchNorm parameters are not counted in storage (they fold into thresholds at inference).
"""

from __future__ import annotations

from ..bits import FLOAT, Bits
from .grid import Cell

COST_KEYS = ("macs", "float_macs", "infer_bitops", "train_bitops", "weight_bytes")


def _layer_macs(model, image_size: int, in_channels: int) -> list[tuple[object, int]]:
    """(QConv2d/QLinear module, MACs per image) in call order, from one eval forward pass."""
    import torch

    from ..nn import QConv2d, QLinear

    layers: list[tuple[object, int]] = []

    def hook(module, inputs, output):
        if isinstance(module, QConv2d):
            kh, kw = module.kernel_size
            per_out = module.in_channels // module.groups * kh * kw
            macs = output[0].numel() * per_out
        else:
            macs = module.in_features * module.out_features
        layers.append((module, macs))

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (QConv2d, QLinear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return layers


def layer_costs(model, image_size: int, in_channels: int, bits: Bits) -> dict:
    """MACs, bit-ops and weight storage per image (formulas in the module docstring)."""
    out = {"macs": 0, "float_macs": 0, "infer_bitops": 0, "train_bitops": 0, "weight_bytes": 0.0}
    for i, (m, macs) in enumerate(_layer_macs(model, image_size, in_channels)):
        if m.w_bits == FLOAT:
            w = a = g = FLOAT
            out["float_macs"] += macs
        else:
            w, a, g = m.w_bits, (FLOAT if i == 0 else bits.a), bits.g
        out["macs"] += macs
        out["infer_bitops"] += macs * w * a
        out["train_bitops"] += macs * (w * a + w * g + a * g)
        bias = m.bias.numel() if m.bias is not None else 0
        out["weight_bytes"] += (m.weight.numel() * w + bias * FLOAT) / 8
    return out


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
