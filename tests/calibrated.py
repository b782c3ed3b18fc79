"""Untrained models with non-trivial BatchNorm, for the export and runtime tests."""

import torch

from dorefa.models import create_model


def calibrated(name, bits, width, in_channels, size, seed=0):
    """An untrained model whose BN statistics and affine parameters are non-trivial."""
    torch.manual_seed(seed)
    m = create_model(name, bits=bits, num_classes=10, in_channels=in_channels, width=width)
    with torch.no_grad():
        m.train()
        for _ in range(2):
            m(torch.rand(16, in_channels, size, size))
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.weight.uniform_(-1, 2)  # negative gammas exercise direction -1
                mod.bias.uniform_(-0.5, 0.5)
    return m.eval()
