"""Batch transforms: to_model_input's conversion, resize and augmentations (flip, crop)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dorefa.data import default_augment, to_model_input
from dorefa.data.transforms import translate, translate_reference

torch.set_num_threads(1)


def batch(b=16, c=3, h=20, w=20, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def test_to_model_input_plain_conversion_and_resize():
    x = batch(h=20, w=20)
    out = to_model_input(x, 20, train=False, augment="crop-flip", generator=None)
    assert out.dtype == torch.float32 and torch.equal(out, x.float() / 255)  # no aug at test
    up = to_model_input(x, 32, train=False, augment="none", generator=None)
    ref = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, ref, atol=1e-6, rtol=0)
    down = to_model_input(x, 8, train=False, augment="none", generator=None)
    ref = F.interpolate(
        x.float() / 255, size=(8, 8), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(down, ref, atol=1e-6, rtol=0)
    assert 0 <= down.min() and down.max() <= 1


@pytest.mark.parametrize("augment", ["none", "flip", "crop", "crop-flip"])
def test_to_model_input_train_is_deterministic(augment):
    x = batch(b=32, h=28, w=28)
    outs = [
        to_model_input(
            x, 32, train=True, augment=augment, generator=torch.Generator().manual_seed(s)
        )
        for s in (1, 1, 2)
    ]
    assert outs[0].shape == (32, 3, 32, 32) and outs[0].dtype == torch.float32
    assert 0 <= outs[0].min() and outs[0].max() <= 1
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], outs[2]) == (augment == "none")


def test_flip_really_flips():
    x = batch(b=64)
    base = x.float() / 255
    out = to_model_input(
        x, 20, train=True, augment="flip", generator=torch.Generator().manual_seed(0)
    )
    same = [torch.equal(o, b) for o, b in zip(out, base, strict=True)]
    flipped = [torch.equal(o, b.flip(-1)) for o, b in zip(out, base, strict=True)]
    assert all(s != f for s, f in zip(same, flipped, strict=True))  # exactly one of the two
    assert 16 < sum(flipped) < 48


def test_crop_is_a_bounded_translation_per_sample():
    x = batch(b=24, c=1, h=30, w=30) | 1  # no zero pixels, so the zero fill shows the shift
    out = to_model_input(
        x, 30, train=True, augment="crop", generator=torch.Generator().manual_seed(3)
    )
    base = x.float() / 255
    p = 30 // 10
    shifts = set()
    for o, b in zip(out, base, strict=True):
        match = [
            (dy, dx)
            for dy in range(-p, p + 1)
            for dx in range(-p, p + 1)
            if torch.equal(
                o[None], translate_reference(b[None], torch.tensor([dy]), torch.tensor([dx]))
            )
        ]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 5  # per-sample offsets


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 3, 7, 9), (8, 2, 32, 32)])
def test_translate_matches_reference(shape):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(shape, generator=g)
    for p in (1, 3):
        dy, dx = torch.randint(-p, p + 1, (2, shape[0]), generator=g)
        torch.testing.assert_close(
            translate(x, dy, dx), translate_reference(x, dy, dx), rtol=0, atol=0
        )


def test_augment_names():
    with pytest.raises(ValueError, match="augment must be one of none, flip, crop, crop-flip"):
        to_model_input(batch(), 20, train=False, augment="rotate", generator=None)
    assert default_augment("fashion-mnist") == "flip"
    assert default_augment("cifar10") == "crop-flip"
    assert default_augment("svhn") == default_augment("mnist") == "crop"
    assert default_augment("imagefolder") == "none"
    with pytest.raises(ValueError, match="known: cifar10"):
        default_augment("imagenet")
