"""``dorefa summary MODEL_OR_CKPT_OR_.dorefa``: :mod:`dorefa.model_summary`'s table (or ``--json``).

The source is a ``.dorefa`` file (recognised by its magic bytes; read without importing torch),
a training checkpoint (``dorefa.checkpoint``: its model, bits, width and image size), or a
model name from ``dorefa.models.list_models()`` built with ``--bits`` (default 1,2,6),
``--width``, ``--num-classes`` and ``--in-channels``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .argtypes import WIDTH
from .bits import Bits

__all__ = ["cmd_summary", "load_summary", "register_cli"]

DEFAULT_BITS = "1,2,6"


def _is_dorefa_file(path: Path) -> bool:
    from .runtime.format import MAGIC

    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def load_summary(
    source: str,
    *,
    input_size: int | None = None,
    bits: Bits | str | None = None,
    width: float | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
):
    """The :class:`dorefa.model_summary.Summary` of a model name, a checkpoint or a .dorefa file.
    Model options (bits, width, classes, channels) apply to a model name only; a file has its
    own, and a .dorefa file its own input size too."""
    from .model_summary import summary_file

    path = Path(source)
    given = {"--bits": bits, "--width": width, "--num-classes": num_classes}
    given["--in-channels"] = in_channels
    if path.is_file():
        extra = [flag for flag, value in given.items() if value is not None]
        if _is_dorefa_file(path):
            extra += ["--input-size"] if input_size is not None else []
        if extra:
            raise ValueError(
                f"{', '.join(extra)} apply to a model name; {source} is a file that fixes "
                "them (drop the option, or give a model name instead)"
            )
        if _is_dorefa_file(path):
            return summary_file(path)
        return _checkpoint_summary(path, input_size)
    return _model_summary(source, input_size, bits, width, num_classes, in_channels)


def _checkpoint_summary(path: Path, input_size: int | None):
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .model_summary import summary

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    meta = ckpt["meta"]
    s = summary(model, input_size or int(meta.get("image_size") or model.input_size))
    s.title = f"{path.name}: {meta['model']} bits {meta['bits']} width {meta['width']}"
    return s


def _model_summary(name, input_size, bits, width, num_classes, in_channels):
    import torch

    from .model_summary import summary
    from .models import create_model, list_models

    if name not in list_models():
        raise ValueError(
            f"{name!r} is neither a file nor a model name; give a checkpoint.pt, a .dorefa file "
            f"or one of: {', '.join(list_models())}"
        )
    b = Bits.parse(bits or DEFAULT_BITS)
    width = 1.0 if width is None else width
    with torch.device("meta"):  # shapes only: no memory for the weights, whatever the sizes
        model = create_model(
            name, bits=b, width=width, num_classes=num_classes or 10, in_channels=in_channels or 3
        )
    s = summary(model, input_size)
    s.title = f"{name} bits {b} width {width}"
    return s


def cmd_summary(args: argparse.Namespace) -> int:
    s = load_summary(
        args.source,
        input_size=args.input_size,
        bits=args.bits,
        width=args.width,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
    )
    print(json.dumps(s.to_dict(), indent=2) if args.json else s)
    return 0


def _positive(kind, most=None):
    """A number > 0 (and <= ``most``: a summary builds the model and runs it once, so a huge
    size would allocate that much memory)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}, got {text!r}")
        return value

    return parse


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "summary",
        help="per-layer bits, parameters, packed bytes, MACs and bit-ops of a model",
        description=(
            "One row per layer (W/A/G bits, parameters, bit-packed bytes, MACs, bit-ops = "
            "MACs x W x A, the runtime's kernel), totals, the float share and the ratios to the "
            "same model in float (32,32,32). Definitions: dorefa.model_summary's docstring."
        ),
    )
    p.add_argument(
        "source",
        help="a model name (see `dorefa train --model`), a checkpoint.pt "
        "from `dorefa train`, or a .dorefa file from `dorefa export`",
    )
    p.add_argument(
        "--input-size",
        type=_positive(int, most=4096),
        default=None,
        metavar="N",
        help="square input side (default: the model's, or the checkpoint's)",
    )
    p.add_argument(
        "--bits",
        type=Bits.parse,
        default=None,
        metavar="W,A,G",
        help=f"bits of a model name (default {DEFAULT_BITS})",
    )
    p.add_argument(
        "--width",
        type=WIDTH,  # the models' own range
        default=None,
        metavar="F",
        help="channel multiplier of a model name (default 1.0)",
    )
    p.add_argument(
        "--num-classes",
        type=_positive(int, most=100_000),
        default=None,
        help="classes of a model name (default 10)",
    )
    p.add_argument(
        "--in-channels",
        type=_positive(int, most=1_000_000),  # 10^20 had crashed in torch (storage overflow)
        default=None,
        help="input channels of a model name (default 3)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)
