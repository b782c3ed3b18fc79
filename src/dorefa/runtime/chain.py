"""Runs of code-to-code nodes executed as one native call.

Between a network's float first layer and its float classifier most nodes map uint8 codes to
uint8 codes: bit convolutions with a re-quantizing output and max-pools. Each is a short native
call at batch 1 (svhn's conv3: ~20 us), and each costs ~2.5 us more in Python and pybind11
around it. A :class:`CodesRun` holds such a run of nodes, each the only reader of the one before,
and calls them through ``native.CodesChain``: the same native calls, with the same checks and
the same integers, in one step. Per input size, batch class (``prepared.batch_class``) and forced
kernel it binds each convolution's kernel (chosen as the node alone would choose it) once.

The NumPy reference kernel, inputs the native code does not take as they are, and the
executor's ``keep`` / ``watch`` modes run the nodes one by one.
"""

from __future__ import annotations

from ..geometry import conv_out_size
from ..kernels import selection
from ..kernels.extension import native
from ..kernels.prepared import batch_class, native_ready
from .bitconv import BitConv
from .ops import Layer, MaxPool

MIN_RUN = 2  # nodes a run needs to be worth a chain


def chainable(layer: Layer) -> bool:
    """A bit convolution to codes in one group without a fused residual, or a max-pool (whose
    input in a run is always codes)."""
    if isinstance(layer, MaxPool):
        return True
    return (
        isinstance(layer, BitConv)
        and layer.out == "codes"
        and layer.groups == 1
        and not layer.residual
    )


class CodesRun(Layer):
    """Nodes ``layers`` (each the only reader of the one before; a bit convolution first) as one
    node: its inputs are the first node's, its name and output the last node's."""

    op = "codes_run"

    def __init__(self, layers: list[Layer]):
        self.layers = layers
        self.name = layers[-1].name
        self.inputs = layers[0].inputs
        self.source = layers[-1].source
        self._chains: dict[tuple, object] = {}  # (C, H, W, batch class, forced) -> CodesChain

    def forward(self, x, threads):
        forced = selection.forced_kernel()
        if forced == selection.REFERENCE or not native_ready(x, threads):
            for layer in self.layers:
                x = layer.forward(x, threads)
            return x
        key = (x.shape[1:], batch_class(len(x)), forced)
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chains[key] = self._bind(x.shape, forced)
        selection._local.ran = "native"  # as PreparedConv's call
        return chain(x, threads)

    def _bind(self, shape: tuple[int, ...], forced: str | None):
        """The native chain for inputs of ``shape``: each convolution's call on the kernel it
        would run alone (forced, else its choice at this size and batch class)."""
        n, _, h, w = shape
        steps: list = []
        for layer in self.layers:
            if isinstance(layer, MaxPool):
                kh = kw = layer.kernel
                steps.append((layer.kernel, layer.stride, layer.padding))
            else:
                conv = layer.convs[0]
                kernel = forced if forced is not None else conv.choice((h, w), n).kernel
                steps.append(conv.bound_call(kernel))
                _, _, kh, kw = layer.shape
            s, p = layer.stride, layer.padding
            h, w = conv_out_size(h, kh, s, p), conv_out_size(w, kw, s, p)
        return native.CodesChain(steps)

    def describe(self):
        return " -> ".join(layer.describe() for layer in self.layers)


def chain_steps(steps: list[tuple], output: str) -> list[tuple]:
    """The executor's steps ``(layer, input names, names done after it)`` with each run of at
    least :data:`MIN_RUN` chainable nodes, each the only reader of the one before and not the
    model's output, as one :class:`CodesRun` step."""
    out: list[tuple] = []
    run: list[tuple] = []

    def flush():
        if len(run) >= MIN_RUN:
            layers = [step[0] for step in run]
            out.append((CodesRun(layers), run[0][1], run[0][2]))
        else:
            out.extend(run)
        run.clear()

    for step in steps:
        layer, names, done = step
        if run:
            prev = run[-1][0]
            follows = names == (prev.name,) and prev.name in done and prev.name != output
            if follows and chainable(layer):
                run.append(step)
                continue
            flush()
        if isinstance(layer, BitConv) and chainable(layer):
            run.append(step)
        else:
            out.append(step)
    flush()
    return out
