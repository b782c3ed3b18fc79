"""The paper's ImageNet AlexNet (section 3.2) as tensorpack's alexnet-dorefa.py runs it:
BatchNorm instead of LRN, 12x12 stride-4 float first conv with bias, grouped convs, two
quantized fc-4096 layers, float fc-1000 classifier. 224x224 input; shapes for width 1.0:

    conv0  96 12x12 /4 valid, float, bias -> f_a             (N,  96, 54, 54)
    conv1 256 5x5 same, groups 2 -> maxpool 3/2 same         (N, 256, 27, 27)
    conv2 384 3x3 same -> maxpool 3/2 same                   (N, 384, 14, 14)
    conv3 384 3x3 same, groups 2                             (N, 384, 14, 14)
    conv4 256 3x3 same, groups 2 -> maxpool 3/2 valid        (N, 256,  6,  6)
    fc0 4096, fc1 4096 (input of the last layer clipped, not quantized), fct classes (float)
"""

from __future__ import annotations

from torch import nn

from ..bits import Bits
from ..nn import ActQuant, QConv2d, QLinear
from . import register_model
from .blocks import edge_bits, qconv_bn, qlinear_bn, scaled, sequential


class AlexNet(nn.Module):
    input_size = 224

    def __init__(
        self,
        bits: Bits,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
        keep_first_last: bool = True,
    ):
        super().__init__()
        self.bits, self.width, self.keep_first_last = bits, width, keep_first_last
        c96, c256, c384, c4096 = (scaled(c, width) for c in (96, 256, 384, 4096))
        c96, c256, c384 = (c + (c % 2) for c in (c96, c256, c384))  # groups of 2 need even
        layers = [
            (
                "conv0",
                QConv2d(
                    in_channels,
                    c96,
                    12,
                    stride=4,
                    bias=True,
                    w_bits=edge_bits(bits, keep_first_last),
                ),
            ),
            ("act0", ActQuant(bits.a)),
        ]
        layers += qconv_bn(
            "conv1", c96, c256, 5, bits, padding=2, groups=2, pool=nn.MaxPool2d(3, 2, padding=1)
        )
        layers += qconv_bn(
            "conv2", c256, c384, 3, bits, padding=1, pool=nn.MaxPool2d(3, 2, padding=1)
        )
        layers += qconv_bn("conv3", c384, c384, 3, bits, padding=1, groups=2)
        layers += qconv_bn(
            "conv4", c384, c256, 3, bits, padding=1, groups=2, pool=nn.MaxPool2d(3, 2)
        )
        layers += [("flatten", nn.Flatten())]
        layers += qlinear_bn("fc0", c256 * 6 * 6, c4096, bits)
        layers += qlinear_bn("fc1", c4096, c4096, bits, quantize_out=not keep_first_last)
        self.features = sequential(layers)
        self.fc = QLinear(c4096, num_classes, bias=True, w_bits=edge_bits(bits, keep_first_last))

    def forward(self, x):  # x: (N, C, 224, 224)
        return self.fc(self.features(x))  # (N, num_classes)


@register_model
def alexnet(**kwargs) -> AlexNet:
    """The paper's BN AlexNet (grouped convs, 12x12 float first conv)."""
    return AlexNet(**kwargs)


alexnet.input_size = AlexNet.input_size
