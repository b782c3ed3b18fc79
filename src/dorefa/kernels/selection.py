"""Which kernel runs: the kernel table, ``DOREFA_KERNEL`` and the switches.

Names. A native popcount kernel is ``<family>/<packer>``, e.g. ``popcount-avx512/gfni`` (the
AVX-512 popcount tile kernel, activations packed with the GFNI bit transpose); an int8
dot-product kernel is its family, ``int8-amx``, ``int8-vnni``, ``int8-avx2`` or
``int8-winograd-avx2`` (int8-avx2's tiles, and Winograd F(2x2, 3x3) or F(2x4, 3x3) on the
3x3 stride-1 layers where those tiles are slowest), and so is a table-lookup kernel,
``lut-avx512`` or ``lut-avx2``. A request may also name a family (``popcount-avx512``) or a
backend (``avx512``, ``avx2``, ``scalar``), meaning the first kernel of it this CPU runs, or
``reference`` (the NumPy spec, :mod:`dorefa.kernels.reference`).
The table itself lives in C++ (``csrc/kernel_table.cpp``): popcount kernels fastest first (the
first one the CPU runs is the default), the int8 and lut kernels after them (forced by name,
or picked per layer by :mod:`dorefa.kernels.choose`).

The kernel of a call, strongest choice first:

1. :func:`use_kernel` / :func:`use_backend` around the call, in the calling thread (per thread:
   two threads can run two kernels at once);
2. :func:`set_backend` (process-wide);
3. ``DOREFA_KERNEL`` (read at the first call, so a bad value does not break imports);
4. nothing forced: each bit convolution runs the kernel chosen for its layer shape, bits and
   output mode (:mod:`dorefa.kernels.choose`); everything else (weight packing, the float first
   layer, max-pool) runs the default, the first kernel of the table this CPU runs.

:func:`forced_kernel` tells 1-3 from 4; :func:`last_kernel` says what a call actually ran.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .extension import native, native_error

REFERENCE = "reference"
_BACKENDS = ("avx512", "avx2", "scalar")  # the native backends of any build, for messages

_process_kernel: str | None = None  # set_backend / DOREFA_KERNEL / default, resolved lazily
_process_forced = False  # _process_kernel came from set_backend or DOREFA_KERNEL
_local = threading.local()  # .kernel: this thread's use_kernel choice; .ran: see last_kernel


@functools.cache
def _table() -> tuple[dict, ...]:
    return tuple(native.kernel_table()) if native is not None else ()


def kernel_table() -> list[dict]:
    """Every native kernel of this build, fastest first, whether this CPU runs it or not: dicts
    with ``name``, ``family``, ``backend``, ``needs`` (CPU flags, as in /proc/cpuinfo),
    ``supported`` (this CPU has them all), ``tile`` (register tile, pixels x channels),
    ``pixel_tile`` / ``channel_block_tile`` (work-split granularity), ``packer``,
    ``fused_modes`` (output modes finished in the tile kernel, the others in a second pass),
    ``float_conv`` (the path of the float first layer under this kernel: avx512, avx2, scalar) and
    ``weights`` (the packed-weight layout: ``'bitplanes'``, ``'int8'``, ``'int8wino'``,
    ``'lut'`` or ``'lutdp'``)."""
    return [dict(row) for row in _table()]


@functools.cache
def _layouts() -> dict[str, str]:
    return {row["name"]: row["weights"] for row in _table()}


def weight_layout(kernel: str) -> str:
    """The packed-weight layout a native kernel reads: ``'bitplanes'`` (the popcount kernels,
    :attr:`PackedWeights.words`), ``'int8'`` (the int8 kernels, ``csrc/int8conv.h``),
    ``'int8wino'`` (``'int8'`` and, for 3x3 kernels, their Winograd transform:
    ``int8-winograd-avx2``), ``'lut'`` or ``'lutdp'`` (the table-lookup kernels, ``csrc/lut.h``)."""
    return _layouts()[kernel]


def available_kernels() -> list[str]:
    """Kernels this machine can run, fastest first; ``'reference'`` is always last."""
    return [row["name"] for row in _table() if row["supported"]] + [REFERENCE]


def available_backends() -> list[str]:
    """Backends this machine can run, fastest first; ``'reference'`` is always last."""
    names = [row["backend"] for row in _table() if row["supported"]]
    return list(dict.fromkeys(names)) + [REFERENCE]


def resolve(name: str) -> str:
    """The kernel a request names (``''``: the fastest; case and surrounding blanks ignored, as
    everywhere a name is taken); ValueError says what is available."""
    if not isinstance(name, str):
        raise ValueError(
            f"a kernel is named by a string (dorefa.kernels.available_kernels() lists them), "
            f"got {name!r}"
        )
    name = name.strip().lower()
    if native is not None:
        return native.resolve_kernel(name)
    if name in ("", REFERENCE):
        return REFERENCE
    known = "unknown kernel backend" if name not in _BACKENDS else "backend"
    raise ValueError(
        f"{known} {name!r} is not available: the compiled extension dorefa._kernels "
        f"failed to import ({native_error}); available: reference"
    )


def _process() -> str:
    """The process-wide kernel (resolving ``DOREFA_KERNEL`` at the first call)."""
    global _process_kernel, _process_forced
    if _process_kernel is None:
        name = os.environ.get("DOREFA_KERNEL", "").strip()
        kernel = resolve(name)
        _process_forced = bool(name) or native is None  # no extension: the reference only
        _process_kernel = kernel
    return _process_kernel


def current_kernel() -> str:
    """The kernel forced in this thread (use_kernel, set_backend, ``DOREFA_KERNEL``), else the
    default (the table's first this CPU runs): what packing, the float first layer and max-pool
    run, and a bit convolution when forced (else it runs its layer's choice, :func:`forced_kernel`).
    """
    # Set by use_kernel in this thread (never None). Read from the thread's own __dict__: an
    # AttributeError raised and caught, or getattr's default, cost ~0.5 us a call, this 0.06.
    kernel = _local.__dict__.get("kernel")
    if kernel is not None:
        return kernel
    return _process_kernel if _process_kernel is not None else _process()


def forced_kernel() -> str | None:
    """The kernel forced in this thread (use_kernel, set_backend or ``DOREFA_KERNEL``; always
    ``'reference'`` without the extension), or None: then a bit convolution runs the kernel
    chosen for its layer (:mod:`dorefa.kernels.choose`)."""
    kernel = _local.__dict__.get("kernel")  # as current_kernel
    if kernel is not None:
        return kernel
    kernel = _process_kernel if _process_kernel is not None else _process()
    return kernel if _process_forced else None


def backend_of(kernel: str) -> str:
    """The backend of a kernel name: ``'avx512'`` | ``'avx2'`` | ``'scalar'`` | ``'reference'``."""
    for row in _table():
        if row["name"] == kernel:
            return row["backend"]
    return REFERENCE


def backend() -> str:
    """The backend in use: ``'avx512'`` | ``'avx2'`` | ``'scalar'`` | ``'reference'``."""
    return backend_of(current_kernel())


def kernel_name(name: str | None = None) -> str:
    """The kernel a name selects (default: :func:`current_kernel`, the one forced, else the
    default kernel), e.g. ``'popcount-avx512/gfni'``. When nothing is forced a bit convolution
    runs its layer's choice (:mod:`dorefa.kernels.choose`): :func:`last_kernel` names it."""
    return current_kernel() if name is None else resolve(name)


def set_backend(name: str | None) -> str:
    """Selects a kernel or backend for the whole process (``None`` or ``''``, as an empty
    ``DOREFA_KERNEL``: back to ``DOREFA_KERNEL`` / the per-layer choice); returns the previous
    backend. A thread inside :func:`use_kernel` keeps its own choice until the block ends."""
    global _process_kernel, _process_forced
    previous = backend()
    if name is None or (isinstance(name, str) and not name.strip()):  # '' had forced one
        _process_kernel = None  # DOREFA_KERNEL / the per-layer choice, resolved again
    else:
        _process_kernel, _process_forced = resolve(name), True
    return previous


@contextmanager
def use_kernel(name: str) -> Iterator[str]:
    """Context manager: the enclosed calls of this thread run kernel (or backend) ``name``;
    yields the kernel's full name."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"use_kernel takes a kernel, family or backend name such as 'int8-vnni' or 'avx2' "
            f"(dorefa.kernels.available_kernels()), got {name!r}"
        )
    kernel = resolve(name)
    previous = getattr(_local, "kernel", None)
    _local.kernel = kernel
    try:
        yield kernel
    finally:
        if previous is None:
            del _local.kernel  # current_kernel() reads the attribute's absence as "no choice"
        else:
            _local.kernel = previous


@contextmanager
def use_backend(name: str) -> Iterator[str]:
    """:func:`use_kernel` that yields the backend (``'avx512'``, ..., ``'reference'``)."""
    with use_kernel(name) as kernel:
        yield backend_of(kernel)


def ran(where: str) -> None:
    """Records what ran this thread's last bit convolution: ``'reference'``, ``'native'`` (the
    extension knows which kernel) or a kernel's name (restored after a measurement)."""
    _local.ran = where


def last_kernel() -> str:
    """The kernel that ran this thread's last bit convolution (``'reference'`` or a native
    kernel's name, as the extension reports it); ``''`` before any call in this thread."""
    where = getattr(_local, "ran", "")
    return native.last_kernel() if where == "native" else where
