"""Shapes and integer ranges of a convolution: one source for the facts that the kernels'
reference, the export and the runtime's loader all check.

A convolution over an ``h x w`` input, padded by ``padding`` on every side, with a ``k x k``
kernel and ``stride``, has ``(h + 2*padding - k) // stride + 1`` output rows (the same for
columns). A bit convolution sums ``fan_in = C_group * KH * KW`` products of unsigned codes below
``2**x_bits`` and ``2**w_bits``, so its accumulator is at most
``fan_in * (2**x_bits - 1) * (2**w_bits - 1)``; the kernels accumulate in int32, so that bound
must not exceed ``INT32_MAX``.
"""

from __future__ import annotations

import numpy as np

INT32_MAX = 2**31 - 1
# The most threads a native kernel call takes (csrc/bindings_checks.h, kMaxThreads), and a
# bound on strides and paddings that the kernels' int64 arithmetic holds with room to spare.
MAX_THREADS = 1024
MAX_STEP = 2**62


class NotAnInt(TypeError, ValueError):
    """A value of the wrong type where an int was asked: a TypeError, and a ValueError for the
    callers that catch every bad argument as one (the runtime's ``threads``)."""


def check_int(name: str, value: object, minimum: int, maximum: int = MAX_STEP) -> int:
    """``value`` as an int if it is an integer (numpy's too, not a bool) in minimum..maximum;
    else NotAnInt or ValueError, naming ``name`` and the range."""
    if type(value) is int and minimum <= value <= maximum:  # the common case, kept cheap
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise NotAnInt(f"{name} must be an int in {minimum}..{maximum}, got {value!r}")
    if not minimum <= int(value) <= maximum:
        raise ValueError(f"{name} must be an int in {minimum}..{maximum}, got {value}")
    return int(value)


def check_threads(threads: object) -> int:
    """A thread count of the kernels and the runtime: an int in 1..MAX_THREADS (a wrong type
    raises NotAnInt, a ValueError as well as a TypeError)."""
    return check_int("threads", threads, 1, MAX_THREADS)


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window along one axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def accumulator_bound(fan_in: int, x_bits: int, w_bits: int) -> int:
    """Largest value of the unsigned-code dot product sum_i x_i * w_i over ``fan_in`` terms."""
    return fan_in * ((1 << x_bits) - 1) * ((1 << w_bits) - 1)


def fits_int32(fan_in: int, x_bits: int, w_bits: int) -> bool:
    """Whether a bit convolution with this fan-in and these bits accumulates exactly in int32."""
    return accumulator_bound(fan_in, x_bits, w_bits) <= INT32_MAX
