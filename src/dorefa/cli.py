"""Command line: ``dorefa train | eval | export | run | sweep | report``.

Each subcommand's work lives in its own module; this file only parses arguments and turns
expected failures (bad arguments, missing data, corrupt files) into one-line errors.
"""

from __future__ import annotations

import argparse
import os
import sys

from .bits import Bits
from .recipes import list_recipes


def _bits(text: str) -> str:
    try:
        return str(Bits.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist | mnist | idx:DIR | svhn:DIR | cifar10:DIR | "
        "imagefolder:DIR (default: fashion-mnist)",
    )
    p.add_argument("--data-dir", default=None, help="folder overriding the dataset's default")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="svhn", help="registered model (svhn, alexnet, resnet18)")
    add_data_args(p)
    p.add_argument(
        "--bits",
        default="1,2,6",
        type=_bits,
        help="W,A,G bitwidths of weights, activations, gradients; 32 = float",
    )
    p.add_argument(
        "--width",
        type=float,
        default=1.0,
        help="channel multiplier (0.5/0.25/0.125 = the paper's models B/C/D)",
    )
    p.add_argument(
        "--quantize-first-last",
        action="store_true",
        help="quantize the first conv and last linear too (off in the paper)",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="learning rate (default schedule: halved at 50%% of the epochs)",
    )
    p.add_argument(
        "--optimizer", default="adam", choices=["adam", "sgd"], help="adam, or momentum SGD (0.9)"
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--subset", type=int, default=None, help="use the first N training images")
    p.add_argument("--test-subset", type=int, default=None, help="use the first N test images")
    p.add_argument(
        "--augment",
        default=None,
        choices=["none", "flip", "crop", "crop-flip"],
        help="train-time augmentation (default: the dataset's)",
    )
    p.add_argument("--out", default=None, help="run folder (default: runs/MODEL-wWaAgG)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="initialise weights from a (float) checkpoint",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (image folders)")
    p.add_argument(
        "--recipe",
        default=None,
        choices=list_recipes(),
        help="fill every option not given explicitly from a named recipe (see docs/distributed.md)",
    )
    p.add_argument(
        "--amp",
        default=None,
        choices=["bf16", "fp16"],
        help="autocast the forward pass (CPU: bf16 only); quantizers stay float32",
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="data-parallel: BatchNorm statistics of the global batch (SyncBatchNorm)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="start N data-parallel worker processes here (like torchrun "
        "--nproc_per_node N -m dorefa train ...)",
    )


# argparse dest -> TrainConfig field, where the names differ
_FIELD = {"quantize_first_last": "keep_first_last"}


def explicit_train_options(argv: list[str]) -> set[str]:
    """TrainConfig field names of the train options given on the command line (a recipe must
    not override those): argv parsed again with every default suppressed."""
    p = argparse.ArgumentParser(add_help=False)
    add_train_args(p)
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given, _ = p.parse_known_args(argv)
    return {_FIELD.get(k, k) for k in vars(given)}


def config_from_args(args: argparse.Namespace, explicit: set[str] | None = None):
    from .recipes import apply_recipe
    from .train import TrainConfig

    recipe = getattr(args, "recipe", None)
    if explicit is None:
        explicit = getattr(args, "explicit", None)
    if explicit is None:  # not from main(): treat every value as given
        explicit = {_FIELD.get(k, k) for k in vars(args)}
    values = dict(
        model=args.model,
        data=args.data,
        data_dir=args.data_dir,
        bits=str(Bits.parse(args.bits)),
        width=args.width,
        keep_first_last=not args.quantize_first_last,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        threads=args.threads,
        subset=args.subset,
        test_subset=args.test_subset,
        augment=args.augment,
        out=args.out,
        resume=args.resume,
        init_from=args.init_from,
        device=args.device,
        workers=args.workers,
    )
    for name in ("optimizer", "amp", "channels_last", "sync_bn"):
        if hasattr(args, name):
            values[name] = getattr(args, name)
    values = apply_recipe(values, explicit, recipe)
    bits = Bits.parse(values["bits"])
    values["bits"] = str(bits)
    values["out"] = values["out"] or f"runs/{values['model']}-{bits.tag}"
    return TrainConfig(**values)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = config_from_args(args)
    nproc = getattr(args, "nproc", None)
    if nproc is not None and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        if nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {nproc}")
        if nproc > 1:
            from .distributed import launch

            return launch(nproc, _without_nproc(getattr(args, "argv", None) or sys.argv[1:]))
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"final test accuracy {result['test_acc']:.4f}  (best "
            f"{result['best_test_acc']:.4f})  -> {cfg.out}"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .train import evaluate, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, map_location=device)
    model = model_from_checkpoint(ckpt, args.checkpoint).to(device)
    from .data import get_dataset

    data = args.data or ckpt["meta"].get("data", "fashion-mnist")
    test_set = get_dataset(
        data, "test", data_dir=args.data_dir, image_size=ckpt["meta"]["image_size"]
    )
    if args.test_subset:
        test_set = test_set.subset(min(args.test_subset, len(test_set)))
    if test_set.in_channels != ckpt["meta"]["in_channels"]:
        raise ValueError(
            f"{data} has {test_set.in_channels} channels but the checkpoint's model "
            f"expects {ckpt['meta']['in_channels']}"
        )
    ev = evaluate(model, test_set, ckpt["meta"]["image_size"], args.batch_size, device)
    meta = ckpt["meta"]
    print(
        f"{meta['model']} bits {meta['bits']} width {meta['width']} on {data} "
        f"(test, {ev['n']} images): accuracy {ev['acc']:.4f}  loss {ev['loss']:.4f}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dorefa", description="DoReFa-Net: train low-bitwidth CNNs and run them on bit kernels"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a DoReFa model")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a checkpoint (writes nothing)")
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None, help="dataset spec (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    for register in _optional_commands():
        register(sub)
    return parser


def _optional_commands():
    """Subcommands defined beside their implementation (export/run, sweep/report, ...)."""
    import importlib

    for module in ("dorefa.export", "dorefa.runtime.cli", "dorefa.sweep"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("dorefa"):
                continue
            raise
        if hasattr(mod, "register_cli"):
            yield mod.register_cli


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "train":
        args.argv = argv
        args.explicit = explicit_train_options(argv[1:])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FloatingPointError, OSError) as exc:
        print(f"dorefa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"dorefa {args.command}: interrupted (the last finished epoch is saved; "
            "--resume continues)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
