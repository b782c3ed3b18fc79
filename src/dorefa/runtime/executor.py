"""Executes a ``.dorefa`` file: a graph of float and popcount nodes (:mod:`dorefa.runtime.ops`,
:mod:`dorefa.runtime.bitconv`), checked and built by :mod:`dorefa.runtime.loader`.

Between the float first layer and the float classifier, activations are uint8 codes
(docs/method.md section 3): each quantized layer is one popcount convolution whose integer
thresholds (made by :mod:`dorefa.exporter`) fold the weight scale, BatchNorm, clip and
re-quantization. Where the model adds conv outputs (a residual stream) the value is float32.
Imports numpy and :mod:`dorefa.kernels` only (never torch).
"""

from __future__ import annotations

import math
import threading
from contextlib import nullcontext

import numpy as np

from .. import kernels
from . import check_threads, usable_threads
from .bitconv import BitConv
from .chain import chain_steps
from .format import FORMAT_VERSION_CHAIN, Reader
from .loader import INPUT, MAX_DIM, MAX_ELEMENTS, GraphBuilder, _is_dims, chain_to_graph
from .ops import FloatConv, Layer, Linear, MaxPool, Quantize
from .plan import Plan, model_plan

__all__ = ["BitConv", "FloatConv", "Layer", "Linear", "MaxPool", "Model", "Quantize"]

# A batch of several images on several threads runs as one share of images per thread when an
# image costs at least this many MACs: each share is a whole forward pass on its own core, no
# barrier per node and no line of a node's output written by the other core. ResNet-18 (1.8
# GMAC an image) at batch 8 on 2 threads 6% faster, at batch 2 and AlexNet (1.9 GMAC) at batch
# 8 the same (Zen 4, benchmarks in one process); svhn (39 MMAC) at batch 32 8% slower (its
# nodes are short, and the two shares take turns with the GIL).
SPLIT_MACS = 250_000_000


class Model:
    """A loaded ``.dorefa`` network. Call it on float32 (N, C, H, W) in [0, 1] (already at the
    model's input size) to get float32 logits (N, classes).

    Attributes: ``layers`` (the nodes, in execution order), ``output`` (name of the logits
    node), ``bits`` ("W,A,G" it was trained with), ``w_bits``, ``a_bits``, ``size`` (file
    bytes), ``input_shape`` (C, H, W), ``num_classes``, ``meta``, ``threads``, ``version``.
    """

    def __init__(self, path, threads: int = 1):
        reader = Reader(path)
        h = reader.header
        shape = h.get("input_shape")
        if not _is_dims(shape, 3):
            raise reader.error(f"'input_shape' must be 3 ints in 1..{MAX_DIM}, got {shape!r}")
        if math.prod(shape) > MAX_ELEMENTS:  # as every activation's (loader.py)
            raise reader.error(f"'input_shape' {shape} exceeds {MAX_ELEMENTS} elements")
        self.path = reader.path
        self.size = reader.size
        self.version = reader.version
        self.input_shape = tuple(shape)
        if reader.version == FORMAT_VERSION_CHAIN:
            nodes, output = chain_to_graph(h.get("layers"))
        else:
            nodes, output = h.get("nodes"), h.get("output")
        builder = GraphBuilder(reader)
        self.layers, self.output, self.num_classes = builder.build(nodes, output, self.input_shape)
        self.macs = builder.macs  # per image
        nc = h.get("num_classes")
        if nc != self.num_classes:
            raise reader.error(f"num_classes {nc!r} but the network outputs {self.num_classes}")
        meta = h.get("meta", {})
        self.meta = meta if isinstance(meta, dict) else {}
        self.bits = str(h.get("bits", "?"))
        self.w_bits = next((la.w_bits for la in self.layers if isinstance(la, BitConv)), None)
        self.a_bits = next((la.x_bits for la in self.layers if isinstance(la, BitConv)), None)
        self.threads = threads
        last_use = {}  # value name -> index of the last node reading it (freed after it)
        for i, layer in enumerate(self.layers):
            for name in layer.inputs:
                last_use[name] = i
        # Per node: (layer, its input names, the values no later node reads), made once so a
        # call does no bookkeeping beyond dict lookups (batch-1 calls take ~0.2 ms in all).
        self._steps = [
            (
                layer,
                layer.inputs,
                tuple(n for n in layer.inputs if last_use[n] == i and n != self.output),
            )
            for i, layer in enumerate(self.layers)
        ]
        # the same steps with runs of code-to-code nodes as one native call each (chain.py)
        self._run_steps = chain_steps(self._steps, self.output)
        self._choose_kernels()

    def _choose_kernels(self) -> None:
        """Nothing forced: one batch-1 run on zeros makes every layer's kernel choice now
        (:mod:`dorefa.kernels.choose`), not at the first real call."""
        try:
            forced = kernels.forced_kernel()
        except ValueError:  # a DOREFA_KERNEL this CPU lacks: the first call says so
            return
        if forced is None:
            self.run(np.zeros((1, *self.input_shape), np.float32), threads=1)

    def plan(self) -> Plan:
        """Per bit convolution: node, shape, bits, output mode, the kernel it runs (chosen, or
        forced) and its best batch-1 time in us; ``print(model.plan())`` shows the table."""
        return model_plan(self)

    def _check_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"input must be (N, {', '.join(map(str, self.input_shape))}) "
                f"float32 at the model's input size, got shape {x.shape}"
            )
        if x.dtype.kind != "f":  # a silent cast would feed uint8 pixels 255x too bright
            raise ValueError(
                f"input is {x.dtype}: the runtime takes float pixels in [0, 1] as the model "
                "was trained on (divide uint8 images by 255)"
            )
        given = x
        with np.errstate(over="ignore"):  # said below, in words
            x = np.ascontiguousarray(x, dtype=np.float32)
        # one pass (min and max were two: 3.7 against 1.7 us at batch 1, 118 / 99 us for 8 x 3 x
        # 224 x 224, Zen 4)
        if not np.isfinite(x).all():
            if given.dtype.itemsize > 4 and np.isfinite(given).all():
                raise ValueError(
                    "input holds values beyond float32's range (|x| > 3.4e38); the runtime "
                    "computes in float32"
                )
            raise ValueError("input holds NaN or inf values; the runtime needs finite pixels")
        return x

    def run(self, x: np.ndarray, threads: int | None = None, keep: bool = False, watch=None):
        """Every node in order on ``x``; returns the logits, and with ``keep`` also a dict of
        every value by name (the input as ``'input'``), for layer-by-layer comparisons. A node
        fused into the one before it (``summary()`` says "fused") has no value of its own: the
        fused node's value carries the later name (a conv with its pool and quantize fused in
        appears as the quantize's output).
        ``watch(layer, output, inputs)`` (optional) sees every node's output as it is made."""
        threads = self.threads if threads is None else threads
        check_threads(threads)
        threads = usable_threads(threads)
        x = self._check_input(x)
        if threads > 1 and len(x) > 1 and not keep and watch is None and self.macs >= SPLIT_MACS:
            return self._run_shares(x, threads)
        return self._forward(x, threads, keep, watch)

    def _forward(self, x: np.ndarray, threads: int, keep: bool = False, watch=None):
        """``run`` on a checked input, node after node."""
        values = {INPUT: x}
        steps = self._steps if keep or watch is not None else self._run_steps
        for layer, names, done in steps:
            if len(names) == 1:
                y = layer.forward(values[names[0]], threads)
            else:
                y = layer.run([values[n] for n in names], threads)
            values[layer.name] = y
            if watch is not None:
                watch(layer, y, [values[n] for n in names])
            if not keep:
                for n in done:
                    del values[n]
        return (values[self.output], values) if keep else values[self.output]

    def _run_shares(self, x: np.ndarray, threads: int) -> np.ndarray:
        """``run`` as min(threads, N) shares of the images, one Python thread each (this one
        runs the first), the threads dealt out among them; the same logits (each image's
        outputs do not depend on the others'). A kernel forced in this thread is forced in
        the others too."""
        parts = min(threads, len(x))
        bounds = np.linspace(0, len(x), parts + 1).astype(int)
        forced = kernels.forced_kernel()
        outs: list = [None] * parts
        errors: list[BaseException] = []

        def share(i: int) -> None:
            t = threads // parts + (i < threads % parts)
            try:
                with kernels.use_kernel(forced) if forced is not None else nullcontext():
                    outs[i] = self._forward(x[bounds[i] : bounds[i + 1]], t)
            except BaseException as e:  # re-raised in the calling thread
                errors.append(e)

        workers = [threading.Thread(target=share, args=(i,)) for i in range(1, parts)]
        for w in workers:
            w.start()
        share(0)
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        return np.concatenate(outs)

    def __reduce__(self):
        raise TypeError(
            f"a loaded model ({self.path}) holds native kernels and cannot be pickled: pass the "
            "file's path to each process and call dorefa.runtime.load there"
        )

    def __call__(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        return self.run(x, threads)

    def summary(self) -> str:
        lines = [
            f"{self.path}: {self.size} bytes, bits {self.bits}, input "
            f"{'x'.join(map(str, self.input_shape))}, {self.num_classes} classes, "
            f"kernel backend {kernels.backend()}"
        ]
        chain = all(
            la.inputs == ((INPUT,) if i == 0 else (self.layers[i - 1].name,))
            for i, la in enumerate(self.layers)
        )
        for i, layer in enumerate(self.layers):
            src = "" if chain else f"  <- {', '.join(layer.inputs)}  [{layer.name}]"
            lines.append(f"  {i:2d} {layer.describe()}{src}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"dorefa.runtime.Model({str(self.path)!r}, bits={self.bits}, "
            f"layers={len(self.layers)}, size={self.size})"
        )
