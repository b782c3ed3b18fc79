"""Shared building blocks of the paper's models (docs/method.md section 2)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..bits import FLOAT, Bits
from ..nn import ActQuant, GradQuant, QConv2d, QLinear


def scaled(channels: int, width: float) -> int:
    """Channel count after the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def qconv_bn(
    name: str,
    cin: int,
    cout: int,
    kernel: int,
    bits: Bits,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    pool: nn.Module | None = None,
    quantize_out: bool = True,
) -> list[tuple[str, nn.Module]]:
    """One quantized layer as Algorithm 1 runs it:
    conv (f_w, no bias) -> f_g -> BatchNorm -> [max-pool] -> f_a(clip(., 0, 1))."""
    idx = name.removeprefix("conv").removeprefix("fc")
    layers: list[tuple[str, nn.Module]] = [
        (
            name,
            QConv2d(
                cin, cout, kernel, stride=stride, padding=padding, groups=groups, w_bits=bits.w
            ),
        ),
        (f"gq{idx}", GradQuant(bits.g)),
        (f"bn{idx}", nn.BatchNorm2d(cout)),
    ]
    if pool is not None:
        layers.append((f"pool{idx}", pool))
    layers.append((f"act{idx}", ActQuant(bits.a, quantize=quantize_out)))
    return layers


def qlinear_bn(name: str, fin: int, fout: int, bits: Bits, *, quantize_out: bool = True):
    idx = name.removeprefix("fc")
    return [
        (name, QLinear(fin, fout, w_bits=bits.w)),
        (f"gqfc{idx}", GradQuant(bits.g)),
        (f"bnfc{idx}", nn.BatchNorm1d(fout)),
        (f"actfc{idx}", ActQuant(bits.a, quantize=quantize_out)),
    ]


def edge_bits(bits: Bits, keep_first_last: bool) -> int:
    """Weight bits of the first and last layer: float unless the user asks otherwise."""
    return FLOAT if keep_first_last else bits.w


def sequential(layers: list[tuple[str, nn.Module]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))
