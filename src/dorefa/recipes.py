"""Training recipes: named sets of defaults (``dorefa train --recipe NAME``).

A recipe fills every TrainConfig field the user did not give explicitly; an explicit option
always wins. See docs/distributed.md for where each number comes from.

* ``alexnet-imagenet``: tensorpack ``examples/DoReFa-Net/alexnet-dorefa.py`` (its last version):
  Adam lr 2e-4, eps 1e-5; total batch 256; lr x0.2 at epochs 60 and 75, 90 epochs; L2 weight decay
  5e-6 on the fc weights only (its ``weight_decay_pattern = 'fc.*/W'``); random-resized crop 224
  + flip, done per image by ImageFolderDataset.
* ``resnet18-imagenet``: tensorpack's ``resnet-dorefa.py`` only loads a pre-trained (1,4,32) model
  and has no training schedule, so we take the schedule of tensorpack's ImageNet ResNet example
  (``examples/ResNet/imagenet-resnet.py``), whose ImageNetModel the DoReFa script builds on:
  momentum SGD 0.9 (Nesterov), lr 0.1 for batch 256, x0.1 at epochs 30, 60, 90, 100 epochs,
  weight decay 1e-4 on every conv and fc weight (ImageNetModel's ``'.*/W'``).
* ``svhn-fashion-mnist``: Model A trained to its plateau on Fashion-MNIST (the converged study,
  docs/results.md, which says how it was chosen): Adam lr 1e-3, x0.2 at epochs 6 and 9, 12
  epochs, batch 128, random flips, L2 weight decay 1e-4 on the layers that stay float; a run whose
  test accuracy still moves by more than 0.3 points over its last epoch continues at lr x0.2
  once more, one epoch at a time until it is flat (at most 4 more epochs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .bits import Bits


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str
    about: str
    defaults: dict = field(default_factory=dict)  # TrainConfig field -> value


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "alexnet-imagenet",
            "alexnet",
            "tensorpack alexnet-dorefa.py: Adam 2e-4 (eps 1e-5), batch 256, x0.2 at 60/75, 90 ep",
            dict(
                model="alexnet",
                bits=Bits(1, 2, 6),
                batch_size=256,
                epochs=90,
                optimizer="adam",
                lr=2e-4,
                adam_eps=1e-5,
                lr_milestones=((60, 0.2), (75, 0.2)),
                weight_decay=5e-6,
                weight_decay_on="linear",
                augment="none",
            ),
        ),
        Recipe(
            "resnet18-imagenet",
            "resnet18",
            "tensorpack ImageNet ResNet schedule: SGD 0.9 nesterov, lr 0.1, x0.1 at 30/60/90, "
            "100 ep, wd 1e-4",
            dict(
                model="resnet18",
                bits=Bits(1, 4, 32),
                batch_size=256,
                epochs=100,
                optimizer="sgd",
                lr=0.1,
                momentum=0.9,
                nesterov=True,
                lr_milestones=((30, 0.1), (60, 0.1), (90, 0.1)),
                weight_decay=1e-4,
                weight_decay_on="weights",
                augment="none",
            ),
        ),
        Recipe(
            "svhn-fashion-mnist",
            "svhn",
            "Model A to its plateau on Fashion-MNIST: Adam 1e-3, x0.2 at 6/9, 12 ep (then x0.2 "
            "until flat, <= 4 ep), flip, wd 1e-4 on float layers",
            dict(
                model="svhn",
                data="fashion-mnist",
                batch_size=128,
                epochs=12,
                optimizer="adam",
                lr=1e-3,
                lr_milestones=((6, 0.2), (9, 0.2), (12, 0.2)),
                until_flat=(0.003, 4),
                weight_decay=1e-4,
                weight_decay_on="float",
                augment="flip",
            ),
        ),
    )
}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(
            f"unknown recipe {name!r}; choose one of {', '.join(list_recipes())}"
        ) from None


def apply_recipe(values: dict, explicit: set[str], name: str | None) -> dict:
    """``values`` (TrainConfig keyword arguments) with the recipe's defaults for every key not in
    ``explicit``. Raises ValueError if an explicit --model contradicts the recipe."""
    if not name:
        return dict(values)
    recipe = get_recipe(name)
    if "model" in explicit and values.get("model") != recipe.model:
        raise ValueError(
            f"recipe {name} is for --model {recipe.model}, got --model "
            f"{values.get('model')}; drop --model or pick another recipe"
        )
    out = dict(values)
    for key, value in recipe.defaults.items():
        if key not in explicit:
            out[key] = value
    out["recipe"] = name
    return out


def config_with_recipe(name: str, **overrides):
    """A TrainConfig from recipe ``name``; keyword arguments override it (for use from Python)."""
    from .train_config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
    return TrainConfig(**apply_recipe(overrides, set(overrides), name))
