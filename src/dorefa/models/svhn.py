"""The paper's SVHN "Model A" family (section 3.1), as tensorpack's svhn-digit-dorefa.py runs it.

40x40 input. Shapes below are for width 1.0 (Model A); width 0.5/0.25/0.125 give Models B/C/D.

    conv0  48 5x5 valid, float, bias     (N, 48, 36, 36) -> maxpool 2 -> f_a     (N, 48, 18, 18)
    conv1  64 3x3 same                    (N, 64, 18, 18)
    conv2  64 3x3 same  -> maxpool 2      (N, 64,  9,  9)
    conv3 128 3x3 valid                   (N, 128, 7,  7)
    conv4 128 3x3 same                    (N, 128, 7,  7)
    conv5 128 3x3 valid                   (N, 128, 5,  5)
    dropout 0.5
    conv6 512 5x5 valid                   (N, 512, 1,  1) -> BN -> clip [0,1] (not quantized)
    fc    10, float, bias                 (N, 10)
"""

from __future__ import annotations

from torch import nn

from ..bits import Bits
from ..nn import ActQuant, QConv2d, QLinear
from . import register_model
from .blocks import edge_bits, qconv_bn, scaled, sequential


class SVHNNet(nn.Module):
    input_size = 40

    def __init__(
        self,
        bits: Bits,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        keep_first_last: bool = True,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.bits, self.width, self.keep_first_last = bits, width, keep_first_last
        c48, c64, c128, c512 = (scaled(c, width) for c in (48, 64, 128, 512))
        layers = [
            (
                "conv0",
                QConv2d(in_channels, c48, 5, bias=True, w_bits=edge_bits(bits, keep_first_last)),
            ),
            ("pool0", nn.MaxPool2d(2)),
            ("act0", ActQuant(bits.a)),
        ]
        layers += qconv_bn("conv1", c48, c64, 3, bits, padding=1)
        layers += qconv_bn("conv2", c64, c64, 3, bits, padding=1, pool=nn.MaxPool2d(2))
        layers += qconv_bn("conv3", c64, c128, 3, bits)
        layers += qconv_bn("conv4", c128, c128, 3, bits, padding=1)
        layers += qconv_bn("conv5", c128, c128, 3, bits)
        layers += [("dropout", nn.Dropout(dropout))]
        layers += qconv_bn("conv6", c128, c512, 5, bits, quantize_out=not keep_first_last)
        self.features = sequential(layers)
        self.flatten = nn.Flatten()
        self.fc = QLinear(c512, num_classes, bias=True, w_bits=edge_bits(bits, keep_first_last))

    def forward(self, x):  # x: (N, C, 40, 40) in [0, 1]
        return self.fc(self.flatten(self.features(x)))  # (N, num_classes)


@register_model
def svhn(**kwargs) -> SVHNNet:
    """SVHN Model A (width 1.0); widths 0.5/0.25/0.125 are the paper's Models B/C/D."""
    return SVHNNet(**kwargs)


svhn.input_size = SVHNNet.input_size
