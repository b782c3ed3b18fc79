"""Batch-level input pipeline: uint8 batches -> float model input, with cheap augmentation.

In-memory data sets (IDX, SVHN, CIFAR) yield native-size uint8 images; the training loop
turns each whole batch into model input here, with vectorised torch ops (on whatever device
the batch is on), instead of paying Python overhead per item.

Augmentations (train only), all randomness from the caller's ``torch.Generator``:

- ``crop``: translate each image by (dy, dx), each uniform in [-p, p], p = size // 10, filling
  with zeros. This is "pad by p, random crop size x size", the usual CIFAR/SVHN augmentation.
- ``flip``: mirror each image left-right with probability 1/2 (not for digits: a mirrored
  2 or 5 is not a 2 or 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "flip", "crop", "crop-flip")

_DEFAULT_AUGMENT = {
    # flip only: on a short budget random crops cost accuracy. (1,2,6) svhn, 15k images, epoch 1
    # (runs/aug-*): none 0.772, flip 0.788, crop-flip 0.686 test accuracy. Pass --augment crop-flip
    # for long runs.
    "fashion-mnist": "flip",
    "cifar10": "crop-flip",
    "mnist": "crop",
    "svhn": "crop",
    "idx": "crop",  # unknown content: no flip, which would be wrong for digits
    "imagefolder": "none",  # already augmented per item (random-resized crop + flip)
}


def default_augment(dataset_name: str) -> str:
    """The batch augmentation that suits a data set (by its ``name``)."""
    try:
        return _DEFAULT_AUGMENT[dataset_name]
    except KeyError:
        raise ValueError(
            f"no default augmentation for data set {dataset_name!r}; "
            f"known: {', '.join(sorted(_DEFAULT_AUGMENT))}"
        ) from None


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """out[b, c, i, j] = x[b, c, i - dy[b], j - dx[b]], zero where that is outside the image.

    x: (B, C, H, W); dy, dx: int64 (B,) on x's device. One gather over a zero-padded copy.
    """
    b, c, h, w = x.shape
    p = int(max(dy.abs().max(), dx.abs().max())) if b else 0
    if p == 0:
        return x.clone()
    padded = F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
    rows = (p - dy)[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = (p - dx)[:, None] + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def translate_reference(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Slow, obviously correct :func:`translate`: one slice copy per sample."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for k in range(len(x)):
        sy, sx = int(dy[k]), int(dx[k])
        out[k, :, max(sy, 0) : h + min(sy, 0), max(sx, 0) : w + min(sx, 0)] = x[
            k, :, max(-sy, 0) : h + min(-sy, 0), max(-sx, 0) : w + min(-sx, 0)
        ]
    return out


def to_model_input(
    images: torch.Tensor,
    size: int,
    *,
    train: bool,
    augment: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (B, C, size, size) in [0, 1], augmented when train.

    Resizing is bilinear (align_corners=False), antialiased when downscaling. The crop
    offsets are drawn before the flips, both from ``generator`` on its own device, so a
    seeded generator gives the same batch on CPU and GPU.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"images must be uint8 (B, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    x = images.float().div_(255)  # (B, C, H, W)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        down = h > size or w > size
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=down
        ).clamp_(0, 1)
    if not train or augment == "none" or len(x) == 0:
        return x
    b = len(x)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if "crop" in augment:
        p = size // 10
        if p > 0:
            d = torch.randint(-p, p + 1, (2, b), generator=generator, device=gen_device)
            d = d.to(x.device)
            x = translate(x, d[0], d[1])
    if "flip" in augment:
        flip = torch.rand(b, generator=generator, device=gen_device).to(x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
