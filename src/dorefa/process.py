"""Process-wide settings that training runs under (``dorefa train``, the training benchmarks).

**Freed memory stays in the heap** (:func:`keep_freed_memory`, glibc's ``mallopt``). A
training step at batch 128 allocates and frees tensors of 32 MB and more (the svhn model's
first conv output, oneDNN's buffers beside it). glibc serves a block above its mmap threshold
(which adapts, but never past 32 MB) with a fresh mapping and unmaps it on free, so every page
of the next such block faults again on its first touch; on the 2-vCPU KVM guests this project
runs on a fault costs ~2.4 us. torch's own forward of that conv, (128, 1, 40, 40) -> 48
channels 5x5, took 41 ms a call, 40 of them in the kernel (16.6k faults a call), and 7 ms with
the thresholds raised (one process each, Zen 4 class; the bit runtime's arrays are smaller and
did not change). Raising the mmap and trim thresholds keeps freed blocks for the next step.
``DOREFA_KEEP_HEAP=0`` leaves the allocator as it is.

**OpenMP threads sleep when idle** (:func:`passive_openmp`, ``OMP_WAIT_POLICY=PASSIVE`` unless
set; ``dorefa train --engine int`` only). With 2 threads, torch's OpenMP worker spins after each
of torch's parallel regions, on the core the integer kernels' own threads need next: the int
engine's 2-thread step took 205 ms, its native products running no faster than on one thread
(the max-pool's backward 2.3 -> 5.7 ms), and 147 ms with the workers asleep (separate
processes; in interleaved benchmark runs 189 vs 184 ms: the host's noise is that large); torch's
own steps (float, the torch engine) lose 0-9% to it, so the other commands leave it alone. It is
read when torch loads its OpenMP runtime: set before the first ``import torch`` or not at all.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["die_with_parent", "keep_freed_memory", "passive_openmp"]

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


def passive_openmp() -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` for this process unless the variable is set; True if it is
    now PASSIVE and torch (whose OpenMP runtime reads it once, on loading) is not loaded yet."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE" and "torch" not in sys.modules


def die_with_parent() -> None:
    """In a child (``preexec_fn``): SIGTERM when the parent dies, however it dies (a killed
    sweep or ``--nproc`` launcher left its children running, writing and holding a folder's
    lock). Linux only; elsewhere nothing."""
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
