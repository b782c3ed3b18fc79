"""The paper's claims (docs/method.md section 4) as data, each judged on a sweep's results with
the seeds' spread.

A :class:`Claim` names the cells it compares as pairs ``(a, b)``; each pair gives one
:class:`Diff`: ``d = mean(a) - mean(b)`` of the best test accuracies over the cells' seeds, and
the pair's ``noise`` = the larger of the two cells' seed spreads (max - min over seeds) when both
have >= 2 seeds, else :data:`TOL` (no spread measured: a fixed stand-in for seed noise). A pair
is "above" when ``d > noise``, "below" when ``d < -noise``, else "same" (inside the spread). Its
``test`` turns the pairs into a verdict: :data:`HOLDS`, :data:`FAILS`, :data:`SAME` (a claimed
difference that stays inside the seeds' spread: "no difference", not "does not hold") or None
(not measured). The paper's figures quoted are top-1 errors of tensorpack's AlexNet
reproduction and its SVHN errors; where neither gives one the report says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .seeds import Ref, seed_accuracies

TOL = 0.01  # the noise of a pair whose cells have fewer than 2 seeds (seed noise, short budgets)

HOLDS, FAILS, SAME = "holds", "does not hold", "no difference"


class Diff(NamedTuple):
    d: float  # mean(a) - mean(b)
    noise: float  # differences within +-noise are "no difference"

    def sign(self) -> int:
        """+1 above, -1 below, 0 inside the noise."""
        return 1 if self.d > self.noise else -1 if self.d < -self.noise else 0


Diffs = Sequence[Diff | None]  # one per pair of a claim, None where a cell is missing
Test = Callable[[Diffs], str | None]


@dataclass(frozen=True)
class Claim:
    claim: str  # what is checked, in a few words (the report's heading)
    paper: str  # what the paper says
    paper_figure: str  # the paper's number behind it ("" where it gives none)
    pairs: tuple[tuple[Ref, Ref], ...]  # the cells compared: d = acc(a) - acc(b) per pair
    holds_when: str  # the test, in words
    test: Test  # the test on the differences (None: not measured)
    pair_labels: tuple[str, ...] = ()  # optional prefix of each pair's line in the report


def _measured(ds: Diffs) -> list[Diff]:
    return [d for d in ds if d is not None]


def directed(direction: int) -> Test:
    """Claims "a is above b" (``direction`` +1) or "below" (-1) for every pair: holds when every
    measured pair is so beyond its noise, fails when one goes the other way beyond its noise,
    else (some pair inside the noise) "no difference"."""

    def test(ds: Diffs) -> str | None:
        signs = [d.sign() * direction for d in _measured(ds)]
        if not signs:
            return None
        return FAILS if -1 in signs else HOLDS if all(s == 1 for s in signs) else SAME

    return test


def not_below(factors: Sequence[float] | None = None) -> Test:
    """Holds when pair i's ``d >= -factors[i] * noise`` (factor 1 by default) for every measured
    pair: a within the noise of b, or above it."""

    def test(ds: Diffs) -> str | None:
        fs = factors or (1.0,) * len(ds)
        got = [(d, f) for d, f in zip(ds, fs, strict=True) if d is not None]
        return (HOLDS if all(d.d >= -f * d.noise for d, f in got) else FAILS) if got else None

    return test


def equal(ds: Diffs) -> str | None:
    """Holds when every measured pair is inside its noise."""
    got = _measured(ds)
    return (HOLDS if all(d.sign() == 0 for d in got) else FAILS) if got else None


def first_above_second(ds: Diffs) -> str | None:
    """d[0] > d[1] beyond the larger noise; not measured unless both are."""
    if len(ds) != 2 or None in ds:
        return None
    return directed(1)([Diff(ds[0].d - ds[1].d, max(ds[0].noise, ds[1].noise))])


def non_increasing(ds: Diffs) -> str | None:
    """The measured differences fall: fails when one rises above the one before it beyond the
    noise; holds when none does and the last is below the first beyond the noise; else "no
    difference". Needs two measured pairs."""
    got = _measured(ds)
    if len(got) < 2:
        return None
    noise = max(d.noise for d in got)
    if any(b.d - a.d > noise for a, b in zip(got, got[1:], strict=False)):
        return FAILS
    return HOLDS if got[-1].d - got[0].d < -noise else SAME


WIDTHS = (1.0, 0.5, 0.25, 0.125)
NOISE = "noise (the seeds' spread, or TOL with < 2 seeds)"

CLAIMS = [
    Claim(
        claim="G=6 is about as good as G=32",
        paper="6-bit gradients are about as good as float ones",
        paper_figure="AlexNet (1,2,6) 46.8% vs (1,2,32) 46.6% error",
        pairs=tuple((Ref(1, a, 6), Ref(1, a, 32)) for a in (1, 2, 4)),
        holds_when=f"every G=6 cell is within the {NOISE} of its G=32 cell or above",
        test=not_below(),
    ),
    Claim(
        claim="G=4 and G=2 are clearly worse than G=6",
        paper="4-bit gradients clearly hurt",
        paper_figure="AlexNet (1,2,4) 54.0% vs (1,2,6) 46.8% error",
        pairs=tuple((Ref(1, a, g), Ref(1, a, 6)) for a in (1, 2) for g in (4, 2)),
        holds_when=f"every G<6 cell is below its G=6 cell by more than the {NOISE}",
        test=directed(-1),
    ),
    Claim(
        claim="G=8 adds nothing over G=6",
        paper="6 bits suffice",
        paper_figure="",
        pairs=((Ref(1, 2, 8), Ref(1, 2, 6)),),
        holds_when=f"they are within the {NOISE}",
        test=equal,
    ),
    Claim(
        claim="More activation bits help: A=1 < A=2 < A=4 at W=1",
        paper="accuracy rises with A; activations need more bits than weights",
        paper_figure="AlexNet (1,2,32) 46.6% vs (1,1,32) 51.5% error; tensorpack's SVHN "
        "(1,2,4) 3.0-3.1% vs (1,1,4) 3.1-3.2% error",
        pairs=(
            (Ref(1, 2, 32), Ref(1, 1, 32)),
            (Ref(1, 4, 32), Ref(1, 2, 32)),
            (Ref(1, 2, 6), Ref(1, 1, 6)),
            (Ref(1, 4, 6), Ref(1, 2, 6)),
        ),
        holds_when="every cell is above the one with fewer activation bits by more than the "
        + NOISE,
        test=directed(1),
    ),
    Claim(
        claim="1-bit weights alone cost little; activations cost more",
        paper="1-bit weights cost less accuracy than 1-bit activations",
        paper_figure="AlexNet (1,32,32) 44.3% vs float 40.3% error, but (1,1,32) 51.5%",
        pairs=((Ref(1, 32, 32), Ref(32, 32, 32)), (Ref(1, 1, 32), Ref(1, 32, 32))),
        holds_when="going to 1-bit weights loses less than then going to 1-bit activations, "
        f"by more than the {NOISE}",
        test=first_above_second,
    ),
    Claim(
        claim="More weight bits help: (2,2,6) >= (1,2,6); (8,8,8) ~ float",
        paper="(8,8,8) is close to float",
        paper_figure="AlexNet (8,8,8) 42.0% vs float 40.3% error",
        pairs=((Ref(2, 2, 6), Ref(1, 2, 6)), (Ref(8, 8, 8), Ref(32, 32, 32))),
        holds_when=f"(2,2,6) is at most the {NOISE} below (1,2,6) and (8,8,8) at most twice "
        "that below float",
        test=not_below((1.0, 2.0)),
    ),
    Claim(
        claim="Initialising from a trained float model helps",
        paper="initialising from a float model gives higher accuracy than training from scratch",
        paper_figure="",
        pairs=((Ref(1, 2, 6, 1.0, True), Ref(1, 2, 6)),),
        holds_when=f"the initialised cell is above the one from scratch by more than the {NOISE}",
        test=directed(1),
    ),
    Claim(
        claim="Thinner models lose more from quantization",
        paper="the gap between (1,2,6) and float grows from model A to D",
        paper_figure="",
        pairs=tuple((Ref(1, 2, 6, w), Ref(32, 32, 32, w)) for w in WIDTHS),
        holds_when=f"the (1,2,6) - float difference never rises with thinner width beyond the "
        f"{NOISE} and falls by more than it from the widest to the thinnest",
        test=non_increasing,
        pair_labels=tuple(f"width {w:g}: " for w in WIDTHS),
    ),
]


def pair_diff(sa, sb) -> Diff | None:
    """The :class:`Diff` of two cells' :class:`~dorefa.sweep.seeds.Spread` (None if one is
    missing)."""
    if sa is None or sb is None:
        return None
    noise = max(sa.spread, sb.spread) if min(sa.n, sb.n) >= 2 else TOL
    return Diff(sa.mean - sb.mean, noise)


def best_accuracies(rows) -> Callable[[Ref], float | None]:
    """``acc(ref)``: the mean best test accuracy over the finished seeds of cell ``ref`` among
    ``rows`` (:class:`dorefa.sweep.results.CellResult`), None if it has none."""
    stats = seed_accuracies(rows)
    return lambda ref: None if stats(ref) is None else stats(ref).mean
