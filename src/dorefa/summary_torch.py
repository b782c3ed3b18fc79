"""The rows of :func:`dorefa.summary` for a torch model: one eval forward pass at batch 1
with a hook on every layer (a module without children, or one with parameters of its own).
The pass runs on the meta device (shapes only: no memory or time for any input size), through
``torch.func.functional_call`` with meta copies of the parameters and buffers; a model the meta
pass cannot run (an operation without a meta kernel, a plain tensor attribute, a data-dependent
branch) runs on its own device instead, for inputs up to ``REAL_PASS_ELEMENTS``.

Bits travel with the tensors: an ``ActQuant`` output carries its k (32 when it only clips),
max-pool, flatten, dropout, identity and ``GradQuant`` (identity in the forward pass) pass their
input's bits on, anything else produces float values (32). Tensors are told apart by the tensor
they view (``_base``; a meta tensor has no data pointer), so a ``.view``/``.flatten`` in a
``forward`` keeps the bits; every tensor seen stays referenced until the pass ends, so no
identity is reused meanwhile.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from .bits import FLOAT
from .model_summary import Row, kernel_for
from .nn import ActQuant, GradQuant

__all__ = ["torch_rows"]

_PASS_BITS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.Dropout, nn.Identity)
_NO_ROW = (GradQuant, nn.Dropout, nn.Identity)  # identities at inference: no row (unless params)


class _Tracer:
    """Forward hooks that append a Row per call and track the bits of every tensor."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.bits: dict[int, int] = {}  # _key -> bits of its values
        self.producer: dict[int, Row] = {}  # _key -> the conv/linear row that made it
        self.keep: list[torch.Tensor] = []  # keeps every tensor alive (no reuse of an id)
        self.counted: set[int] = set()  # modules whose parameters are already in a row

    def in_bits(self, x) -> int:
        return self.bits.get(_key(x), FLOAT) if torch.is_tensor(x) else FLOAT

    def hook(self, name: str):
        def fn(module, inputs, output):
            x = inputs[0] if inputs else None
            if torch.is_tensor(output):
                self.keep.append(output)
                self.keep.extend(t for t in inputs if torch.is_tensor(t))
            row = self.row(name, module, x, output)
            if row is not None:
                self.rows.append(row)

        return fn

    def row(self, name: str, m: nn.Module, x, y) -> Row | None:
        shape = tuple(y.shape[1:]) if torch.is_tensor(y) else None
        ptr = _key(y) if torch.is_tensor(y) else None
        if isinstance(m, ActQuant) and ptr is not None:
            self.bits[ptr] = m.k if m.quantize else FLOAT
        elif isinstance(m, _PASS_BITS + (GradQuant,)) and ptr is not None:
            self.bits[ptr] = self.in_bits(x)
        if isinstance(m, GradQuant) and torch.is_tensor(x) and _key(x) in self.producer:
            self.producer[_key(x)].g = m.k
        params = 0
        if id(m) not in self.counted:  # a module called twice counts its parameters once
            self.counted.add(id(m))
            params = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, _NO_ROW) and params == 0:
            return None
        r = Row(name=name, type=type(m).__name__, shape=shape, params=params)
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            self.weight_row(r, m, self.in_bits(x), y, params)
            if ptr is not None:
                self.producer[ptr] = r
        else:
            r.bytes, r.is_float = 4.0 * params, params > 0
            if isinstance(m, ActQuant):
                r.a = m.k if m.quantize else FLOAT
        return r

    @staticmethod
    def weight_row(r: Row, m: nn.Module, a: int, y, counted: int) -> None:
        """A conv/linear row: bits, packed bytes, MACs, kernel."""
        w = int(getattr(m, "w_bits", FLOAT))
        r.w, r.a, r.g, r.is_weight, r.is_float = w, a, FLOAT, True, w == FLOAT
        if counted:
            bias = m.bias.numel() if m.bias is not None else 0
            r.bytes = m.weight.numel() * w / 8 + bias * 4.0
        out = y[0].numel() if torch.is_tensor(y) else 0
        if isinstance(m, nn.Linear):
            r.macs, op = out * m.in_features, "linear"
        else:
            r.macs, op = out * (m.in_channels // m.groups) * math.prod(m.kernel_size), "conv"
        pixels = math.prod(y[0].shape[1:]) if torch.is_tensor(y) and y.dim() == 4 else 1
        r.kernel = kernel_for(op, r.w, r.a, r.macs, pixels)


# The largest input (C * H * W) that a model the meta pass cannot run is run on for real.
REAL_PASS_ELEMENTS = 2**22


def _key(t: torch.Tensor) -> int:
    """One identity for a tensor and every view of it."""
    return id(t._base if t._base is not None else t)


def _traced_pass(model: nn.Module, shape: tuple[int, ...], meta: bool) -> _Tracer:
    """One forward pass at batch 1 on zeros with the hooks in place; on the meta device, or on
    the parameters' own device and dtype."""
    tracer = _Tracer()
    handles = [
        m.register_forward_hook(tracer.hook(name))
        for name, m in model.named_modules()
        if name and (not any(True for _ in m.children()) or any(m.parameters(recurse=False)))
    ]
    p = next(model.parameters(), None)
    x = torch.zeros(1, *shape, device="meta" if meta else p.device if p is not None else "cpu")
    if p is not None and p.is_floating_point():
        x = x.to(p.dtype)
    try:
        with torch.no_grad():
            if meta:
                tensors = dict(model.named_parameters()) | dict(model.named_buffers())
                on_meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
                functional_call(model, on_meta, (x,))
            else:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return tracer


def torch_rows(model: nn.Module, shape: tuple[int, ...]) -> list[Row]:
    """Rows in call order; modules with parameters that the pass never called come last (with
    shape None), so the rows' params add up to ``sum(p.numel() for p in model.parameters())``."""
    was_training = model.training
    model.eval()
    try:
        try:
            tracer = _traced_pass(model, shape, meta=True)
        except Exception:
            # an operation without a meta kernel, a plain tensor attribute, a data-dependent
            # branch: run it for real, where the input is small enough (else the meta error)
            if math.prod(shape) > REAL_PASS_ELEMENTS:
                raise
            tracer = _traced_pass(model, shape, meta=False)
    finally:
        model.train(was_training)
    for name, m in model.named_modules():
        params = sum(p.numel() for p in m.parameters(recurse=False))
        if params and id(m) not in tracer.counted:
            tracer.rows.append(Row(name, type(m).__name__, None, params=params, bytes=4.0 * params))
    return tracer.rows
