"""The training flags, defined once: ``dorefa train``'s options, TrainConfig's defaults and the
child command line of a sweep cell are all derived from the table ``FLAGS`` below.

Each row names the flag, the TrainConfig field it sets (None: command line only), its default,
the type that parses it from text (and checks its range), and its help text. Derived from it:

* :func:`add_train_args`: the argparse options of ``dorefa train``;
* :func:`default`: the default of a TrainConfig field (TrainConfig's field defaults call it);
* :func:`config_from_args`: an argparse Namespace (plus a recipe) -> TrainConfig;
* :func:`config_to_argv`: TrainConfig -> the ``dorefa train`` arguments that rebuild it;
* :func:`check_config`: the flags' range checks applied to a TrainConfig built from Python.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .argtypes import (
    LEARNING_RATE,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    WIDTH,
    Number,
)
from .bits import Bits
from .recipes import apply_recipe, list_recipes


@dataclass(frozen=True)
class Flag:
    """One ``dorefa train`` option."""

    name: str  # "--batch-size"
    field: str | None  # TrainConfig field it sets; None: command line only (--nproc)
    default: Any = None
    type: Callable[[str], Any] | None = None  # parses (and range-checks) the text
    help: str | None = None
    choices: tuple | None = None
    flag: bool = False  # store_true switch
    negate: bool = False  # the field is the switch's negation (--quantize-first-last)
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name[2:].replace("-", "_")

    def field_default(self) -> Any:
        return (not self.default) if self.negate else self.default


DATA_HELP = (
    "fashion-mnist | mnist | idx:DIR | svhn:DIR | cifar10:DIR | imagefolder:DIR "
    "(default: fashion-mnist)"
)

FLAGS: tuple[Flag, ...] = (
    Flag("--model", "model", "svhn", help="registered model (svhn, alexnet, resnet18)"),
    Flag("--data", "data", "fashion-mnist", help=DATA_HELP),
    Flag("--data-dir", "data_dir", None, help="folder overriding the dataset's default"),
    Flag(
        "--bits",
        "bits",
        Bits(1, 2, 6),
        Bits.parse,
        "W,A,G bitwidths of weights, activations, gradients; 32 = float",
    ),
    Flag(
        "--width",
        "width",
        1.0,
        WIDTH,
        "channel multiplier (0.5/0.25/0.125 = the paper's models B/C/D)",
    ),
    Flag(
        "--quantize-first-last",
        "keep_first_last",
        False,
        help="quantize the first conv and last linear too (off in the paper)",
        flag=True,
        negate=True,
    ),
    Flag("--epochs", "epochs", 5, POSITIVE_INT),
    Flag("--batch-size", "batch_size", 128, POSITIVE_INT),
    Flag(
        "--lr",
        "lr",
        1e-3,
        LEARNING_RATE,
        "learning rate (default schedule: halved at 50%% of the epochs)",
    ),
    Flag(
        "--optimizer",
        "optimizer",
        "adam",
        help="adam, or momentum SGD (0.9)",
        choices=("adam", "sgd"),
    ),
    Flag("--weight-decay", "weight_decay", 0.0, NON_NEGATIVE_FLOAT),
    Flag("--seed", "seed", 0, NON_NEGATIVE_INT),
    Flag(
        "--threads",
        "threads",
        None,
        POSITIVE_INT,
        "torch threads (default: 1 on <= 2 CPUs, else one per core; the log says why)",
    ),
    Flag("--subset", "subset", None, POSITIVE_INT, "use the first N training images"),
    Flag("--test-subset", "test_subset", None, POSITIVE_INT, "use the first N test images"),
    Flag(
        "--augment",
        "augment",
        None,
        help="train-time augmentation (default: the dataset's)",
        choices=("none", "flip", "crop", "crop-flip"),
    ),
    Flag("--out", "out", None, help="run folder (default: runs/MODEL-wWaAgG)"),
    Flag("--resume", "resume", False, help="continue the run in --out", flag=True),
    Flag(
        "--init-from",
        "init_from",
        None,
        help="initialise weights from a (float) checkpoint",
        metavar="CKPT",
    ),
    Flag("--device", "device", "auto", help="auto | cpu | cuda | cuda:N"),
    Flag("--workers", "workers", 0, NON_NEGATIVE_INT, "DataLoader workers (image folders)"),
    Flag(
        "--recipe",
        "recipe",
        None,
        help="fill every option not given explicitly from a named recipe (see docs/distributed.md)",
        choices=tuple(list_recipes()),
    ),
    Flag(
        "--amp",
        "amp",
        None,
        help="autocast the forward pass (CPU: bf16 only); quantizers stay float32",
        choices=("bf16", "fp16"),
    ),
    Flag(
        "--engine",
        "engine",
        "torch",
        help="torch: quantization emulated in float32; int: every quantized conv/linear runs "
        "its forward and both backward products on the integer kernels (CPU; docs/training.md)",
        choices=("torch", "int"),
    ),
    Flag("--channels-last", "channels_last", False, help="NHWC memory format", flag=True),
    Flag(
        "--sync-bn",
        "sync_bn",
        False,
        help="data-parallel: BatchNorm statistics of the global batch (SyncBatchNorm)",
        flag=True,
    ),
    Flag(
        "--nproc",
        None,
        None,
        POSITIVE_INT,
        "start N data-parallel worker processes here (like torchrun "
        "--nproc_per_node N -m dorefa train ...)",
    ),
)

_BY_FIELD = {f.field: f for f in FLAGS if f.field}
_BY_DEST = {f.dest: f for f in FLAGS}


def default(field: str) -> Any:
    """The default value of TrainConfig ``field`` as the table gives it."""
    return _BY_FIELD[field].field_default()


def flag_of(field: str) -> Flag | None:
    """The flag that sets TrainConfig ``field`` (None: the field has no flag)."""
    return _BY_FIELD.get(field)


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Every ``dorefa train`` option, in the table's order."""
    for flag in FLAGS:
        _add(p, flag)


def _add(p: argparse.ArgumentParser, flag: Flag) -> None:
    if flag.flag:
        p.add_argument(flag.name, action="store_true", help=flag.help)
        return
    kwargs: dict[str, Any] = {"default": flag.default, "help": flag.help}
    if flag.type is not None:
        kwargs["type"] = flag.type
    if flag.choices is not None:
        kwargs["choices"] = list(flag.choices)
    if flag.metavar is not None:
        kwargs["metavar"] = flag.metavar
    p.add_argument(flag.name, **kwargs)


def explicit_fields(argv: list[str]) -> set[str]:
    """TrainConfig field names of the train options given in ``argv`` (a recipe must not
    override those): argv parsed again with every default suppressed."""
    p = argparse.ArgumentParser(add_help=False)
    add_train_args(p)
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given, _ = p.parse_known_args(argv)
    return {_BY_DEST[k].field or k for k in vars(given) if k in _BY_DEST}


def config_from_args(args: argparse.Namespace, explicit: set[str] | None = None):
    """The TrainConfig of parsed ``dorefa train`` arguments: the flags' values, then the recipe's
    defaults for every field not in ``explicit`` (None: ``args.explicit`` as main() sets it, else
    every value counts as given)."""
    from .train_config import TrainConfig

    if explicit is None:
        explicit = getattr(args, "explicit", None)
    if explicit is None:
        explicit = {_BY_DEST[k].field or k for k in vars(args) if k in _BY_DEST}
    values = {}
    for flag in FLAGS:
        if flag.field is not None:
            value = getattr(args, flag.dest, flag.default)
            values[flag.field] = (not value) if flag.negate else value
    values = apply_recipe(values, explicit, values.get("recipe"))
    return TrainConfig(**values)


def config_from_argv(argv: list[str]):
    """The TrainConfig that ``dorefa train ARGV`` runs (as main() builds it)."""
    p = argparse.ArgumentParser(prog="dorefa train")
    add_train_args(p)
    return config_from_args(p.parse_args(argv), explicit_fields(argv))


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def config_to_argv(cfg) -> list[str]:
    """``dorefa train`` arguments that rebuild ``cfg``: ``config_from_argv(argv) == cfg``
    (``progress`` aside, which a child process decides from its own terminal).

    Without a recipe only the values that differ from the defaults are written; with one, every
    value is (the recipe fills the fields that have no flag). Raises ValueError naming the fields
    whose values no command line can express (e.g. ``adam_eps`` without a recipe)."""
    argv: list[str] = []
    for flag in FLAGS:
        if flag.field is None:
            continue
        value = getattr(cfg, flag.field)
        given = (not value) if flag.negate else value
        if given is None or (cfg.recipe is None and given == flag.default):
            continue
        if flag.flag:
            argv += [flag.name] if given else []
        else:
            argv += [flag.name, _format(given)]
    rebuilt = config_from_argv(argv)
    differ = [
        name
        for name in vars(cfg)
        if name != "progress" and getattr(rebuilt, name) != getattr(cfg, name)
    ]
    if differ:
        raise ValueError(
            f"TrainConfig fields {differ} cannot be expressed as dorefa train options "
            "(no flag sets them, or a recipe overrides them); use dorefa.train.train() directly"
        )
    return argv


def check_config(cfg) -> None:
    """Apply the flags' checks to ``cfg`` (a TrainConfig built from Python rather than parsed
    from a command line); raises ValueError("--epochs must be ..., got -1")."""
    for flag in FLAGS:
        if flag.field is None:
            continue
        value = getattr(cfg, flag.field)
        try:
            if isinstance(flag.type, Number) and value is not None:
                flag.type.check(value)
            if flag.choices is not None and value is not None and value not in flag.choices:
                raise ValueError(f"must be one of {', '.join(flag.choices)}, got {value!r}")
        except ValueError as exc:
            raise ValueError(f"{flag.name} {exc}") from None
    _check_flagless(cfg)


def _check_flagless(cfg) -> None:
    """The TrainConfig fields without a flag (set from Python and by recipes): a review found
    eval_batch_size 0 failing after a whole epoch, -5 recording accuracy 0 on no images, and
    until_flat=(0.1,) an IndexError."""
    bounds = {
        "eval_batch_size": Number(int, 1),
        "adam_eps": Number(float, 0, low_open=True),
        "momentum": Number(float, 0),
    }
    for name, kind in bounds.items():
        try:
            kind.check(getattr(cfg, name))
        except ValueError as exc:
            raise ValueError(f"TrainConfig.{name} {exc}") from None
    for name in ("nesterov", "progress"):
        value = getattr(cfg, name)
        if not isinstance(value, bool) and not (name == "progress" and value is None):
            raise ValueError(f"TrainConfig.{name} must be True or False, got {value!r}")
    if cfg.lr_milestones is not None and not _pairs_of(
        cfg.lr_milestones, lambda e, f: _whole(e, 0) and _real(f, 0)
    ):
        raise ValueError(
            "TrainConfig.lr_milestones must be ((epoch, factor), ...) with 0-based epochs >= 0 "
            f"and factors > 0, got {cfg.lr_milestones!r}"
        )
    if cfg.until_flat is not None and not _pairs_of(
        [cfg.until_flat], lambda tol, extra: _real(tol, -math.inf) and _whole(extra, 0)
    ):
        raise ValueError(  # a negative tolerance extends every time
            "TrainConfig.until_flat must be (a finite tolerance, extra epochs >= 0), got "
            f"{cfg.until_flat!r}"
        )


def _pairs_of(items, ok) -> bool:
    try:
        return all(len(pair) == 2 and ok(*pair) for pair in items)
    except TypeError:  # not a sequence of pairs
        return False


def _whole(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _real(v, low: float) -> bool:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return ok and v > low
