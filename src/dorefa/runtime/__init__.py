"""Torch-free runtime for exported DoReFa networks (``.dorefa`` files from :mod:`dorefa.export`).

    import dorefa.runtime
    model = dorefa.runtime.load("model.dorefa", threads=1)
    logits = model(x)  # x: float32 (N, C, H, W) in [0, 1] at the model's input size

Only numpy and :mod:`dorefa.kernels` (the compiled popcount kernels) are imported.
"""

from __future__ import annotations

import os

from .executor import Model
from .format import FORMAT_VERSION, FormatError


def load(path: str | os.PathLike, threads: int = 1) -> Model:
    """Read, verify (checksum, bounds, shapes) and prepare a ``.dorefa`` file.

    Raises :class:`FormatError` (a ValueError) naming the file if it is missing, truncated,
    altered or not runnable.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    return Model(path, threads=threads)


__all__ = ["FORMAT_VERSION", "FormatError", "Model", "load"]
