"""``dorefa sweep`` (train every cell of a grid, resumable) and ``dorefa report`` (re-render a
sweep's results.md and plots from its results.csv)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import SweepConfig
from .grid import BUILTIN_GRIDS
from .report import render_report
from .scheduler import run_sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    cfg = SweepConfig(
        model=args.model,
        data=args.data,
        data_dir=args.data_dir,
        grid=args.grid,
        epochs=args.epochs,
        out=args.out,
        subset=args.subset,
        test_subset=args.test_subset,
        jobs=args.jobs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
    )
    rows = run_sweep(cfg)
    failed = [r.cell for r in rows if not r.ok]
    print(
        f"{len(rows) - len(failed)}/{len(rows)} cells ok -> {cfg.out}/results.md"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    rows = render_report(args.sweep)
    print(f"{len(rows)} cells -> {Path(args.sweep) / 'results.md'}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("sweep", help="train every (W,A,G,width) cell of a grid (resumable)")
    p.add_argument("--model", default="svhn")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--grid",
        default="paper",
        help=f"built-in grid ({', '.join(BUILTIN_GRIDS)}) or a .yaml/.toml grid file",
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--subset", type=int, default=None, help="first N training images, every cell")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images")
    p.add_argument("--jobs", type=int, default=1, help="cells side by side, one thread each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="re-render a sweep's results.md and plots from its CSV")
    p.add_argument("sweep", help="the sweep folder (holding results.csv)")
    p.set_defaults(func=cmd_report)
