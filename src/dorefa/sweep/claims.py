"""The paper's claims (docs/method.md section 4) as data, each checked on a sweep's results.

A :class:`Claim` names the cells it compares as pairs ``(a, b)``; each pair gives one difference
of best test accuracies, ``d = acc(a) - acc(b)`` (``None`` when a cell is missing or failed). Its
``test`` turns the differences into a verdict: True (holds), False (does not hold) or None (not
measured). :data:`TOL` is the accuracy difference below which two cells count as equal: seed noise
at the sweep's short budgets. The paper's figures quoted are top-1 errors of tensorpack's AlexNet
reproduction (the paper's SVHN table is on a budget the sweep does not reach).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

TOL = 0.01  # accuracy differences smaller than this are "about equal" (seed noise at this budget)

Diffs = Sequence[float | None]  # one per pair of a claim, None where a cell is missing


class Ref(NamedTuple):
    """A cell of the sweep: its bits, width and whether it starts from its float cell."""

    w: int
    a: int
    g: int
    width: float = 1.0
    init: bool = False

    def label(self) -> str:
        """``(1,2,6)``, ``(1,2,6) x0.5``, ``(1,2,6) init``."""
        width = "" if self.width == 1.0 else f" x{self.width:g}"
        return f"({self.w},{self.a},{self.g})" + width + (" init" if self.init else "")


@dataclass(frozen=True)
class Claim:
    claim: str  # what is checked, in a few words (the report's heading)
    paper: str  # what the paper says
    paper_figure: str  # the paper's number behind it ("" where it gives none)
    pairs: tuple[tuple[Ref, Ref], ...]  # the cells compared: d = acc(a) - acc(b) per pair
    holds_when: str  # the test, in words
    test: Callable[[Diffs], bool | None]  # the test on the differences (None: not measured)
    pair_labels: tuple[str, ...] = ()  # optional prefix of each pair's line in the report


def every(cond: Callable[[float], bool]) -> Callable[[Diffs], bool | None]:
    """Holds when ``cond(d)`` holds for every measured pair (None when none is measured)."""

    def test(ds: Diffs) -> bool | None:
        got = [d for d in ds if d is not None]
        return all(cond(d) for d in got) if got else None

    return test


def within_per_pair(tols: Sequence[float]) -> Callable[[Diffs], bool | None]:
    """Holds when pair i's difference is at least ``-tols[i]`` for every measured pair."""

    def test(ds: Diffs) -> bool | None:
        got = [(d, t) for d, t in zip(ds, tols, strict=True) if d is not None]
        return all(d >= -t for d, t in got) if got else None

    return test


def first_above_second(ds: Diffs) -> bool | None:
    """d[0] > d[1]; not measured unless both are."""
    return None if len(ds) != 2 or None in ds else ds[0] > ds[1]


def non_increasing(ds: Diffs) -> bool | None:
    """Each measured difference <= the one before it; needs two measured pairs."""
    got = [d for d in ds if d is not None]
    return all(b <= a for a, b in zip(got, got[1:], strict=False)) if len(got) >= 2 else None


WIDTHS = (1.0, 0.5, 0.25, 0.125)

CLAIMS = [
    Claim(
        claim="G=6 is about as good as G=32",
        paper="6-bit gradients are about as good as float ones",
        paper_figure="AlexNet (1,2,6) 46.8% vs (1,2,32) 46.6% error",
        pairs=tuple((Ref(1, a, 6), Ref(1, a, 32)) for a in (1, 2, 4)),
        holds_when=f"every G=6 cell is within {TOL} of its G=32 cell or above",
        test=every(lambda d: d >= -TOL),
    ),
    Claim(
        claim="G=4 and G=2 are clearly worse than G=6",
        paper="4-bit gradients clearly hurt",
        paper_figure="AlexNet (1,2,4) 54.0% vs (1,2,6) 46.8% error",
        pairs=tuple((Ref(1, a, g), Ref(1, a, 6)) for a in (1, 2) for g in (4, 2)),
        holds_when=f"every G<6 cell is more than {TOL} below its G=6 cell",
        test=every(lambda d: d < -TOL),
    ),
    Claim(
        claim="G=8 adds nothing over G=6",
        paper="6 bits suffice",
        paper_figure="",
        pairs=((Ref(1, 2, 8), Ref(1, 2, 6)),),
        holds_when=f"they are within {TOL}",
        test=every(lambda d: abs(d) <= TOL),
    ),
    Claim(
        claim="More activation bits help: A=1 < A=2 < A=4 at W=1",
        paper="accuracy rises with A; activations need more bits than weights",
        paper_figure="",
        pairs=(
            (Ref(1, 2, 32), Ref(1, 1, 32)),
            (Ref(1, 4, 32), Ref(1, 2, 32)),
            (Ref(1, 2, 6), Ref(1, 1, 6)),
            (Ref(1, 4, 6), Ref(1, 2, 6)),
        ),
        holds_when="every cell is above the one with fewer activation bits",
        test=every(lambda d: d > 0),
    ),
    Claim(
        claim="1-bit weights alone cost little; activations cost more",
        paper="1-bit weights cost less accuracy than 1-bit activations",
        paper_figure="AlexNet (1,32,32) 44.3% vs float 40.3% error, but (1,1,32) 51.5%",
        pairs=((Ref(1, 32, 32), Ref(32, 32, 32)), (Ref(1, 1, 32), Ref(1, 32, 32))),
        holds_when="going to 1-bit weights loses less than then going to 1-bit activations",
        test=first_above_second,
    ),
    Claim(
        claim="More weight bits help: (2,2,6) >= (1,2,6); (8,8,8) ~ float",
        paper="(8,8,8) is close to float",
        paper_figure="AlexNet (8,8,8) 42.0% vs float 40.3% error",
        pairs=((Ref(2, 2, 6), Ref(1, 2, 6)), (Ref(8, 8, 8), Ref(32, 32, 32))),
        holds_when=f"(2,2,6) is at most {TOL} below (1,2,6) and (8,8,8) at most {2 * TOL} "
        "below float",
        test=within_per_pair((TOL, 2 * TOL)),
    ),
    Claim(
        claim="Initialising from a trained float model helps",
        paper="initialising from a float model gives higher accuracy than training from scratch",
        paper_figure="",
        pairs=((Ref(1, 2, 6, 1.0, True), Ref(1, 2, 6)),),
        holds_when="the initialised cell is above the one trained from scratch",
        test=every(lambda d: d > 0),
    ),
    Claim(
        claim="Thinner models lose more from quantization",
        paper="the gap between (1,2,6) and float grows from model A to D",
        paper_figure="",
        pairs=tuple((Ref(1, 2, 6, w), Ref(32, 32, 32, w)) for w in WIDTHS),
        holds_when="the (1,2,6) - float difference falls monotonically with width",
        test=non_increasing,
        pair_labels=tuple(f"width {w:g}: " for w in WIDTHS),
    ),
]


def best_accuracies(rows) -> Callable[[Ref], float | None]:
    """``acc(ref)``: the best test accuracy of the finished cell ``ref`` among ``rows``
    (:class:`dorefa.sweep.results.CellResult`), None if it is missing or failed."""
    best = {Ref(r.W, r.A, r.G, float(r.width), bool(r.init)): r.best_test_acc for r in rows if r.ok}
    return lambda ref: best.get(Ref(*ref[:3], float(ref.width), ref.init))
