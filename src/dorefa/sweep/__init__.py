"""Grids of (W, A, G, width) training runs: ``dorefa sweep`` and ``dorefa report``.

A sweep trains every cell of a grid (the paper's SVHN table, docs/method.md section 4) as a
normal ``dorefa train`` run, records one row per cell in ``OUT/results.csv`` and renders
``OUT/results.md`` (the table and the paper's claims checked) and plots from it. The rooms:

* :mod:`.grid`: cells (:class:`Cell`), the built-in grids, grid files (:func:`load_grid`);
* :mod:`.config`: the sweep's settings (:class:`SweepConfig`), the same budget for every cell;
* :mod:`.scheduler`: the cells as subprocesses, resume, failures (:func:`run_sweep`);
* :mod:`.children`: starting and ending those subprocesses;
* :mod:`.results`: the typed row (:class:`CellResult`), ``results.csv``;
* :mod:`.costs`: MACs, bit-ops and weight storage per image;
* :mod:`.runtime_columns`: the exported model on the bit runtime (accuracy, agreement, size);
* :mod:`.records`: committed cell records (``--records DIR``), a sweep across machines;
* :mod:`.seeds`: a cell's mean and spread over its seeds (``--seeds 0,1``);
* :mod:`.claims`: the paper's claims as data, judged with the seeds' spread;
* :mod:`.report`: results.md; :mod:`.page`: the page from records; :mod:`.plots`;
* :mod:`.cli`: ``dorefa sweep`` and ``dorefa report``.
"""

from .claims import CLAIMS, FAILS, HOLDS, SAME, TOL, Claim, Diff, Ref
from .cli import cmd_report, cmd_sweep, register_cli
from .config import SETTING_KEYS, SweepConfig
from .costs import cell_costs, layer_costs
from .grid import (
    BUILTIN_GRIDS,
    HEADLINE_GRID,
    PAPER_GRID,
    TINY_GRID,
    Cell,
    load_grid,
    parse_seeds,
    with_seeds,
)
from .page import render_records_page
from .plots import plot_all
from .records import make_record, read_records, record_row, settings_diff, write_record
from .report import render_markdown, render_report, render_table
from .results import COLUMNS, RUNTIME_KEYS, CellResult, read_results, write_results
from .runtime_columns import needs_runtime, runtime_columns
from .scheduler import run_sweep
from .seeds import Spread, seed_accuracies

__all__ = [
    "FAILS",
    "HEADLINE_GRID",
    "HOLDS",
    "SAME",
    "Diff",
    "Spread",
    "make_record",
    "parse_seeds",
    "read_records",
    "record_row",
    "render_records_page",
    "seed_accuracies",
    "settings_diff",
    "with_seeds",
    "write_record",
    "BUILTIN_GRIDS",
    "CLAIMS",
    "COLUMNS",
    "PAPER_GRID",
    "RUNTIME_KEYS",
    "SETTING_KEYS",
    "TINY_GRID",
    "TOL",
    "Cell",
    "CellResult",
    "Claim",
    "Ref",
    "SweepConfig",
    "cell_costs",
    "cmd_report",
    "cmd_sweep",
    "layer_costs",
    "load_grid",
    "needs_runtime",
    "plot_all",
    "read_results",
    "register_cli",
    "render_markdown",
    "render_report",
    "render_table",
    "run_sweep",
    "runtime_columns",
    "write_results",
]
