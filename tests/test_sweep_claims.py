"""The paper's claims table of a sweep's page: verdicts from made-up accuracies, with and
without a spread over seeds (docs/method.md section 4)."""

from dorefa.sweep import FAILS, HOLDS, SAME, CellResult, Diff, render_markdown
from dorefa.sweep.claims import directed, non_increasing
from sweep_rows import make_row


def test_claims_are_checked_from_the_rows():
    """Verdicts of the claims table on made-up accuracies (docs/method.md section 4)."""
    acc = {
        (32, 32, 32): 0.90,
        (1, 32, 32): 0.895,
        (1, 1, 32): 0.80,
        (1, 2, 32): 0.85,
        (1, 2, 6): 0.845,
        (1, 2, 4): 0.70,
        (1, 2, 8): 0.95,
    }
    rows = [make_row(*bits, acc=a) for bits, a in acc.items()]
    rows += [make_row(1, 2, 6, 1.0, init="32,32,32", acc=0.90)]
    rows += [make_row(32, 32, 32, 0.5, acc=0.88), make_row(1, 2, 6, 0.5, acc=0.80)]
    md = render_markdown(rows, None)
    lines = md[md.index("## The paper's claims") :].splitlines()
    verdicts = {ln.split("**")[1]: ln.rsplit(": ", 1)[1] for ln in lines if ln.startswith("- **")}
    assert verdicts == {
        "G=6 is about as good as G=32": "**holds**",  # -0.005: within TOL
        "G=4 and G=2 are clearly worse than G=6": "**holds**",
        "G=8 adds nothing over G=6": "**does not hold**",  # +0.105
        "More activation bits help: A=1 < A=2 < A=4 at W=1": "**holds**",
        "1-bit weights alone cost little; activations cost more": "**holds**",
        "More weight bits help: (2,2,6) >= (1,2,6); (8,8,8) ~ float": "not measured",
        "Initialising from a trained float model helps": "**holds**",
        "Thinner models lose more from quantization": "**holds**",  # -0.055 then -0.08
    }
    assert "  - (1,2,6) init 0.9000 vs (1,2,6) 0.8450: +0.0550" in lines
    assert "  - width 0.5: (1,2,6) x0.5 0.8000 vs (32,32,32) x0.5 0.8800: -0.0800" in lines
    assert "target" not in md.lower()


def _seed_rows(accs: dict) -> list[CellResult]:
    """Rows of made-up accuracies: bits -> one accuracy per seed."""
    return [
        make_row(*bits, acc=a, seed=s)
        for bits, values in accs.items()
        for s, a in enumerate(values)
    ]


def _verdicts(rows) -> dict[str, str]:
    md = render_markdown(rows, None)
    lines = md[md.index("## The paper's claims") :].splitlines()
    return {ln.split("**")[1]: ln.rsplit(": ", 1)[1] for ln in lines if ln.startswith("- **")}


def test_a_difference_inside_the_seeds_spread_is_no_difference():
    g4_worse = "G=4 and G=2 are clearly worse than G=6"
    more_a = "More activation bits help: A=1 < A=2 < A=4 at W=1"
    # (1,2,4) is 0.015 below (1,2,6) on average, but the seeds spread over 0.04
    accs = {(1, 2, 4): [0.80, 0.84], (1, 2, 6): [0.82, 0.85], (1, 1, 6): [0.70, 0.71]}
    v = _verdicts(_seed_rows(accs))
    assert v[g4_worse] == "**no difference**"
    assert v[more_a] == "**holds**"  # (1,2,6) - (1,1,6) = +0.13, far outside the spread
    # the same means with one seed each: no spread measured, TOL (0.01) stands in for it
    means = {k: [sum(x) / len(x)] for k, x in accs.items()}
    assert _verdicts(_seed_rows(means))[g4_worse] == "**holds**"
    # beyond the spread the other way: does not hold
    accs[(1, 2, 4)] = [0.90, 0.91]
    assert _verdicts(_seed_rows(accs))[g4_worse] == "**does not hold**"
    # each claim shows the paper's number beside ours; the pair lines show mean and spread
    md = render_markdown(_seed_rows(accs), None)
    head = next(ln for ln in md.splitlines() if ln.startswith(f"- **{g4_worse}"))
    assert "AlexNet (1,2,4) 54.0% vs (1,2,6) 46.8% error | ours: +0.0700;" in head
    assert "(1,2,4) 0.9050 [0.9000-0.9100, n=2] vs (1,2,6) 0.8350 [0.8200-0.8500, n=2]" in md
    assert "## Mean and spread over seeds" in md


def test_claim_tests_on_diffs():
    assert directed(1)([Diff(0.02, 0.01), None]) == HOLDS
    assert directed(1)([Diff(0.02, 0.01), Diff(0.005, 0.01)]) == SAME
    assert directed(1)([Diff(0.02, 0.01), Diff(-0.02, 0.01)]) == FAILS
    assert directed(1)([None]) is None
    assert non_increasing([Diff(-0.01, 0.01), Diff(-0.015, 0.01)]) == SAME
    assert non_increasing([Diff(-0.01, 0.01), Diff(-0.03, 0.01)]) == HOLDS
    assert non_increasing([Diff(-0.03, 0.01), Diff(-0.01, 0.01)]) == FAILS
