"""Shared cases of the kernel tests: the kernels to run, awkward shapes, cached random
operands with their reference results, and helpers (an independent float64 conv, the CPU's
flags, a fresh interpreter)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np

from dorefa import kernels as K
from dorefa.kernels import reference as R

KERNELS = K.available_kernels()  # the table's rows this CPU runs, fastest first, + reference
NATIVE = [k for k in KERNELS if k != "reference"]
BACKENDS = K.available_backends()
BITS = (1, 2, 3, 4, 8)
ALL_BIT_PAIRS = [(xb, wb) for xb in BITS for wb in BITS]

# (N, C, H, W, O, K, stride, padding): awkward channel counts around word boundaries, odd
# batch and spatial sizes, kernels 1/3/5, strides 1/2, paddings 0/1/2, non-square inputs, and
# padding wider than the kernel (border pixels whose fields lie wholly in the padding).
SHAPES = [
    (1, 1, 5, 5, 3, 3, 1, 1),
    (3, 31, 7, 6, 9, 3, 1, 0),
    (1, 32, 5, 7, 8, 1, 1, 0),
    (2, 33, 6, 5, 17, 3, 2, 1),
    (1, 63, 7, 7, 16, 5, 1, 2),
    (3, 64, 5, 5, 5, 3, 2, 2),
    (1, 65, 4, 9, 24, 3, 1, 1),
    (1, 130, 5, 5, 33, 3, 1, 1),
    (5, 3, 9, 11, 7, 5, 2, 0),
    (1, 130, 3, 3, 8, 5, 2, 2),
    (2, 64, 1, 1, 40, 1, 1, 0),
    (1, 7, 2, 2, 1, 5, 1, 2),
    (2, 5, 3, 4, 17, 1, 2, 2),
]
FEW_SHAPES = [SHAPES[3], SHAPES[6], SHAPES[9]]
FEW_BITS = [(1, 1), (2, 1), (3, 2), (8, 8)]


def ids(shape) -> str:
    """A test id for an (N, C, H, W, O, K, stride, padding) shape."""
    n, c, h, w, o, k, s, p = shape
    return f"n{n}c{c}h{h}w{w}o{o}k{k}s{s}p{p}"


@functools.cache
def case(shape, x_bits, w_bits, seed=0):
    """Random codes, the packed weights and the reference output (cached across kernels)."""
    n, c, h, w, o, k, s, p = shape
    rng = np.random.default_rng([seed, *shape, x_bits, w_bits])
    x = rng.integers(0, 1 << x_bits, (n, c, h, w), dtype=np.uint8)
    wc = rng.integers(0, 1 << w_bits, (o, c, k, k), dtype=np.uint8)
    # Extremes matter for the plane combination: make one output channel all-max.
    wc[0] = (1 << w_bits) - 1
    expected = R.bitconv2d(x, wc, x_bits, w_bits, s, p)
    return x, wc, expected


def direct_float64(x, w, stride, padding):
    """An independent conv: float64 sum over kernel offsets of channel contractions."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    return out


TABLE = K.kernel_table()  # every row of this build's table, supported or not


def cpu_flags() -> set[str]:
    """The CPU's flags from /proc/cpuinfo (empty where there is none), less those that
    ``DOREFA_CPU_FEATURES`` hides from the library (a kernel flag not in its list)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    keep = os.environ.get("DOREFA_CPU_FEATURES")
    if keep is not None:
        needed = {flag for row in TABLE for flag in row["needs"]}
        flags -= needed - set(keep.split(","))
    return flags


def fresh_process(code: str, **env: str) -> list[str]:
    """Runs `code` in a new interpreter (DOREFA_KERNEL unset unless given); its words of output."""
    environ = {k: v for k, v in os.environ.items() if k != "DOREFA_KERNEL"}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()
