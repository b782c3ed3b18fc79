"""Optimizer, learning-rate schedule and autocast dtype of a training run.

Adam (the paper's) or momentum SGD (recipes); the paper's schedule halves the learning rate at
50% of the epochs, ``lr_milestones`` (recipes) multiply it at given epochs instead, and
``until_flat`` (recipes) continues a run past its epochs until its test accuracy is flat.
"""

from __future__ import annotations

import torch
from torch import nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def lr_at(cfg, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: with ``lr_milestones``, lr times the factors of
    every milestone reached (tensorpack's ScheduledHyperParamSetter: a value set "at epoch 60"
    applies from the 61st epoch, 0-based 60, on); otherwise the paper's schedule, lr halved from
    50% of the epochs on:  lr_e = lr * (0.5 if e >= max(1, E // 2) and E > 1 else 1)."""
    if cfg.lr_milestones:
        lr = cfg.lr
        for start, factor in cfg.lr_milestones:
            if epoch >= int(start):
                lr *= float(factor)
        return lr
    return cfg.lr * (0.5 if epoch >= max(1, cfg.epochs // 2) and cfg.epochs > 1 else 1.0)


def training_done(epochs: int, until_flat, test_accs: list[float]) -> bool:
    """Whether a run whose finished epochs had test accuracies ``test_accs`` has trained its
    schedule: ``epochs`` epochs, then with ``until_flat = (tolerance, extra)`` (recipes) one more
    epoch at a time while the last two epochs' test accuracies differ by more than
    ``tolerance``, at most ``extra`` more epochs. Their learning rate follows ``lr_milestones``
    (a milestone at ``epochs`` lowers it for the extension)."""
    n = len(test_accs)
    if n < epochs:
        return False
    if not until_flat or n >= epochs + int(until_flat[1]):
        return True
    if n < 2:
        return False  # one epoch: nothing to compare it with yet
    # not (change > tolerance): an unknown (NaN) accuracy ends the run rather than extends it
    return not abs(test_accs[-1] - test_accs[-2]) > float(until_flat[0]) + 1e-9


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None: float32)."""
    if amp in (None, "", "none", "fp32"):
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs CUDA (CPU autocast supports bf16 only); use --amp bf16")
    return AMP_DTYPES[amp]


# Which parameters weight decay applies to: every one; conv+linear weights; linear weights only;
# the weights of the layers that stay float (w_bits 32: the first conv and last linear of a
# quantized model, every layer of a float one). Quantized weights pass through tanh and a
# rounding, so an L2 pull on their latent values is not a pull on what the layer computes.
WEIGHT_DECAY_ON = ("all", "weights", "linear", "float")


def _param_groups(cfg, model: nn.Module) -> tuple[list, float]:
    """(parameters or groups, the optimizer-wide weight decay) for ``weight_decay_on``."""
    if cfg.weight_decay_on not in WEIGHT_DECAY_ON:
        raise ValueError(
            f"weight_decay_on must be one of {', '.join(WEIGHT_DECAY_ON)}, "
            f"got {cfg.weight_decay_on!r}"
        )
    if cfg.weight_decay_on == "all":
        return list(model.parameters()), cfg.weight_decay
    kinds = (nn.Linear,) if cfg.weight_decay_on == "linear" else (nn.Linear, nn.Conv2d)
    decayed = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, kinds)
        and (cfg.weight_decay_on != "float" or getattr(m, "w_bits", 32) >= 32)
    }
    groups = [
        {
            "params": [p for p in model.parameters() if id(p) in decayed],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for p in model.parameters() if id(p) not in decayed], "weight_decay": 0.0},
    ]
    return groups, 0.0


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or momentum SGD; weight decay on all parameters (one group, the default) or only on
    conv+linear weights / linear weights (``weight_decay_on``; two groups, decayed first)."""
    params, wd = _param_groups(cfg, model)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd, eps=cfg.adam_eps)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd
        )
    raise ValueError(f"optimizer must be adam or sgd, got {cfg.optimizer!r}")
