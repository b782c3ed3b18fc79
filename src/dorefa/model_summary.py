"""``dorefa.summary(model)``: per-layer bits, memory and operations of a (multi-bit) network.

One row per layer (in the order the forward pass calls them), with per-image figures:

    W, A, G     conv/linear: W = the layer's weight bits (``w_bits``, 32 for a plain float layer),
                A = the bits of the values it reads (the k of the ``ActQuant`` that produced its
                input, through max-pool/flatten/dropout; 32 for the image or any other input),
                G = the k of the ``GradQuant`` that receives its output (32 if none).
                ActQuant rows show their output bits as A (32 when it clips without rounding).
    params      sum of p.numel() over the module's own parameters
    bytes       conv/linear: weights * W / 8 (bit-packed, exact) + biases * 4;
                any other layer: params * 4 (BatchNorm's gamma and beta count as float; its
                running statistics fold into them at inference, z = a x + b per channel)
    MACs        conv: output elements * (in_channels / groups) * kh * kw;
                linear: output elements * in_features; 0 for every other layer
    bit-ops     MACs * W * A: the paper's complexity measure (a k-bit by j-bit dot product
                costs k * j popcount bit-operations; a float layer counts W = A = 32)
    train bit-ops  MACs * (W*A + W*G + A*G): forward, backward to the input, backward to the
                weights
    kernel      what the bit runtime runs: for a layer with W and A in 1..8 the forced kernel,
                else the kernel cost model's pick for its bits and MACs on this CPU (the
                runtime times the cheapest of each kind when it loads: ``dorefa run --explain``);
                ``conv_float`` / ``linear`` for a float-weight conv / linear, ``-`` otherwise

Totals add the rows. ``weight_bytes`` is the bytes of the conv/linear rows only (BatchNorm
excluded: what ``dorefa sweep`` reports). The float share is that of float-weight conv/linear
rows in the MACs, and of every float-stored parameter (float conv/linear, BatchNorm) in the
bytes. The float reference is the same model in float (32,32,32): every parameter at 4 bytes
and every MAC at 32 x 32 bit-ops; the ratios are reference / this model ("x smaller", "x fewer").

:func:`summary_file` does the same for a ``.dorefa`` file (format version 1, a chain of
layers, or 2, a graph of nodes) without importing torch: one row per runtime node, bytes = what
the file stores for it (bit planes, thresholds, float arrays); params = its weights and biases.
BatchNorm has no rows there (it is folded), so the float reference counts every stored weight
and bias plus 2 floats (a scale and a shift) per output channel of every bit convolution, which
equals the torch model's reference for a conv -> BN -> f_a chain.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .bits import FLOAT
from .geometry import conv_out_size

__all__ = ["Row", "Summary", "kernel_for", "summary", "summary_file"]


# ----------------------------------------------------------------------------- the record
@dataclass
class Row:
    """One layer's figures, per image (definitions in the module docstring)."""

    name: str
    type: str
    shape: tuple[int, ...] | None  # output shape without the batch; None if not called
    w: int | None = None
    a: int | None = None
    g: int | None = None
    params: int = 0
    bytes: float = 0.0
    macs: int = 0
    kernel: str = "-"
    is_float: bool = False  # its parameters are stored as float32
    is_weight: bool = False  # a conv/linear layer (counts in weight_bytes)

    @property
    def bitops(self) -> int:
        return self.macs * self.w * self.a if self.macs else 0

    @property
    def train_bitops(self) -> int:
        w, a, g = self.w, self.a, self.g
        return self.macs * (w * a + w * g + a * g) if self.macs else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape) if self.shape is not None else None
        return d | {"bitops": self.bitops, "train_bitops": self.train_bitops}


@dataclass
class Summary:
    """Rows, their totals and the float (32,32,32) reference; ``str()`` is the table."""

    title: str
    input_shape: tuple[int, ...]
    rows: list[Row]
    reference_bytes: float  # the same model in float: every parameter at 4 bytes
    reference_bitops: int  # every MAC at 32 x 32
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        """params, bytes, weight_bytes, macs, float_macs, bitops, train_bitops, the float shares
        and the ratios to the float reference (see the module docstring)."""
        rows = self.rows
        t = {
            "params": sum(r.params for r in rows),
            "bytes": sum(r.bytes for r in rows),
            "weight_bytes": sum(r.bytes for r in rows if r.is_weight),
            "macs": sum(r.macs for r in rows),
            "float_macs": sum(r.macs for r in rows if r.is_float),
            "bitops": sum(r.bitops for r in rows),
            "train_bitops": sum(r.train_bitops for r in rows),
        }
        float_bytes = sum(r.bytes for r in rows if r.is_float)
        return t | {
            "float_share_macs": _ratio(t["float_macs"], t["macs"]),
            "float_share_bytes": _ratio(float_bytes, t["bytes"]),
            "reference_bytes": self.reference_bytes,
            "reference_bitops": self.reference_bitops,
            "memory_ratio": _ratio(self.reference_bytes, t["bytes"]),
            "bitop_ratio": _ratio(self.reference_bitops, t["bitops"]),
        }

    def to_dict(self) -> dict:
        """JSON-able: title, input_shape, rows (each with bitops), totals, notes."""
        return {
            "title": self.title,
            "input_shape": list(self.input_shape),
            "rows": [r.to_dict() for r in self.rows],
            "totals": self.totals,
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        return _render(self)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def kernel_for(
    op: str, w: int | None, a: int | None, macs: int = 0, rows: int | None = None
) -> str:
    """The runtime's kernel for a ``"conv"`` or ``"linear"`` layer with these bits, MACs and
    output pixels (``rows``, at batch 1; None: a full int8-amx tile):
    the forced kernel if one is, else the cost model's pick among this CPU's kernel families
    (:func:`dorefa.kernels.choose.model_pick`; the runtime then times the cheapest of each kind, and
    ``dorefa run --explain`` shows what it measured)."""
    if w == FLOAT:
        return "conv_float" if op == "conv" else "linear"
    if w is None or a is None or a == FLOAT:
        return "-"  # float input into quantized weights: no popcount kernel takes it
    from .kernels import choose, forced_kernel

    try:
        forced = forced_kernel()
    except ValueError:  # DOREFA_KERNEL names a backend this machine lacks
        return "unavailable"
    return forced or choose.model_pick(
        w, a, max(macs, 1), choose.AMX_ROWS if rows is None else rows
    )


# ----------------------------------------------------------------------------- torch models
def summary(model, input_size: int | tuple[int, ...] | None = None) -> Summary:
    """The summary of a torch model (a ``create_model`` model or any ``nn.Module`` made of
    QConv2d/QLinear/Conv2d/Linear/BatchNorm/ActQuant/pooling...), from one eval forward pass
    at batch 1 on zeros (the weights do not matter). ``input_size``: the image side N (square,
    channels from the first conv), or a full (C, H, W); default the model's ``input_size``
    attribute. The model's training mode is restored afterwards.
    """
    from .summary_torch import torch_rows

    shape = _input_shape(model, input_size)
    try:
        rows = torch_rows(model, shape)
    except RuntimeError as exc:  # a size the model's layers cannot take
        first = (
            str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        )
        raise ValueError(
            f"{type(model).__name__} cannot run on a {shape} input ({first}); give the input "
            f"size it was built for ({getattr(model, 'input_size', 'see its docstring')})"
        ) from None
    title = type(model).__name__
    if getattr(model, "bits", None) is not None:
        title += f" bits {model.bits}"
    if getattr(model, "width", None) is not None:
        title += f" width {model.width}"
    return Summary(
        title=title,
        input_shape=shape,
        rows=rows,
        reference_bytes=4.0 * sum(r.params for r in rows),
        reference_bitops=FLOAT * FLOAT * sum(r.macs for r in rows),
    )


def _input_shape(model, input_size) -> tuple[int, ...]:
    from torch import nn

    if input_size is None:
        input_size = getattr(model, "input_size", None)
        if input_size is None:
            raise ValueError(
                f"{type(model).__name__} has no input_size attribute; pass input_size=N (square "
                "image side) or input_size=(C, H, W)"
            )
    if isinstance(input_size, (tuple, list)):
        if not input_size or not all(isinstance(v, int) and v >= 1 for v in input_size):
            raise ValueError(
                f"input_size must be positive ints such as (3, 40, 40), got {input_size}"
            )
        return tuple(input_size)
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be an int >= 1 or (C, H, W), got {input_size!r}")
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(
            f"{type(model).__name__} has no Conv2d to take the channels from; pass "
            "input_size=(C, H, W) (or the shape its first layer expects)"
        )
    return (first.in_channels, input_size, input_size)


# ----------------------------------------------------------------------------- .dorefa files
def summary_file(path: str | os.PathLike) -> Summary:
    """The summary of a ``.dorefa`` file (its header only; never imports torch). Raises
    :class:`dorefa.runtime.FormatError` for a file the runtime would refuse to read."""
    from .runtime.format import FormatError, Reader

    reader = Reader(path)
    h = reader.header
    try:
        shape = tuple(int(v) for v in h["input_shape"])
        g = _header_g(h.get("bits"))
        rows, folded = _file_rows(reader, _graph(h), shape, g)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise reader.error(
            f"header is not a layer list this summary understands ({type(exc).__name__}: "
            f"{exc}); re-export the model with `dorefa export`"
        ) from None
    meta = h.get("meta") if isinstance(h.get("meta"), dict) else {}
    title = f"{Path(path).name}: {meta.get('model', 'model')} bits {h.get('bits')}"
    if "width" in meta:
        title += f" width {meta['width']}"
    params = sum(r.params for r in rows)
    return Summary(
        title=title + f", {reader.size} bytes on disk",
        input_shape=shape,
        rows=rows,
        reference_bytes=4.0 * (params + folded),
        reference_bitops=FLOAT * FLOAT * sum(r.macs for r in rows),
        notes=["BatchNorm is folded into the bit convolutions' thresholds (no rows of its own)"],
    )


def _header_g(bits) -> int:
    try:
        return int(str(bits).split(",")[2])
    except (IndexError, ValueError):
        return FLOAT


def _graph(h: dict) -> list[dict]:
    """The nodes of a version-2 graph, or a version-1 chain as nodes (each feeds the next)."""
    if "nodes" in h:
        return h["nodes"]
    nodes, prev = [], "input"
    for i, spec in enumerate(h["layers"]):
        nodes.append(dict(spec, name=f"layer{i}", inputs=[prev]))
        prev = f"layer{i}"
    return nodes


def _file_rows(reader, nodes: list, shape: tuple, g: int) -> tuple[list[Row], int]:
    """Rows of the runtime's nodes, and the per-channel scale and shift (2 floats per output
    channel) that each bit convolution's thresholds or alpha/beta encode."""
    if not isinstance(nodes, list):
        raise TypeError("'nodes'/'layers' is not a list")
    shapes: dict[str, tuple | None] = {"input": shape}
    rows, folded = [], 0
    for i, spec in enumerate(nodes):
        op, name = spec["op"], str(spec["name"])

        def arr(key, _i=i, _spec=spec):
            return reader.array(_spec[key], f"node {_i} {key}")

        ins = [shapes[str(n)] for n in spec["inputs"]]
        row = Row(name=name, type=op, shape=None)
        if all(s is not None for s in ins):
            row.shape = _file_op(row, op, spec, arr, ins, g)
        if op == "bitconv":
            folded += 2 * int(spec["weight_shape"][0])
        shapes[name] = row.shape
        rows.append(row)
    return rows, folded


def _file_op(row: Row, op: str, spec: dict, arr, ins: list, g: int) -> tuple | None:
    """Fill ``row`` for one runtime node; returns its output shape (None for an unknown op)."""
    shape = ins[0]
    if op in ("conv_float", "bitconv"):
        return _file_conv(row, op, spec, arr, shape, g)
    if op == "linear_float":
        weight, bias = arr("weight"), arr("bias")
        row.w, row.a, row.g, row.is_float, row.is_weight = FLOAT, FLOAT, FLOAT, True, True
        row.params, row.bytes = weight.size + bias.size, float(weight.nbytes + bias.nbytes)
        row.macs, row.kernel = weight.size, kernel_for("linear", FLOAT, FLOAT)
        return (weight.shape[0],)
    if op == "affine":  # a per-channel scale and shift kept in float (e.g. a BatchNorm)
        scale, shift = arr("scale"), arr("shift")
        row.params, row.is_float = scale.size + shift.size, True
        row.bytes = float(scale.nbytes + shift.nbytes)
        return shape
    if op == "quantize":
        row.a = int(spec["bits"])
        return shape
    if op in ("maxpool", "avgpool"):
        k, s, p = (int(spec[key]) for key in ("kernel", "stride", "padding"))
        return (shape[0], *(conv_out_size(v, k, s, p) for v in shape[1:]))
    if op == "global_avgpool":
        return (shape[0], 1, 1)
    if op == "flatten":
        return (math.prod(shape),)
    if op == "concat":
        return (sum(s[0] for s in ins), *shape[1:])
    if op in ("add", "clip", "dequantize"):
        return shape
    return None  # an op this summary does not know: no figures, shapes unknown after it


def _file_conv(row: Row, op: str, spec: dict, arr, shape: tuple, g: int) -> tuple:
    """A float first conv or a bit convolution (a linear over codes is one, as in export)."""
    if op == "conv_float":
        weight, bias = arr("weight"), arr("bias")
        o, cg, kh, kw = weight.shape
        row.w, row.a, row.g, row.is_float = FLOAT, FLOAT, FLOAT, True
        row.params, row.bytes = weight.size + bias.size, float(weight.nbytes + bias.nbytes)
    else:
        o, cg, kh, kw = (int(v) for v in spec["weight_shape"])
        row.w, row.a, row.g = int(spec["w_bits"]), int(spec["x_bits"]), g
        keys = [k for k in ("weight", "thresholds", "direction", "alpha", "beta") if k in spec]
        row.params, row.bytes = o * cg * kh * kw, float(sum(arr(k).nbytes for k in keys))
    _, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
    s, p = int(spec["stride"]), int(spec["padding"])
    out = (o, conv_out_size(h, kh, s, p), conv_out_size(w, kw, s, p))
    row.macs, row.is_weight = math.prod(out) * cg * kh * kw, True
    row.kernel = kernel_for("conv", row.w, row.a, row.macs, out[1] * out[2])
    return out


# ----------------------------------------------------------------------------- the table
_COLUMNS = ("name", "type", "output", "W", "A", "G", "params", "bytes", "MACs", "bit-ops", "kernel")


def _si(n: float | None) -> str:
    """1234567 -> '1.23M' (three significant digits above 9999)."""
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale and abs(n) >= 1e4:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _bytes(n: float) -> str:
    """Exact bytes with separators (a bit-packed layer may end in 1/8 bytes)."""
    return f"{n:,.0f}" if n == int(n) else f"{n:,.3f}".rstrip("0")


def _human(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g} B"


def _cells(r: Row) -> list[str]:
    shape = "x".join(str(v) for v in r.shape) if r.shape is not None else "(not run)"
    bits = ["-" if v is None else str(v) for v in (r.w, r.a, r.g)]
    bitops = _si(r.bitops) if r.macs else "-"
    macs = _si(r.macs) if r.macs else "-"
    return [r.name, r.type, shape, *bits, f"{r.params:,}", _bytes(r.bytes), macs, bitops, r.kernel]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _times(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def _render(s: Summary) -> str:
    """The table, then totals, float share and the ratios to the float model."""
    table = [list(_COLUMNS)] + [_cells(r) for r in s.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]

    def line(cells: list[str]) -> str:  # name, type, output left-aligned; numbers right
        padded = [
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded[:-1] + [cells[-1]]).rstrip()  # the kernel column, left

    rule = "-" * max(len(line(r)) for r in table)
    t = s.totals
    out = [f"{s.title}, input {'x'.join(map(str, s.input_shape))}, figures per image", rule]
    out += [line(table[0]), rule] + [line(r) for r in table[1:]] + [rule]
    out += [
        f"total: {t['params']:,} params, {_bytes(t['bytes'])} bytes ({_human(t['bytes'])}), "
        f"{_si(t['macs'])} MACs, {_si(t['bitops'])} bit-ops "
        f"({_si(t['train_bitops'])} in training)",
        f"float share: {_pct(t['float_share_macs'])} of MACs, "
        f"{_pct(t['float_share_bytes'])} of bytes",
        f"vs float (32,32,32): {_human(t['reference_bytes'])} -> {_times(t['memory_ratio'])} "
        f"smaller; {_si(t['reference_bitops'])} bit-ops -> {_times(t['bitop_ratio'])} fewer",
    ]
    return "\n".join(out + [f"note: {n}" for n in s.notes])
