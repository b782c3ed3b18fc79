"""Torch-free runtime for exported DoReFa networks (``.dorefa`` files from :mod:`dorefa.exporter`).

    import dorefa.runtime
    model = dorefa.runtime.load("model.dorefa", threads=1)
    logits = model(x)  # x: float32 (N, C, H, W) in [0, 1] at the model's input size

Only numpy and :mod:`dorefa.kernels` (the compiled popcount kernels) are imported.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

from ..geometry import MAX_THREADS as MAX_THREADS  # the runtime's bound, as before
from ..geometry import check_threads
from .format import FORMAT_VERSION, FormatError

if TYPE_CHECKING:
    from .executor import Model


_SAID_CAPPED: set[int] = set()


def usable_threads(threads: int) -> int:
    """``threads`` capped at the CPUs this process may run on (a RuntimeWarning says so once
    per count): more threads only add contention, and the kernels' pool keeps them (1024 on
    2 vCPUs had left 700 OS threads and run 28x slower). The outputs are the same either way."""
    from ..cpuinfo import usable_cpus

    cpus = len(usable_cpus())
    if threads <= cpus:
        return threads
    if threads not in _SAID_CAPPED:
        _SAID_CAPPED.add(threads)
        warnings.warn(
            f"threads={threads} is more than this process's {cpus} CPUs: using {cpus}",
            RuntimeWarning,
            stacklevel=3,
        )
    return cpus


def load(path: str | os.PathLike, threads: int = 1) -> Model:
    """Read, verify (checksum, bounds, shapes) and prepare a ``.dorefa`` file.

    Raises :class:`FormatError` (a ValueError) naming the file if it is missing, truncated,
    altered or not runnable.
    """
    check_threads(threads)
    from .executor import Model

    return Model(path, threads=threads)


def __getattr__(name: str):
    # The executor (and with it the compiled kernels) loads on first use, so that `dorefa train`
    # and friends, which import dorefa.runtime.cli to register `dorefa run`, never map the
    # extension.
    if name == "Model":
        from .executor import Model

        return Model
    raise AttributeError(f"module 'dorefa.runtime' has no attribute {name!r}")


__all__ = ["FORMAT_VERSION", "FormatError", "Model", "load"]
