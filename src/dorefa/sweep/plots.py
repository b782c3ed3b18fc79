"""A sweep's plots, from its results and its cells' ``metrics.jsonl``: accuracy against the
gradient bits, accuracy against the width, and every cell's training curves. Written atomically
(:func:`dorefa.fileio.atomic_savefig`)."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_savefig
from .claims import Ref, best_accuracies
from .results import CellResult, read_metrics

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
    """Best accuracy against the width, one line per (W, A, G) with at least two widths."""
    ok = [r for r in rows if r.ok]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for t in sorted({r.bits for r in ok}, key=lambda t: -sum(t)):
        pts = sorted((r.width, r.best_test_acc) for r in ok if r.bits == t and not r.init)
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=Ref(*t).label())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width multiplier (1 = model A, 1/8 = model D)")
    ax.set_ylabel("best test accuracy"), ax.set_title("accuracy vs width")
    _legend(ax, fontsize=8)
    return _save(plt, fig, path)


def plot_curves(plt, rows: list[CellResult], out: Path, path: Path) -> str:
    """Training loss and test accuracy per epoch of every cell (``out/cells/*/metrics.jsonl``)."""
    from cycler import cycler

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = cycler(ls=["-", "--", ":"]) * cycler(color=plt.cm.tab10.colors)  # 30 distinct lines
    ax1.set_prop_cycle(styles), ax2.set_prop_cycle(styles)
    for r in rows:
        hist = read_metrics(out / "cells" / r.cell / "metrics.jsonl")
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        label = r.cell.split("-", 1)[1]
        ax1.plot(ep, [h["train_loss"] for h in hist], "o-", ms=3, label=label)
        ax2.plot(ep, [h["test_acc"] for h in hist], "o-", ms=3, label=label)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("training loss")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("test accuracy")
    _legend(ax2, fontsize=6, ncol=2, loc="lower right")
    fig.suptitle("training curves of all cells")
    return _save(plt, fig, path)


def plot_all(rows: list[CellResult], out: Path, prefix: str = "") -> list[str]:
    """acc_vs_g.png, acc_vs_width.png, curves.png in ``out``; returns the file names written."""
    plt = _plt()
    out = Path(out)
    return [
        plot_acc_vs_g(plt, rows, out / f"{prefix}acc_vs_g.png"),
        plot_acc_vs_width(plt, rows, out / f"{prefix}acc_vs_width.png"),
        plot_curves(plt, rows, out, out / f"{prefix}curves.png"),
    ]
