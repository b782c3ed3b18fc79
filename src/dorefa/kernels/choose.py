"""The one place that picks a bit convolution's kernel when none is forced.

Every native kernel gives the same integers, so the pick is only about speed. For one layer (its
weight shape, input H x W, bits, stride, padding, output mode and batch class: 1, or 32 for
calls of 8 images or more, :func:`dorefa.kernels.prepared.batch_class`; the thread count is not
part of it):

1. the cost model (:func:`model_cost`) ranks the families this CPU runs (the first kernel of
   each family in the table) and keeps the cheapest of each kind, popcount, int8 and lut (at
   most :data:`CANDIDATES`; two families of a kind differ by a known factor, not worth timing), less
   any priced at more than :data:`CLEAR_WIN` times the cheapest;
2. a short measurement decides: each candidate runs the layer on a zero input at the batch
   class's batch (1, or the first batched call's own batch up to 32), one thread, in
   interleaved rounds (at least :data:`MIN_ROUNDS`, at most :data:`MAX_ROUNDS`, stopping after
   :data:`BUDGET_S` seconds), best time of each; the fastest wins;
3. the result is cached for the process (:func:`cache_info`, :func:`clear_cache`).

``DOREFA_KERNEL_CHOICE`` selects the method: ``measure`` (default, 1-3), ``model`` (the cost
model alone: deterministic, no timing) or ``first`` (no choice: the table's first kernel, the
behaviour before the choice existed). A forced kernel (``DOREFA_KERNEL``, :func:`use_kernel`,
:func:`set_backend`) bypasses all of this.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import selection

CHOICE_ENV = "DOREFA_KERNEL_CHOICE"
METHODS = ("measure", "model", "first")
CANDIDATES = 3  # families measured per layer
# A candidate the model prices at more than this many times the cheapest is not measured: the
# model is not that far off, and timing a 64-plane-pair popcount run of a W8A8 layer at batch 32
# took ~70 ms a layer.
CLEAR_WIN = 4.0
MIN_ROUNDS, MAX_ROUNDS = 2, 5
BUDGET_S = 0.004  # measurement time per layer, once MIN_ROUNDS are done

# Throughput on one Zen 4 core at batch 1 (int8-amx: on a Sapphire Rapids class core, the CPUs
# that have AMX; docs/kernels.md): popcount kernels in G plane-pair
# MAC/s (a W-bit x A-bit MAC is W*A plane pairs), int8 kernels in GMAC/s whatever the bits,
# lut kernels in G lookup-MAC/s (one weight plane, one activation slice, :func:`lut_lookups`).
POPCOUNT_RATE = {"popcount-avx512": 900.0, "popcount-avx2": 300.0, "popcount-scalar": 50.0}
INT8_RATE = {"int8-amx": 600.0, "int8-vnni": 130.0, "int8-avx2": 110.0, "int8-winograd-avx2": 110.0}
LUT_RATE = {"lut-vnni": 430.0, "lut-avx512": 450.0, "lut-avx2": 420.0}
LUT_DWORD_SUMS = ("lut-vnni",)  # lut kernels that sum in dwords: no byte sums to widen
# W8A8 overflows VPMADDUBSW's int16 pair sums: int8-avx2's nibble path. int8-winograd-avx2 runs
# those layers on Winograd where they are 3x3 stride 1 (115-130 GMAC/s at svhn's), elsewhere on
# the same tiles: priced at its Winograd rate, so that it is the int8 kind's candidate.
INT8_AVX2_W8A8_RATE = 50.0
AMX_ROWS = 16  # output pixels of one int8-amx tile (a TDPBUUD's 16 rows)


@dataclass(frozen=True)
class Choice:
    """The kernel of one layer: ``how`` is ``'measured'``, ``'model'``, ``'first'`` or
    ``'forced'``; ``us`` its best measured time at its batch class (None when not measured);
    ``candidates`` ((kernel, model us, measured us or None), ...) in the model's order."""

    kernel: str
    how: str
    us: float | None
    candidates: tuple[tuple[str, float, float | None], ...]


def model_cost(family: str, w_bits: int, x_bits: int, macs: int, rows: int = AMX_ROWS) -> float:
    """Predicted microseconds of ``macs`` multiply-adds on one core, ``rows`` output pixels a
    call (batch x output H x W):

    - popcount kernels: ``macs * w_bits * x_bits / rate`` (one AND + popcount per bit-plane
      pair, so the cost grows with W * A);
    - int8 kernels: ``macs / rate``, flat in the bits (one 8-bit multiply-add per MAC), except
      int8-avx2 at W8A8 (``INT8_AVX2_W8A8_RATE``; int8-winograd-avx2 is priced as where its
      Winograd runs); int8-amx's ``macs / (rate * used)``, ``used`` the share of its tiles'
      16 rows that ``rows`` fill (``amx_rows_used``: a one-pixel layer at batch 1 fills one);

    - lut kernels: ``macs * lut_lookups(w_bits, x_bits) / rate``.

    Rates in G/s (``POPCOUNT_RATE``, ``INT8_RATE``, ``LUT_RATE``); an unknown family gets the
    slowest rate of its kind. Only the order matters: the measurement decides between the best
    of each kind."""
    if family.startswith("lut-"):
        rate = LUT_RATE.get(family, min(LUT_RATE.values()))
        widen = family not in LUT_DWORD_SUMS
        return macs * lut_lookups(w_bits, x_bits, widen) / rate / 1e3
    if family.startswith("int8-"):
        rate = INT8_RATE.get(family, min(INT8_RATE.values()))
        if family == "int8-avx2" and w_bits == x_bits == 8:
            rate = INT8_AVX2_W8A8_RATE
        if family == "int8-amx":
            rate *= amx_rows_used(rows)
        return macs / rate / 1e3
    rate = POPCOUNT_RATE.get(family, min(POPCOUNT_RATE.values()))
    return macs * w_bits * x_bits / rate / 1e3


def amx_rows_used(rows: int) -> float:
    """The share of ``int8-amx``'s tile rows (``AMX_ROWS`` output pixels a tile) that a call of
    ``rows`` output pixels fills: ``rows / (16 ceil(rows / 16))``. svhn's one-pixel conv6 at
    batch 1 fills 1 of 16: 41.8 us on ``int8-amx``, 27.5 on ``int8-vnni`` (Sapphire Rapids
    class, one thread), which the flat rate had not seen."""
    rows = max(int(rows), 1)
    return rows / (AMX_ROWS * -(-rows // AMX_ROWS))


def lut_lookups(w_bits: int, x_bits: int, widen: bool = True) -> float:
    """Relative work of a lut kernel (``csrc/lut.h``) per MAC: one byte lookup and add per weight
    plane and activation slice (x_bits <= 6: one slice; 7, 8: two of ceil(x_bits / 2) bits),
    plus, with ``widen`` (the byte-counter kernels), the widening of the byte sums every
    ``255 // maxv`` lookups (3 instructions against the lookup's 2, ``maxv = 4 (2**bits - 1)``)."""
    w = 1.5 if widen else 0.0
    return w_bits * sum(1.0 + w / (255 // (4 * (2**b - 1))) for b in lut_slices(x_bits))


def lut_slices(x_bits: int) -> list[int]:
    """Bits of each activation slice of the lut kernels: one slice up to 6 bits, else two."""
    return [x_bits] if x_bits <= 6 else [(x_bits + 1) // 2, x_bits - (x_bits + 1) // 2]


def model_pick(w_bits: int, x_bits: int, macs: int, rows: int = AMX_ROWS) -> str:
    """The kernel the cost model alone picks for these bits, MACs and output pixels (method
    ``model``): the first kernel of the cheapest family this CPU runs."""
    return min(families(), key=lambda k: model_cost(_family(k), w_bits, x_bits, macs, rows))


def method() -> str:
    """``DOREFA_KERNEL_CHOICE`` (default ``measure``); ValueError names the valid values."""
    value = os.environ.get(CHOICE_ENV, "").strip().lower() or "measure"
    if value not in METHODS:
        raise ValueError(f"{CHOICE_ENV}={value!r} is not one of {', '.join(METHODS)}")
    return value


def families() -> list[str]:
    """The first kernel of each family this CPU runs, in table order."""
    first: dict[str, str] = {}
    for row in selection.kernel_table():
        if row["supported"]:
            first.setdefault(row["family"], row["name"])
    return list(first.values())


def _family(kernel: str) -> str:
    return kernel.split("/")[0]


# AMX's tile unit runs at a third to a half of its speed for a while after it has idled
# (Sapphire Rapids class, AlexNet conv3 at batch 1 after 1 s idle: the first call 390-600 us,
# up to 360 us for the first 10 ms in one of three trials, then 160-200 us; after 0.3 s of
# another kernel the first call 1.3x slow). Timed cold, `int8-amx` lost layers it wins warm, so
# a family here is called for WARM_UP_S before it is timed, unless one of its measurements
# ended less than WARM_UP_IDLE_S ago (a model's layers are chosen one after the other).
WARM_UP_FAMILIES = ("int8-amx",)
WARM_UP_S = 0.05
WARM_UP_IDLE_S = 0.1
_last_timed: dict[str, float] = {}  # family -> perf_counter() when its last measurement ended


def _warm_up(run: Callable[[str], object], kernel: str) -> None:
    family = _family(kernel)
    now = time.perf_counter()
    if family not in WARM_UP_FAMILIES or now - _last_timed.get(family, -math.inf) < WARM_UP_IDLE_S:
        return
    while time.perf_counter() - now < WARM_UP_S:
        run(kernel)


def measure(run: Callable[[str], object], kernels: list[str]) -> dict[str, float]:
    """Best microseconds of ``run(kernel)`` per kernel: one warm-up call each (it also packs the
    weights in the kernel's layout; ``WARM_UP_FAMILIES`` longer), then interleaved timed rounds
    (module doc)."""
    best = dict.fromkeys(kernels, math.inf)
    for kernel in kernels:
        run(kernel)
    for kernel in kernels:  # after every first call (packing): the rounds follow at once
        _warm_up(run, kernel)
    start = time.perf_counter()
    rounds = 0
    while rounds < MIN_ROUNDS or (rounds < MAX_ROUNDS and time.perf_counter() - start < BUDGET_S):
        for kernel in kernels:
            t0 = time.perf_counter()
            run(kernel)
            best[kernel] = min(best[kernel], time.perf_counter() - t0)
        rounds += 1
    for kernel in kernels:
        _last_timed[_family(kernel)] = time.perf_counter()
    return {k: v * 1e6 for k, v in best.items()}


_cache: dict[tuple, Choice] = {}
_stats = {"hits": 0, "misses": 0}
_lock = threading.RLock()  # one measurement at a time: two would time each other


def cache_info() -> dict[str, int]:
    """``hits``, ``misses`` and ``size`` of the per-process choice cache."""
    return {**_stats, "size": len(_cache)}


def clear_cache() -> None:
    """Forgets every choice (the next layer of each shape is chosen again)."""
    with _lock:
        _cache.clear()
        _stats.update(hits=0, misses=0)


def choose(
    key: tuple, w_bits: int, x_bits: int, macs: int, run: Callable[[str], object],
    forced: str | None = None, rows: int = AMX_ROWS,
) -> Choice:  # fmt: skip
    """The :class:`Choice` for the layer ``key`` (hashable: shape, batch class, bits, stride,
    padding, mode), cached; ``run(kernel)`` runs the layer once on zeros at the key's batch
    class, ``macs`` and ``rows`` (output pixels) being that call's. With ``forced`` the choice
    is that kernel, measured alone (for :meth:`dorefa.runtime.Model.plan`)."""
    how = "forced" if forced else method()
    full_key = (key, how, forced)
    with _lock:
        choice = _cache.get(full_key)
        if choice is not None:
            _stats["hits"] += 1
            return choice
        _stats["misses"] += 1
        choice = _cache[full_key] = _decide(how, w_bits, x_bits, macs, rows, run, forced)
    return choice


def _decide(how, w_bits, x_bits, macs, rows, run, forced) -> Choice:
    def price(kernel: str) -> float:
        return model_cost(_family(kernel), w_bits, x_bits, macs, rows)

    if forced:
        ranked = [(forced, price(forced))]
    else:
        costs = [(k, price(k)) for k in families()]
        ranked = costs[:1] if how == "first" else sorted(costs, key=lambda kc: kc[1])
        kinds: dict[str, tuple[str, float]] = {}
        for kernel, cost in ranked:
            kinds.setdefault(kernel.split("-")[0], (kernel, cost))  # the cheapest of each kind
        ranked = list(kinds.values())[:CANDIDATES]
        ranked = [(k, c) for k, c in ranked if c <= CLEAR_WIN * ranked[0][1]]
    if how in ("model", "first"):
        kernel, _ = ranked[0]
        return Choice(kernel, "model" if how == "model" else "first", None,
                      tuple((k, c, None) for k, c in ranked))  # fmt: skip
    last = selection.last_kernel()
    try:
        times = measure(run, [k for k, _ in ranked])
    finally:
        selection.ran(last)  # the measurement is not a call of this thread: keep its answer
    kernel = min(times, key=times.__getitem__)
    seen = tuple((k, c, times[k]) for k, c in ranked)
    return Choice(kernel, "forced" if forced else "measured", times[kernel], seen)
