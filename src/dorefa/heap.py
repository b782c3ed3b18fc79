"""Freed memory stays in the process heap while training (glibc's ``mallopt``).

A training step at batch 128 allocates and frees tensors of 32 MB and more (the svhn model's
first conv output, oneDNN's buffers beside it). glibc serves a block above its mmap threshold
(which adapts, but never past 32 MB) with a fresh mapping and unmaps it on free, so every page
of the next such block faults again on its first touch; on the 2-vCPU KVM guests this project
runs on a fault costs ~2.4 us. torch's own forward of that conv, (128, 1, 40, 40) -> 48
channels 5x5, took 41 ms a call, 40 of them in the kernel (16.6k faults a call), and 7 ms with
the thresholds raised (one process each, Zen 4 class; the bit runtime's arrays are smaller and
did not change). Raising the mmap and trim thresholds keeps freed blocks for the next step.
``DOREFA_KEEP_HEAP=0`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (large blocks come from the heap
    and stay there when freed); True if applied. A no-op (False) off Linux, on a C library
    without ``mallopt`` (musl), or with ``DOREFA_KEEP_HEAP=0``."""
    if os.environ.get("DOREFA_KEEP_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
