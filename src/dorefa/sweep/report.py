"""``results.md`` of a sweep: the settings, the results table, the paper's claims checked.

Everything here is rendered from ``results.csv`` (and ``sweep.json``), so ``dorefa report``
re-renders the same file at any time; the claims themselves are data in
:mod:`dorefa.sweep.claims`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..fileio import atomic_write_text
from .claims import CLAIMS, TOL, Claim, best_accuracies
from .config import SETTING_KEYS
from .results import CellResult, read_results

TABLE_HEAD = (
    "| W | A | G | width | init | best acc | final acc | epochs | wall (s) | "
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
    lines = [TABLE_HEAD, "|" + "---|" * 17]
    for r in rows:
        cols = [
            r.W,
            r.A,
            r.G,
            f"{r.width:g}",
            r.init,
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


def _verdict(ok: bool | None) -> str:
    return {True: "**holds**", False: "**does not hold**", None: "not measured"}[ok]


def check_claim(claim: Claim, acc) -> list[str]:
    """The claim's markdown lines: heading with its verdict, then one line per measured pair
    ('(1,2,6) 0.9012 vs (1,2,32) 0.9050: -0.0038')."""
    diffs, texts = [], []
    labels = claim.pair_labels or ("",) * len(claim.pairs)
    for (a, b), label in zip(claim.pairs, labels, strict=True):
        va, vb = acc(a), acc(b)
        if va is None or vb is None:
            diffs.append(None)
            continue
        diffs.append(va - vb)
        texts.append(f"{label}{a.label()} {va:.4f} vs {b.label()} {vb:.4f}: {va - vb:+.4f}")
    paper = claim.paper + (f"; {claim.paper_figure}" if claim.paper_figure else "")
    verdict = claim.test(diffs) if texts else None
    head = f"- **{claim.claim}** (paper: {paper}; holds when {claim.holds_when}): "
    return [head + _verdict(verdict)] + [f"  - {t}" for t in texts]


def claims(rows: list[CellResult]) -> list[str]:
    """The paper's claims (:data:`dorefa.sweep.claims.CLAIMS`), each checked with the sweep's
    best accuracies, as markdown lines."""
    acc = best_accuracies(rows)
    return [line for claim in CLAIMS for line in check_claim(claim, acc)]


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
        "## The paper's claims, checked",
        "",
        f"Generated from results.csv (best test accuracy; differences below {TOL} are "
        "treated as noise).",
        "",
    ]
    parts += claims(rows)
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
    try:
        rows = read_results(csv_path)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{csv_path}: not a sweep results file ({exc})") from None
    settings_path = out / "sweep.json"
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    plots = plot_all(rows, out)
    atomic_write_text(out / "results.md", render_markdown(rows, settings, out, plots))
    return rows
