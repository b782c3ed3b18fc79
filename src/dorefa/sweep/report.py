"""``results.md`` of a sweep: the settings, the results table, the paper's claims checked.

Everything here is rendered from ``results.csv`` (and ``sweep.json``), so ``dorefa report``
re-renders the same file at any time; the claims themselves are data in
:mod:`dorefa.sweep.claims`.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..fileio import atomic_write_text, read_json
from .claims import CLAIMS, TOL, Claim, pair_diff
from .config import SETTING_KEYS
from .results import CellResult, read_results
from .seeds import Spread, group_rows, seed_accuracies, std

TABLE_HEAD = (
    "| W | A | G | width | init | seed | best acc | final acc | epochs | wall (s) | "
    "inference bit-ops | training bit-ops | float MACs | weights (KiB) | "
    "runtime acc | agreement | .dorefa (KiB) | status |"
)


def _fmt_ops(x) -> str:
    """3 significant digits with a G/M/K unit: 39.6G."""
    if x is None:
        return ""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _status(r: CellResult) -> str:
    err = "; ".join(x for x in (r.error, r.runtime_note) if x)
    err = err.replace("|", "/")
    if r.ok:
        return f"ok ({err})" if err else "ok"
    return f"failed: {err}"


def _kib(x) -> str:
    return "" if x is None else f"{x / 1024:.1f}"


def _acc(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def render_table(rows: list[CellResult]) -> str:
    """The results table in markdown, one line per cell."""
    lines = [TABLE_HEAD, "|" + "---|" * 18]
    for r in rows:
        cols = [
            r.W,
            r.A,
            r.G,
            f"{r.width:g}",
            r.init,
            "" if r.seed is None else r.seed,
            _acc(r.best_test_acc),
            _acc(r.final_test_acc),
            r.epochs or "",
            r.wall_s or "",
            _fmt_ops(r.infer_bitops),
            _fmt_ops(r.train_bitops),
            _fmt_ops(r.float_macs),
            _kib(r.weight_bytes),
            _acc(r.runtime_acc),
            _acc(r.agreement),
            _kib(r.model_bytes),
            _status(r),
        ]
        lines.append("| " + " | ".join(str(c) for c in cols) + " |")
    return "\n".join(lines)


def _verdict(v: str | None, measured: bool = False) -> str:
    """The verdict in bold; without one, whether nothing was measured or too little to judge
    (a page had shown a pair's figure beside "not measured")."""
    if v is not None:
        return f"**{v}**"
    return "not judged: too few of its cells measured" if measured else "not measured"


def _stat(s: Spread) -> str:
    """``0.9012`` (one seed) or ``0.9012 [0.9000-0.9024, n=2]``."""
    return f"{s.mean:.4f}" if s.n < 2 else f"{s.mean:.4f} [{s.lo:.4f}-{s.hi:.4f}, n={s.n}]"


def check_claim(claim: Claim, acc) -> list[str]:
    """The claim's markdown lines: heading with the paper's number, ours and the verdict, then
    one line per measured pair ('(1,2,6) 0.9012 vs (1,2,32) 0.9050: -0.0038'); ``acc(ref)`` is
    the cell's :class:`~dorefa.sweep.seeds.Spread` over seeds."""
    diffs, texts = [], []
    labels = claim.pair_labels or ("",) * len(claim.pairs)
    for (a, b), label in zip(claim.pairs, labels, strict=True):
        sa, sb = acc(a), acc(b)
        diff = pair_diff(sa, sb)
        diffs.append(diff)
        if diff is None:
            continue
        noise = f" (inside +-{diff.noise:.4f}: same)" if diff.sign() == 0 else ""
        noise = noise if min(sa.n, sb.n) >= 2 else ""
        texts.append(f"{label}{a.label()} {_stat(sa)} vs {b.label()} {_stat(sb)}: {diff.d:+.4f}")
        texts[-1] += noise
    ours = ", ".join(f"{d.d:+.4f}" for d in diffs if d is not None) or "not measured"
    figure = claim.paper_figure or "no figure quoted for it"
    paper = f"{claim.paper}; {figure}"
    verdict = claim.test(diffs) if texts else None
    head = f"- **{claim.claim}** (paper: {paper} | ours: {ours}; holds when {claim.holds_when}): "
    return [head + _verdict(verdict, bool(texts))] + [f"  - {t}" for t in texts]


def claims(rows: list[CellResult]) -> list[str]:
    """The paper's claims (:data:`dorefa.sweep.claims.CLAIMS`), each judged with the mean best
    accuracies over seeds and their spread, as markdown lines."""
    acc = seed_accuracies(rows)
    return [line for claim in CLAIMS for line in check_claim(claim, acc)]


SEED_HEAD = (
    "| W | A | G | width | init | seeds | best acc (mean) | best min-max | best std | "
    "final acc (mean) | last-epoch change per seed | epochs | trained on | wall (s) | "
    "runtime acc (mean) |"
)


def _where(rows: list[CellResult], where: list[str]) -> str:
    """Where a cell's seeds trained: one entry when they all ran alike, else one per seed."""
    if len(set(where)) <= 1:
        return where[0] if where else ""
    return ", ".join(f"s{r.seed or 0} {w}" for r, w in zip(rows, where, strict=True) if w)


def render_seed_table(rows: list[CellResult], histories=None, trained_on=None) -> str:
    """One line per cell over its finished seeds: n, mean, min-max and std of the best test
    accuracy, mean final accuracy, each seed's change of the test accuracy over the last epoch
    (``histories``: cell name -> metrics per epoch; flat at convergence), where each seed ran
    (``trained_on``: cell name -> "engine device"), mean wall time (blank when the seeds ran on
    different engines or devices)."""
    lines = [SEED_HEAD, "|" + "---|" * 15]
    for ref, rs in group_rows(rows).items():
        rs = sorted(rs, key=lambda r: r.seed or 0)
        best = [r.best_test_acc for r in rs if r.best_test_acc is not None]
        final = [r.final_test_acc for r in rs if r.final_test_acc is not None]
        run = [r.runtime_acc for r in rs if r.runtime_acc is not None]
        hs = [(histories or {}).get(r.cell) or [] for r in rs]
        last = [
            f"s{r.seed or 0} {h[-1]['test_acc'] - h[-2]['test_acc']:+.4f}"
            for r, h in zip(rs, hs, strict=True)
            if len(h) >= 2
        ]
        where = [(trained_on or {}).get(r.cell, "") for r in rs]
        # wall times of different engines or devices do not average into anything
        walls = [r.wall_s for r in rs if r.wall_s is not None] if len(set(where)) == 1 else []
        cols = [
            ref.w,
            ref.a,
            ref.g,
            f"{ref.width:g}",
            rs[0].init,
            len(rs),
            _acc(sum(best) / len(best)) if best else "",
            f"{min(best):.4f}-{max(best):.4f}" if best else "",
            f"{std(best):.4f}" if len(best) > 1 else "",
            _acc(sum(final) / len(final)) if final else "",
            " / ".join(last),
            "/".join(sorted({str(r.epochs) for r in rs})),
            _where(rs, where),
            f"{sum(walls) / len(walls):.1f}" if walls else "",
            _acc(sum(run) / len(run)) if run else "",
        ]
        lines.append("| " + " | ".join(str(c) for c in cols) + " |")
    return "\n".join(lines)


def runtime_line(rows: list[CellResult]) -> str:
    """The line on the bit-runtime columns: where they come from and the worst agreement."""
    ran = [r for r in rows if r.agreement is not None]
    text = (
        "Runtime acc = test accuracy of the cell's final checkpoint exported to a .dorefa file "
        "and run on the bit runtime's popcount kernels (one thread, same test images); "
        "agreement = share of those images where it predicts the same class as the torch "
        "model in eval mode; empty for cells the runtime cannot run (W or A = 32)."
    )
    if not ran:
        return text + " No cell has been run on the bit runtime yet."
    worst = min(ran, key=lambda r: r.agreement)
    return text + (
        f" Agreement with torch: min {worst.agreement:.4f} over {len(ran)} cell(s) ({worst.cell})."
    )


def claims_section(rows: list[CellResult], source: str = "results.csv") -> list[str]:
    """The claims' heading, the rule, and the claims."""
    return [
        "## The paper's claims, checked",
        "",
        f"Generated from {source} (mean best test accuracy over seeds; a difference inside "
        "the larger seed spread (max - min) of the two cells is 'no difference'; with fewer "
        f"than 2 seeds the spread is taken as {TOL}).",
        "",
    ] + claims(rows)


SUMMARY = (
    "Accuracies are test accuracy (fraction); best = best epoch, as the paper reports. Bit-ops "
    "are per image; float layers (first conv, last linear) count as MACs x 32 x 32 inside the "
    "bit-op totals and are also listed as float MACs. Training bit-ops = MACs x (W*A + W*G + "
    "A*G). Weights: quantized layers at W bits, float layers and biases at 32 bits, BatchNorm "
    "not counted. Wall time = the cell's epochs (training + test), one thread."
)


def render_markdown(
    rows: list[CellResult], settings: dict | None, out: Path | None = None, plots=()
) -> str:
    """results.md: settings, summary, runtime line, table, the claims, the plots' links."""
    settings = settings or {}
    parts = ["# DoReFa sweep results", ""]
    if settings:
        keep = {k: settings.get(k) for k in SETTING_KEYS if k in settings}
        parts += ["Settings: " + ", ".join(f"{k}={v}" for k, v in keep.items()), ""]
    n_ok = sum(r.ok for r in rows)
    parts += [
        f"{n_ok} of {len(rows)} recorded cells finished. {SUMMARY}",
        "",
        runtime_line(rows),
        "",
        render_table(rows),
        "",
    ]
    if any(len(rs) > 1 for rs in group_rows(rows).values()):
        parts += ["## Mean and spread over seeds", "", render_seed_table(rows), ""]
    parts += claims_section(rows)
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(parts) + "\n"


def render_report(out: str | Path) -> list[CellResult]:
    """Re-render results.md and the plots of a sweep folder from its results.csv."""
    from .plots import plot_all

    out = Path(out)
    csv_path = out / "results.csv"
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path}: no results yet; run `dorefa sweep --out {out}` first")
    rows = read_results(csv_path)  # its errors name the file and the line
    if not rows:  # keep the report that is there
        raise ValueError(
            f"{csv_path} holds no cells; run `dorefa sweep --out {out}` to record some first"
        )
    settings_path = out / "sweep.json"
    settings = read_json(settings_path) if settings_path.exists() else {}
    plots = plot_all(rows, out)
    atomic_write_text(out / "results.md", render_markdown(rows, settings, out, plots))
    return rows
