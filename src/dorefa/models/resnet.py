"""tensorpack's DoReFa ResNet-18 (examples/DoReFa-Net/resnet-dorefa.py): pre-activation basic
blocks, average-pool downsampling in the shortcut, float 7x7 first conv and float classifier.

Each block: ``BN -> f_a -> (shortcut) ; stem = qconv3x3 -> f_g -> BN -> f_a -> qconv3x3 -> f_g``.
The first block of each stage projects its shortcut (avg-pool by the stride, then a quantized
1x1 conv). We drop tensorpack's ``* 49`` after global pooling (a bug in their model).
"""

from __future__ import annotations

from torch import nn

from ..bits import Bits
from ..nn import ActQuant, GradQuant, QConv2d, QLinear
from . import register_model
from .blocks import edge_bits, scaled


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bits: Bits, project: bool):
        super().__init__()
        self.project = project
        self.pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
        self.bn = nn.BatchNorm2d(cin)
        self.act = ActQuant(bits.a)
        if project:
            self.shortcut = nn.Sequential(QConv2d(cin, cout, 1, w_bits=bits.w), GradQuant(bits.g))
        self.conv_a = QConv2d(cin, cout, 3, padding=1, w_bits=bits.w)
        self.gq_a = GradQuant(bits.g)
        self.bn_a = nn.BatchNorm2d(cout)
        self.act_a = ActQuant(bits.a)
        self.conv_b = QConv2d(cout, cout, 3, padding=1, w_bits=bits.w)
        self.gq_b = GradQuant(bits.g)

    def forward(self, x):
        if self.project:
            x = self.act(self.bn(self.pool(x)))
            shortcut = self.shortcut(x)
        else:
            shortcut = x
            x = self.act(self.bn(x))
        y = self.act_a(self.bn_a(self.gq_a(self.conv_a(x))))
        return shortcut + self.gq_b(self.conv_b(y))


class ResNet18(nn.Module):
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
        c64 = scaled(64, width)
        self.conv0 = QConv2d(
            in_channels,
            c64,
            7,
            stride=2,
            padding=3,
            bias=True,
            w_bits=edge_bits(bits, keep_first_last),
        )
        self.pool0 = nn.MaxPool2d(3, 2, padding=1)
        blocks, cin = [], c64
        for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            cout = scaled(channels, width)
            blocks.append(PreActBlock(cin, cout, stride, bits, project=True))
            blocks.append(PreActBlock(cout, cout, 1, bits, project=False))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn_last = nn.BatchNorm2d(cin)
        self.act_last = ActQuant(bits.a, quantize=not keep_first_last)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = QLinear(cin, num_classes, bias=True, w_bits=edge_bits(bits, keep_first_last))

    def forward(self, x):  # (N, C, 224, 224)
        x = self.pool0(self.conv0(x))  # (N, 64, 56, 56)
        x = self.blocks(x)  # (N, 512, 7, 7)
        x = self.gap(self.act_last(self.bn_last(x)))  # (N, 512, 1, 1)
        return self.fc(self.flatten(x))  # (N, num_classes)


@register_model
def resnet18(**kwargs) -> ResNet18:
    """tensorpack's pre-activation DoReFa ResNet-18."""
    return ResNet18(**kwargs)


resnet18.input_size = ResNet18.input_size
