"""A cell's accuracy over its seeds: mean and spread (:class:`Spread`), per (W, A, G, width, init).

For the values ``x_1..x_n`` of the n finished seeds of a cell: mean = sum(x)/n, spread = max(x) -
min(x), std = sqrt(sum((x - mean)^2) / (n - 1)) (0 for n = 1). The claims (:mod:`.claims`) call
a difference of two cells' means "no difference" when it is inside the larger of their spreads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple


class Ref(NamedTuple):
    """A cell of the sweep, seeds aside: its bits, width and whether it starts from its float
    cell."""

    w: int
    a: int
    g: int
    width: float = 1.0
    init: bool = False

    def label(self) -> str:
        """``(1,2,6)``, ``(1,2,6) x0.5``, ``(1,2,6) init``."""
        width = "" if self.width == 1.0 else f" x{self.width:g}"
        return f"({self.w},{self.a},{self.g})" + width + (" init" if self.init else "")


class Spread(NamedTuple):
    """Mean and spread of one number over a cell's seeds."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def spread(self) -> float:
        return self.hi - self.lo

    @classmethod
    def of(cls, xs: list[float]) -> Spread:
        return cls(sum(xs) / len(xs), min(xs), max(xs), len(xs))


def std(xs: list[float]) -> float:
    """Sample standard deviation (0 for one value)."""
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def ref_of(row) -> Ref:
    """The cell a result row belongs to, seeds aside."""
    return Ref(row.W, row.A, row.G, float(row.width), bool(row.init))


def group_rows(rows) -> dict[Ref, list]:
    """The finished rows of each cell (all its seeds), in the order the cells first appear."""
    groups: dict[Ref, list] = {}
    for r in rows:
        if r.ok:
            groups.setdefault(ref_of(r), []).append(r)
    return groups


def seed_accuracies(rows, key: str = "best_test_acc") -> Callable[[Ref], Spread | None]:
    """``acc(ref)``: the :class:`Spread` of ``key`` over the finished seeds of cell ``ref``
    (None if it has none)."""
    groups = group_rows(rows)
    stats = {}
    for ref, rs in groups.items():
        xs = [getattr(r, key) for r in rs if getattr(r, key) is not None]
        if xs:
            stats[ref] = Spread.of(xs)
    return lambda ref: stats.get(Ref(*ref[:3], float(ref.width), ref.init))
