"""A sweep's plots, from its results and its cells' metrics per epoch (``metrics.jsonl``, or the
cell records): accuracy against the gradient bits, accuracy against the width, and every cell's
training curves, each a mean over the cell's seeds. Written atomically
(:func:`dorefa.fileio.atomic_savefig`)."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_savefig
from .claims import best_accuracies
from .results import CellResult, read_metrics
from .seeds import Ref, group_rows

G_AXIS = (2, 4, 6, 8, 32)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path.name


def plot_acc_vs_g(plt, rows: list[CellResult], path: Path) -> str:
    """Best accuracy against G for W=1, A in 1, 2, 4 (width 1), float as a dashed line."""
    acc = best_accuracies(rows)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for a in (1, 2, 4):
        pts = [(i, acc(Ref(1, a, g))) for i, g in enumerate(G_AXIS)]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"W=1, A={a}")
    flt = acc(Ref(32, 32, 32))
    if flt is not None:
        ax.axhline(flt, color="gray", ls="--", label="float (32,32,32)")
    ax.set_xticks(range(len(G_AXIS)), [str(g) for g in G_AXIS])
    ax.set_xlabel("gradient bits G"), ax.set_ylabel("best test accuracy")
    ax.set_title("accuracy vs G (width 1.0)")
    _legend(ax, fontsize=8)
    return _save(plt, fig, path)


def plot_acc_vs_width(plt, rows: list[CellResult], path: Path) -> str:
    """Mean best accuracy over seeds against the width, one line per (W, A, G) with at least two
    widths."""
    ok = [r for r in rows if r.ok]
    acc = best_accuracies(rows)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for t in sorted({r.bits for r in ok}, key=lambda t: -sum(t)):
        widths = sorted({float(r.width) for r in ok if r.bits == t and not r.init})
        pts = [(w, acc(Ref(*t, w))) for w in widths]
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=Ref(*t).label())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width multiplier (1 = model A, 1/8 = model D)")
    ax.set_ylabel("best test accuracy"), ax.set_title("accuracy vs width")
    _legend(ax, fontsize=8)
    return _save(plt, fig, path)


def mean_curve(hists: list[list[dict]], key: str) -> list[float]:
    """``key`` per epoch averaged over the seeds' histories, for the epochs all of them have."""
    n = min(len(h) for h in hists)
    return [sum(h[i][key] for h in hists) / len(hists) for i in range(n)]


def plot_curves(plt, rows: list[CellResult], history, path: Path) -> str:
    """Training loss and test accuracy per epoch of every cell, mean over its seeds;
    ``history(row)`` is a row's metrics per epoch."""
    from cycler import cycler

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = cycler(ls=["-", "--", ":"]) * cycler(color=plt.cm.tab10.colors)  # 30 distinct lines
    ax1.set_prop_cycle(styles), ax2.set_prop_cycle(styles)
    for ref, rs in group_rows(rows).items():
        hists = [h for h in (history(r) for r in rs) if h]
        if not hists:
            continue
        ep = list(range(1, min(len(h) for h in hists) + 1))
        label = ref.label() + (f" ({len(hists)} seeds)" if len(hists) > 1 else "")
        ax1.plot(ep, mean_curve(hists, "train_loss"), "o-", ms=3, label=label)
        ax2.plot(ep, mean_curve(hists, "test_acc"), "o-", ms=3, label=label)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("training loss")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("test accuracy")
    _legend(ax2, fontsize=6, ncol=2, loc="lower right")
    fig.suptitle("training curves of all cells (mean over seeds)")
    return _save(plt, fig, path)


def plot_all(rows: list[CellResult], out: Path, prefix: str = "", history=None) -> list[str]:
    """acc_vs_g.png, acc_vs_width.png, curves.png in ``out``; returns the file names written.
    ``history(row)``: the row's metrics per epoch (default: ``out/cells/<cell>/metrics.jsonl``)."""
    plt = _plt()
    out = Path(out)
    if history is None:

        def history(r: CellResult) -> list[dict]:
            return read_metrics(out / "cells" / r.cell / "metrics.jsonl")

    return [
        plot_acc_vs_g(plt, rows, out / f"{prefix}acc_vs_g.png"),
        plot_acc_vs_width(plt, rows, out / f"{prefix}acc_vs_width.png"),
        plot_curves(plt, rows, history, out / f"{prefix}curves.png"),
    ]
