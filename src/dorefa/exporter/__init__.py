"""Export a trained DoReFa model to a ``.dorefa`` file for the torch-free bit runtime.

``export(model, path)`` walks the model as a graph (torch.fx, :mod:`dorefa.exporter.walk`), packs
the quantized weights at W bits (bit planes), folds every BatchNorm (and the weight/activation
scales, clip and re-quantization) into per-channel integer thresholds wherever a conv's output
feeds an f_a (:mod:`dorefa.exporter.folding`), keeps a float32 residual stream where the model
adds conv outputs, and keeps the first conv and the classifier in float32
(:mod:`dorefa.exporter.graph`). ``dorefa export CKPT -o model.dorefa`` does the same for a
training checkpoint. The file layout is described in :mod:`dorefa.runtime.format`.

Supported: the registered ``svhn``, ``alexnet`` and ``resnet18`` at any width, and networks
converted with :func:`dorefa.quantize_model` built from Conv2d / BatchNorm / ReLU / MaxPool2d /
AvgPool2d / AdaptiveAvgPool2d(1) / Flatten / Linear / residual adds / channel concatenation,
with W and A in 1..8 and the paper's float first conv and last linear layer. Anything else is an
:class:`ExportError` naming the module and what it does not support.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from ..runtime import format as fmt
from .checks import EXPORTABLE_MODELS, check_model, exportable
from .errors import ExportError, write_failure
from .folding import fold_thresholds, pack_planes, weight_codes
from .walk import write_graph

FORMATS = ("dorefa", "qonnx")  # export(format=...) and `dorefa export --format`


def _input_shape(model: nn.Module, input_size: int | None) -> tuple[int, int, int]:
    size = getattr(model, "input_size", None) if input_size is None else input_size
    if input_size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ExportError(
            f"input_size must be one int >= 1, the side of square images, got {input_size!r}"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ExportError(
            f"{type(model).__name__} has no integer input_size attribute; pass input_size="
        )
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ExportError(f"{type(model).__name__}: the model has no conv layer")
    return (first.in_channels, size, size)


def _bits_label(model: nn.Module, header_nodes: list[dict]) -> str | None:
    """The model's "W,A,G" bits, or for a quantize_model net "W,A" read off its nodes."""
    if getattr(model, "bits", None) is not None:
        return str(model.bits)
    w = {n["w_bits"] for n in header_nodes if n["op"] == "bitconv"}
    a = {n["x_bits"] for n in header_nodes if n["op"] == "bitconv"}
    return f"{w.pop()},{a.pop()}" if len(w) == 1 and len(a) == 1 else None


def _refresh_hooked_weights(model: nn.Module, shape: tuple[int, int, int]) -> None:
    """Weights that a forward pre-hook computes (``torch.nn.utils.weight_norm``) are current
    only after a forward pass: one eval pass on zeros before they are read (the training mode
    is restored; no BatchNorm statistic moves)."""
    if not any(m._forward_pre_hooks for m in model.modules()):
        return
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)


def build(model: nn.Module, input_size: int | None = None) -> tuple[dict, dict]:
    """The runtime graph (header dict) and its arrays for ``model`` (see the module doc);
    ``input_size`` (square, pixels) defaults to ``model.input_size``."""
    check_model(model)
    shape = _input_shape(model, input_size)
    _refresh_hooked_weights(model, shape)
    with torch.no_grad():
        w = write_graph(model, shape)
    header = {
        "format": fmt.FORMAT_NAME,
        "input_shape": [int(v) for v in shape],
        "num_classes": int(w.num_classes),
        "bits": _bits_label(model, w.nodes),
        "nodes": w.nodes,
        "output": w.output,
    }
    return header, w.arrays


def export(
    model: nn.Module,
    path: str | os.PathLike,
    meta: dict | None = None,
    input_size: int | None = None,
    format: str = "dorefa",
) -> dict:
    """Write ``model`` (a DoReFa model, eval statistics) to ``path`` as a .dorefa file, or with
    ``format="qonnx"`` as QONNX for FINN (:mod:`dorefa.exporter.qonnx`; needs
    ``pip install 'dorefa[qonnx]'``).

    ``meta`` (JSON-able) is stored in the header; ``input_size`` (square, pixels) defaults to
    ``model.input_size``. Returns a summary dict: ``path``, ``size`` (bytes), ``layers`` (node
    count), ``float_bytes`` (float32 bytes of the same parameters and BN statistics); for
    QONNX ``path``, ``size``, ``layers`` and ``weight_bits`` (layer -> W). Raises ExportError
    (a ValueError) saying what is unsupported.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    if format == "qonnx":
        from .qonnx import export_qonnx

        return export_qonnx(model, path, meta=meta, input_size=input_size)
    header, arrays = build(model, input_size)
    header["meta"] = dict(meta or {})
    try:
        size = fmt.write(path, header, arrays)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"cannot write {path}: {exc}") from None
    except OSError as exc:
        raise write_failure(path, exc) from None
    float_bytes = sum(
        t.numel() * 4
        for t in model.state_dict().values()
        if torch.is_tensor(t) and t.is_floating_point()
    )
    return {
        "path": str(path),
        "size": size,
        "layers": len(header["nodes"]),
        "float_bytes": float_bytes,
    }


def _output_path(checkpoint: str, output: str | None, suffix: str) -> str:
    """``-o``, or the checkpoint's path with ``suffix``; never the checkpoint itself (the
    export would replace the run's only copy of its weights)."""
    if output is not None and not output.strip():
        raise ExportError("-o is empty; give the output file's path, or leave -o out")
    out = output if output is not None else str(Path(checkpoint).with_suffix(suffix))
    src, dst = Path(checkpoint), Path(out)
    same = dst.exists() and src.exists() and os.path.samefile(src, dst)
    if same or dst.resolve() == src.resolve():
        raise ExportError(
            f"{out} is the checkpoint being exported; writing it would replace the weights: "
            f"give another path with -o (e.g. {src.with_name(src.stem + '-export' + suffix)})"
        )
    # another run's checkpoint or a config file had been replaced, silently; an empty file is a
    # name made for the export (mktemp, touch)
    if dst.is_file() and dst.stat().st_size and not _an_export(dst, suffix):
        raise ExportError(
            f"{out} exists and is not a {suffix} file an export wrote: it would be replaced; "
            "remove it first, or give another path with -o"
        )
    return out


def _an_export(path: Path, suffix: str) -> bool:
    """Whether an existing file may be replaced by an export: a .dorefa model (its magic
    bytes), or for QONNX a file named .onnx."""
    if suffix != ".dorefa":
        return path.suffix.lower() == suffix
    try:
        with open(path, "rb") as f:
            return f.read(len(fmt.MAGIC)) == fmt.MAGIC
    except OSError:
        return True  # unreadable: the write says why


def cmd_export(args: argparse.Namespace) -> int:
    from ..checkpoint import export_meta, load_checkpoint, model_from_checkpoint

    fmt_name = getattr(args, "format", "dorefa")
    suffix = ".onnx" if fmt_name == "qonnx" else ".dorefa"
    out = _output_path(args.checkpoint, args.output, suffix)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint)
    info = export(model, out, meta=export_meta(ckpt, args.checkpoint), format=fmt_name)
    if fmt_name == "qonnx":
        print(
            f"exported {ckpt['meta']['model']} bits {ckpt['meta']['bits']} width "
            f"{ckpt['meta']['width']} -> {out}: QONNX, {info['layers']} ONNX nodes, "
            f"{info['size']} bytes (float32 initializers; the Quant nodes carry the bits)"
        )
        return 0
    ckpt_float = Path(args.checkpoint)
    than = size_ratio(info["float_bytes"], info["size"])
    print(
        f"exported {ckpt['meta']['model']} bits {ckpt['meta']['bits']} width "
        f"{ckpt['meta']['width']} -> {out}: {info['layers']} layers, {info['size']} bytes "
        f"({than} than the float32 weights, {info['float_bytes']} bytes; checkpoint file "
        f"{ckpt_float.stat().st_size} bytes)"
    )
    return 0


def size_ratio(float_bytes: int, size: int) -> str:
    """'3.2x smaller' or, where the file is the larger (tiny widths: the header outweighs the
    weights; it had said '0.1x smaller'), '9.8x larger'."""
    ratio = float_bytes / size
    return f"{ratio:.1f}x smaller" if ratio >= 1 else f"{1 / ratio:.1f}x larger"


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to a .dorefa bit-runtime file")
    p.add_argument("checkpoint", help="checkpoint.pt from `dorefa train`")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="output file (default: the checkpoint's name with .dorefa, or .onnx with --format "
        "qonnx)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="dorefa",
        help="dorefa: the bit runtime's file (default); qonnx: QONNX for FINN "
        "(needs pip install 'dorefa[qonnx]'; default output name .onnx)",
    )
    p.set_defaults(func=cmd_export)


__all__ = [
    "EXPORTABLE_MODELS",
    "FORMATS",
    "ExportError",
    "build",
    "export",
    "exportable",
    "fold_thresholds",
    "pack_planes",
    "register_cli",
    "weight_codes",
]
