"""The kernel plan of a loaded model: per bit convolution, the kernel it runs and its time.

:func:`model_plan` runs the model once on zeros at batch 1 (which makes any choice not made
yet, :mod:`dorefa.kernels.choose`) and reads each layer's :class:`dorefa.kernels.Choice`.
Imports numpy and :mod:`dorefa.kernels` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bitconv import BitConv


@dataclass(frozen=True)
class PlanRow:
    """One bit convolution: ``node`` name, ``shape`` (C->O KHxKW /stride pad on HxW), ``bits``
    (``W1A2``), ``mode`` (kernel output), ``kernel``, ``how`` (measured, model, first, forced),
    ``us`` (best batch-1 time of all its groups, None when not measured) and ``fields`` (a
    popcount kernel over dense receptive fields, :func:`dorefa.kernels.prepared.dense_fields_pay`;
    printed as ``+fields`` after the kernel)."""

    node: str
    shape: str
    bits: str
    mode: str
    kernel: str
    how: str
    us: float | None
    fields: bool = False


class Plan(list):
    """A list of :class:`PlanRow`; ``str()`` is the table ``dorefa run --explain`` prints."""

    def __str__(self) -> str:
        head = ("node", "shape", "bits", "out", "kernel", "how", "us")
        rows = [head] + [
            (
                r.node,
                r.shape,
                r.bits,
                r.mode,
                r.kernel + (" +fields" if r.fields else ""),
                r.how,
                "-" if r.us is None else f"{r.us:.1f}",
            )
            for r in self
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )


def _node_name(layer) -> str:
    """The convolution's own node, and the node whose output it makes where later nodes were
    fused into it (ResNet's residual add: the plan had named the row ``add_1`` alone)."""
    own = getattr(layer, "node", layer.name)
    return own if own == layer.name else f"{own} (+ {layer.name})"


def model_plan(model) -> Plan:
    """The :class:`Plan` of a loaded :class:`dorefa.runtime.Model` (module doc)."""
    plan = Plan()

    def watch(layer, _y, inputs):
        if not isinstance(layer, BitConv):
            return
        x = inputs[0]
        hw = tuple(x.shape[2:]) if x.ndim == 4 else (1, 1)
        choices = [conv.choice(hw) for conv in layer.convs]
        o, c, kh, kw = layer.shape
        times = [ch.us for ch in choices]
        plan.append(
            PlanRow(
                node=_node_name(layer),
                shape=f"{c * layer.groups}->{o} {kh}x{kw} /{layer.stride} pad {layer.padding} "
                f"on {hw[0]}x{hw[1]}",
                bits=f"W{layer.w_bits}A{layer.x_bits}",
                mode=layer.convs[0].out,
                kernel=choices[0].kernel,
                how=choices[0].how,
                us=None if None in times else sum(times),
                fields=layer.convs[0].fields and choices[0].kernel.startswith("popcount"),
            )
        )

    model.run(np.zeros((1, *model.input_shape), np.float32), threads=1, watch=watch)
    return plan
