"""The float-equivalent torch network of a DoReFa model, and its int8 version, for benchmarks.

Same convolutions, BatchNorms, pools and linears with the same shapes; f_a becomes ReLU (moved
before a max-pool, where it commutes, so conv+BN+ReLU fuse for int8). The quantizers are gone:
this is what the same network costs in plain torch. Residual adds go through
``torch.ao.nn.quantized.FloatFunctional`` so eager post-training quantization can quantize them.

- :func:`float_equivalent` builds it (svhn / alexnet chains, pre-activation ResNet-18);
- :func:`int8_model` quantizes it with torch.ao.quantization eager PTQ on one engine
  (``x86`` or ``fbgemm``), conv+BN+ReLU, BN+ReLU and linear+BN fused.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional

from dorefa.models.resnet import PreActBlock, ResNet18
from dorefa.nn import ActQuant, QConv2d, QLinear


def conv_of(q: QConv2d) -> nn.Conv2d:
    """A plain Conv2d with ``q``'s shape and (unquantized) weights."""
    conv = nn.Conv2d(
        q.in_channels,
        q.out_channels,
        q.kernel_size,
        q.stride,
        q.padding,
        groups=q.groups,
        bias=q.bias is not None,
    )
    conv.load_state_dict(q.state_dict())
    return conv


def linear_of(q: QLinear) -> nn.Linear:
    fc = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
    fc.load_state_dict(q.state_dict())
    return fc


def bn_of(b: nn.Module) -> nn.Module:
    new = type(b)(b.num_features)
    new.load_state_dict(b.state_dict())
    return new


def fuse_runs(body: list[nn.Module], prefix: str) -> list[list[str]]:
    """The fusable runs of ``body`` (named ``prefix + index``): conv [+BN] [+ReLU], BN + ReLU,
    linear + BN1d or linear + ReLU (the patterns torch.ao.quantization.fuse_modules knows)."""
    kinds = [type(m) for m in body]
    groups, i = [], 0
    while i < len(body):
        if kinds[i] is nn.Conv2d:
            j = i + 1
            j += j < len(body) and kinds[j] is nn.BatchNorm2d
            j += j < len(body) and kinds[j] is nn.ReLU
        elif kinds[i] is nn.BatchNorm2d:
            j = i + 1 + (i + 1 < len(body) and kinds[i + 1] is nn.ReLU)
        elif kinds[i] is nn.Linear:
            j = i + 1 + (i + 1 < len(body) and kinds[i + 1] in (nn.BatchNorm1d, nn.ReLU))
        else:
            j = i + 1
        if j - i > 1:
            groups.append([f"{prefix}{k}" for k in range(i, j)])
        i = j
    return groups


class ChainFloatNet(nn.Module):
    """The float equivalent of a chain model (svhn, alexnet): the model's modules in order,
    QConv2d -> Conv2d, QLinear -> Linear, ActQuant -> ReLU, max-pools after the ReLU."""

    def __init__(self, dorefa_model: nn.Module):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        mods = [
            m
            for m in dorefa_model.modules()
            if not list(m.children()) or isinstance(m, (QConv2d, QLinear))
        ]
        body, pending_pool = [], None
        for m in mods:
            if isinstance(m, QConv2d):
                body.append(conv_of(m))
            elif isinstance(m, QLinear):
                body.append(linear_of(m))
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                body.append(bn_of(m))
            elif isinstance(m, nn.MaxPool2d):
                pending_pool = nn.MaxPool2d(m.kernel_size, m.stride, m.padding)
            elif isinstance(m, nn.Flatten):
                body.append(nn.Flatten())
            elif isinstance(m, ActQuant):
                body.append(nn.ReLU())
                if pending_pool is not None:
                    body, pending_pool = body + [pending_pool], None
        if not isinstance(body[-1], nn.Linear):  # svhn's flatten sits outside its features
            raise ValueError(f"{type(dorefa_model).__name__}: expected a linear classifier last")
        self.body = nn.Sequential(*body)
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.fuse_groups = fuse_runs(body, "body.")

    def forward(self, x):  # (N, C, H, W) -> (N, classes)
        return self.dequant(self.body(self.quant(x)))


class FloatPreActBlock(nn.Module):
    """:class:`dorefa.models.resnet.PreActBlock` in float: the add is a FloatFunctional."""

    def __init__(self, b: PreActBlock, prefix: str):
        super().__init__()
        self.project = b.project
        self.pool = copy.deepcopy(b.pool)  # AvgPool2d(stride) or Identity
        self.bn, self.relu = bn_of(b.bn), nn.ReLU()
        if b.project:
            self.shortcut = conv_of(b.shortcut[0])
        self.conv_a, self.bn_a, self.relu_a = conv_of(b.conv_a), bn_of(b.bn_a), nn.ReLU()
        self.conv_b = conv_of(b.conv_b)
        self.add = FloatFunctional()
        self.fuse_groups = [
            [f"{prefix}bn", f"{prefix}relu"],
            [f"{prefix}conv_a", f"{prefix}bn_a", f"{prefix}relu_a"],
        ]

    def forward(self, x):
        if self.project:
            x = self.relu(self.bn(self.pool(x)))
            shortcut = self.shortcut(x)
        else:
            shortcut = x
            x = self.relu(self.bn(x))
        y = self.relu_a(self.bn_a(self.conv_a(x)))
        return self.add.add(shortcut, self.conv_b(y))


class ResNetFloatNet(nn.Module):
    """The float equivalent of :class:`dorefa.models.resnet.ResNet18`."""

    def __init__(self, m: ResNet18):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv0 = conv_of(m.conv0)
        self.pool0 = nn.MaxPool2d(m.pool0.kernel_size, m.pool0.stride, m.pool0.padding)
        blocks = [FloatPreActBlock(b, f"blocks.{i}.") for i, b in enumerate(m.blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.bn_last, self.relu_last = bn_of(m.bn_last), nn.ReLU()
        self.gap, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear_of(m.fc)
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.fuse_groups = [g for b in blocks for g in b.fuse_groups]
        self.fuse_groups.append(["bn_last", "relu_last"])

    def forward(self, x):  # (N, C, 224, 224)
        x = self.blocks(self.pool0(self.conv0(self.quant(x))))
        x = self.gap(self.relu_last(self.bn_last(x)))
        return self.dequant(self.fc(self.flatten(x)))  # (N, classes)


def float_equivalent(dorefa_model: nn.Module) -> nn.Module:
    """The float-equivalent network (eval mode) with a ``fuse_groups`` attribute for int8."""
    if isinstance(dorefa_model, ResNet18):
        return ResNetFloatNet(dorefa_model).eval()
    return ChainFloatNet(dorefa_model).eval()


class Int8Net(nn.Module):
    """A converted int8 network that sets its quantized engine before every call (the engine
    is process-wide; the packed weights were made for this one)."""

    def __init__(self, net: nn.Module, engine: str):
        super().__init__()
        self.net, self.engine = net, engine

    def forward(self, x):
        torch.backends.quantized.engine = self.engine
        return self.net(x)


def int8_model(float_net: nn.Module, calib: list[torch.Tensor], engine: str = "x86") -> Int8Net:
    """Eager post-training static quantization of ``float_net`` on ``engine``: fuse, observe
    ``calib`` batches with the engine's default qconfig, convert."""
    from torch.ao import quantization as tq

    torch.backends.quantized.engine = engine
    m = copy.deepcopy(float_net).eval()
    m = tq.fuse_modules(m, m.fuse_groups)
    m.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(m, inplace=True)
    with torch.no_grad():
        for x in calib:
            m(x)
    tq.convert(m, inplace=True)
    return Int8Net(m, engine).eval()
