"""``dorefa sweep`` (train every cell of a grid, resumable) and ``dorefa report`` (re-render a
sweep's results.md and plots from its results.csv, or a page from committed cell records)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..recipes import list_recipes
from .config import SweepConfig
from .grid import BUILTIN_GRIDS, parse_seeds
from .page import render_records_page
from .report import render_report
from .scheduler import run_sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..recipes import get_recipe

    if args.seed is not None and args.seeds is not None:  # --seed had gone unused, unsaid
        raise ValueError("give --seed (one seed) or --seeds (several), not both")
    model = args.model  # a recipe's own model where none is given (svhn had counted as given)
    if model is None:
        model = get_recipe(args.recipe).model if args.recipe else SweepConfig.model
    cfg = SweepConfig(
        model=model,
        data=args.data,
        data_dir=args.data_dir,
        grid=args.grid,
        epochs=args.epochs,
        out=args.out,
        subset=args.subset,
        test_subset=args.test_subset,
        jobs=args.jobs,
        seed=args.seed if args.seed is not None else SweepConfig.seed,
        seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
        records=args.records[0] if args.records else None,
        done_records=tuple(args.records[1:]) if args.records else (),
        batch_size=args.batch_size,
        lr=args.lr,
        recipe=args.recipe,
        engine=args.engine,
    )
    rows = run_sweep(cfg)
    failed = [r.cell for r in rows if not r.ok]
    print(
        f"{len(rows) - len(failed)}/{len(rows)} cells ok -> {cfg.out}/results.md"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.records:
        csv_path = args.csv or str(Path(args.out).with_suffix("") / "results.csv")
        rows = render_records_page(args.records, args.out, csv_path)
        print(f"{len(rows)} cell records -> {args.out}, {csv_path}")
        return 0
    if args.sweep is None:
        raise ValueError("dorefa report: give a sweep folder, or --records DIR (cell records)")
    rows = render_report(args.sweep)
    print(f"{len(rows)} cells -> {Path(args.sweep) / 'results.md'}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("sweep", help="train every (W,A,G,width) cell of a grid (resumable)")
    p.add_argument("--model", default=None, help="default: the recipe's, else svhn")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--grid",
        default="paper",
        help=f"built-in grid ({', '.join(BUILTIN_GRIDS)}) or a .yaml/.toml grid file",
    )
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's, else 2")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--subset", type=int, default=None, help="first N training images, every cell")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images")
    p.add_argument("--jobs", type=int, default=1, help="cells side by side, one thread each")
    p.add_argument(
        "--seed", type=int, default=None, help="the seed (one seed; default 0; see --seeds)"
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="seeds of the grid, e.g. 0,1: every cell once per seed (default: --seed); "
        "cells of seed N != 0 are named ...-sN",
    )
    p.add_argument(
        "--records",
        action="append",
        default=None,
        metavar="DIR",
        help="folder of committed cell records (e.g. docs/results/cells/NAME): each finished "
        "cell writes DIR/<cell>.json; a record with the same settings counts as done. "
        "Repeatable: new records go to the first DIR, a record in any of them counts as done",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's, else 128")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's, else 1e-3")
    p.add_argument(
        "--recipe",
        default=None,
        choices=list_recipes(),
        help="train every cell with this recipe's schedule, weight decay and augmentation "
        "(dorefa train --recipe); the sweep's own flags win",
    )
    p.add_argument(
        "--engine",
        default="torch",
        choices=("torch", "int"),
        help="dorefa train --engine of every cell (int: the integer kernels, faster on CPU; "
        "a finished cell counts as done whichever engine trained it)",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="re-render a sweep's results.md and plots from its CSV")
    p.add_argument("sweep", nargs="?", help="the sweep folder (holding results.csv)")
    p.add_argument(
        "--records",
        action="append",
        metavar="DIR",
        help="render a page from the cell records of DIR instead (repeatable): mean and spread "
        "over seeds, the claims, the curves",
    )
    p.add_argument(
        "--out",
        default="docs/results.md",
        help="with --records: the page; only the part between the report markers is replaced "
        "if it has them (default: docs/results.md)",
    )
    p.add_argument(
        "--csv",
        default=None,
        help="with --records: results.csv of every cell and seed (default: beside --out, "
        "docs/results/results.csv for docs/results.md); plots go to the same folder",
    )
    p.set_defaults(func=cmd_report)
