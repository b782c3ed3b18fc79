"""Running a sweep: every cell of a grid as a normal ``dorefa train`` run in
``OUT/cells/<model>-w1a2g6-x1.0[-init]/``, one subprocess per cell with one torch thread each,
``--jobs`` of them side by side.

The parent alone writes ``OUT/results.csv`` (atomically, after every cell), so a sweep killed at
any point resumes where it stopped: recorded ok cells are skipped, a recorded failure is tried
again, and the cell in flight resumes from its last epoch checkpoint (``train --resume``). A cell
with ``init`` (e.g. the float-initialised (1,2,6)) waits for its source cell and starts from that
cell's checkpoint (``train --init-from``); if the source failed, so does it. A cell killed by a
signal is resumed once. When the sweep ends, or dies, its children end with it.

Seeds are part of the grid (``cfg.seeds``): every cell runs once per seed. With ``cfg.records``
every finished cell also writes its record there (:mod:`.records`), and a record with the sweep's
settings counts as done even where this machine has no folder for the cell; a record with other
settings is not done (the log says which differ) and the cell is trained again. A cell done by
record whose checkpoint initialises a pending cell but is not on this machine is trained again.
``cfg.done_records`` are further folders (``--records`` given again, e.g. another grid's) whose
records count as done too; new records go to ``cfg.records`` only.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from ..fileio import FolderLock
from .children import Children, last_error
from .config import SweepConfig, cell_done, cfg_dict, check_settings, sweep_seeds
from .costs import cell_costs
from .grid import Cell, load_grid, with_seeds
from .records import make_record, read_record, record_path, record_row, settings_diff, write_record
from .report import render_markdown, render_report
from .results import CellResult, read_metrics, read_results, write_results
from .runtime_columns import needs_runtime, runtime_columns


def train_config(cfg: SweepConfig, cell: Cell, cell_dir: Path, init_from: Path | None):
    """The TrainConfig of a cell: the sweep's budget, the cell's bits and width, one thread,
    resumed from the cell's folder if it holds a checkpoint; the sweep's recipe (if any) fills
    every other knob (schedule, weight decay, augmentation)."""
    from ..recipes import apply_recipe
    from ..train_config import TrainConfig

    values = dict(
        model=cfg.model,
        data=cfg.data,
        data_dir=cfg.data_dir,
        bits=cell.bits,
        width=cell.width,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cell.seed,
        engine=_started_engine(cell_dir, cfg.engine),
        threads=1,
        subset=cfg.subset,
        test_subset=cfg.test_subset,
        out=str(cell_dir),
        resume=True,
        init_from=str(init_from) if init_from is not None else None,
    )
    return TrainConfig(**apply_recipe(values, set(values), cfg.recipe))


def _started_engine(cell_dir: Path, engine: str) -> str:
    """The engine of a cell's run that has a checkpoint to resume (the checkpoint's config, as
    dorefa train compares it), else ``engine``: a resume keeps its engine (train refuses
    another, and the sweep had failed the cell on every rerun with another --engine); the
    sweep's --engine applies to the cells it starts, and to one that stopped before its first
    checkpoint. Only the config is read, the tensors mapped, not loaded (1 ms for a 732 MB
    AlexNet checkpoint; loading it whole had taken 1.1 s and 1.2 GB, for every cell)."""
    import torch

    from ..engine import ENGINES

    path = cell_dir / "checkpoint.pt"
    if not path.exists():
        return engine
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        started = ckpt["config"]["engine"]
    except Exception:  # noqa: BLE001 - not readable, or older: train says what is wrong
        return engine
    return started if started in ENGINES else engine


def train_command(cfg: SweepConfig, cell: Cell, cell_dir: Path, init_from: Path | None):
    """``python -m dorefa train ...`` for a cell (ValueError if a setting is out of range)."""
    from ..train_flags import check_config, config_to_argv

    tc = train_config(cfg, cell, cell_dir, init_from)
    check_config(tc)
    return [sys.executable, "-m", "dorefa", "train", *config_to_argv(tc)]


def cell_row(cfg: SweepConfig, cell: Cell, **fields) -> CellResult:
    """The result row's columns that name the cell and the sweep's settings, plus ``fields``."""
    return CellResult(
        cell=cell.name(cfg.model),
        model=cfg.model,
        data=cfg.data,
        W=cell.bits.w,
        A=cell.bits.a,
        G=cell.bits.g,
        width=cell.width,
        init=str(cell.init) if cell.init else "",
        subset=cfg.subset,
        seed=cell.seed,
        **fields,
    )


def _train(cfg: SweepConfig, cell: Cell, cell_dir: Path, init_from, children: Children):
    """Run the cell's training to its end (resumed once if killed by a signal);
    returns (exit code, epochs recorded in metrics.jsonl, complete?)."""
    name = cell.name(cfg.model)
    cmd = train_command(cfg, cell, cell_dir, init_from)
    for attempt in range(2):
        rc = children.run(name, cmd, cell_dir / "train.log")
        history = read_metrics(cell_dir / "metrics.jsonl")
        complete = cell_done(cfg, history) and (cell_dir / "checkpoint.pt").exists()
        # Killed by a signal (e.g. a shared library rebuilt under it): resume it once.
        if complete or rc >= 0 or children.stopped or attempt == 1:
            break
    return rc, history, complete


def _exit_text(rc: int) -> str:
    """A cell process's end in words: 'exit 2', or 'killed by SIGKILL' (-9: out of memory?)."""
    if rc >= 0:
        return f"exit {rc}"
    try:
        return f"killed by {signal.Signals(-rc).name}"
    except ValueError:
        return f"killed by signal {-rc}"


def run_cell(cfg: SweepConfig, cell: Cell, out: Path, children: Children) -> CellResult:
    """Train one cell in a subprocess; return its result row (status ok or failed)."""
    cell_dir = out / "cells" / cell.name(cfg.model)
    cell_dir.mkdir(parents=True, exist_ok=True)
    src = cell.source()
    init_from = out / "cells" / src.name(cfg.model) / "checkpoint.pt" if src else None
    row = cell_row(cfg, cell)
    t0 = time.perf_counter()
    rc, history, complete = _train(cfg, cell, cell_dir, init_from, children)
    if not complete:
        err = last_error(cell_dir / "train.log")
        return row.replace(
            status="failed",
            error=f"{_exit_text(rc)}: {err[:300]}",
            wall_s=round(time.perf_counter() - t0, 1),
        )
    # Every epoch and the checkpoint are on disk: the run is complete even if the process
    # died on the way out (noted in the error column).
    conf = json.loads((cell_dir / "config.json").read_text())
    costs = cell_costs(cfg.model, cell, conf["num_classes"], conf["in_channels"])
    row = row.replace(
        **costs,
        status="ok",
        error=f"exit {rc} after the last epoch" if rc != 0 else "",
        epochs=len(history),
        best_test_acc=max(h["test_acc"] for h in history),
        final_test_acc=history[-1]["test_acc"],
        wall_s=round(sum(h["seconds"] for h in history), 1),  # train + test, resumed pieces
        subset=_first_n(cfg.subset, conf.get("train_images")),
        test_n=_first_n(cfg.test_subset, conf.get("test_images")),
    )
    return runtime_columns(cfg, row, out, children)


def _first_n(asked: int | None, had: int | None) -> int | None:
    """The first ``asked`` images of a split as a cell used them, None for the whole split: a
    --subset or --test-subset past its end takes them all (the page had said "the first 99999
    test images"). ``had``: the images the run used (its config.json; older ones lack it)."""
    if asked is None:
        return None
    return None if had is not None and had < asked else asked


def _runtime_msg(row: CellResult) -> str:
    if row.runtime_acc is not None:
        return f"; bit runtime {row.runtime_acc:.4f}, agreement {row.agreement:.4f}"
    return f"; {row.runtime_note}" if row.runtime_note else ""


def _cell_msg(row: CellResult) -> str:
    if not row.ok:
        return f"{row.cell}: FAILED {row.error}"
    return (
        f"{row.cell}: best {row.best_test_acc:.4f} final {row.final_test_acc:.4f} "
        f"({row.wall_s:.0f}s)" + _runtime_msg(row)
    )


class _Sweep:
    """One call of :func:`run_sweep`: the grid's cells, the recorded rows, the cells running."""

    def __init__(self, cfg: SweepConfig, cells: list[Cell], out: Path, log):
        self.cfg, self.out, self.log = cfg, out, log
        self.cells = {c.name(cfg.model): c for c in cells}
        self.names = list(self.cells)
        self.csv_path = out / "results.csv"
        recorded = read_results(self.csv_path)
        self.done = {r.cell: r for r in recorded if r.cell in self.names}
        self.others = [r for r in recorded if r.cell not in self.names]  # kept in results.csv
        self._check_init_sources()
        self.by_record: set[str] = set()  # cells done by a record, not by this folder
        if cfg.records:
            self._read_records()
        # A recorded ok cell is finished; a recorded failure is tried again.
        self.pending = [c for c in cells if not self._ok(c)]
        self._retrain_missing_sources()
        # Recorded ok cells without the bit-runtime columns (an older sweep, or a sweep killed
        # between training and recording them): evaluated again on the runtime, not retrained.
        self.fills = [self.done[n] for n in self.names if n in self.done]
        self.fills = [r for r in self.fills if needs_runtime(r) and self._ckpt(r.cell).exists()]
        self.running: dict[Future, Cell | str] = {}  # cell, or name of a row being filled in
        self.lock = threading.Lock()
        self.children = Children()
        self.show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        self.total = len(cells)
        self.bar = None  # the progress bar, while run() runs

    def _check_init_sources(self) -> None:
        """A recorded cell started from another source than the grid now names is refused
        while its folder holds that run (its name does not say the source); without the
        folder it is trained again."""
        for name, cell in self.cells.items():
            row, want = self.done.get(name), str(cell.init) if cell.init else ""
            if row is None or not row.ok or row.init == want:
                continue
            if (self.out / "cells" / name).exists():
                raise ValueError(
                    f"{self.out / 'cells' / name} was initialised from {row.init or 'scratch'} "
                    f"but the grid now says {want or 'scratch'}: restore the grid, or delete "
                    "that folder to train the cell again"
                )
            del self.done[name]

    def _ok(self, cell: Cell) -> bool:
        row = self.done.get(cell.name(self.cfg.model))
        # a row of another seed (a folder of a sweep run with --seed N before seeds were a
        # grid axis) is not this cell
        return row is not None and row.ok and row.seed in (None, cell.seed)

    def _ckpt(self, name: str) -> Path:
        return self.out / "cells" / name / "checkpoint.pt"

    def _read_records(self) -> None:
        """Cells with a record of the same settings (in ``--records`` or one of the further
        folders) are done; ok rows of this folder without a record get one (a sweep first run
        without ``--records``)."""
        folders = (self.cfg.records, *self.cfg.done_records)
        for name, cell in self.cells.items():
            paths = [p for p in (record_path(f, name) for f in folders) if p.exists()]
            if not paths:
                row = self.done.get(name)
                if row is not None and self._ok(cell) and (self.out / "cells" / name).is_dir():
                    cell_dir = self.out / "cells" / name
                    write_record(self.cfg.records, make_record(self.cfg, cell, row, cell_dir))
                continue
            recs = {p: read_record(p) for p in paths}
            diffs = {p: settings_diff(rec, self.cfg, cell) for p, rec in recs.items()}
            same = [p for p, diff in diffs.items() if not diff]
            if not same:
                for path, diff in diffs.items():
                    what = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in diff.items())
                    self.log(f"{name}: the record {path} has other settings ({what})")
                self.log(f"{name}: not done, trained again (its record goes to {self.cfg.records})")
                self.done.pop(name, None)
                continue
            finished = [p for p in same if cell_done(self.cfg, recs[p].get("metrics", []))]
            if not finished:
                epochs = len(recs[same[0]].get("metrics", []))
                self.log(
                    f"{name}: the record {same[0]} stops after {epochs} epochs, before the end "
                    "of its schedule (--epochs, then the recipe's until-flat rule): trained again"
                )
                self.done.pop(name, None)
                continue
            same = finished
            self.done[name] = record_row(recs[same[0]])
            self.by_record.add(name)

    def _retrain_missing_sources(self) -> None:
        """A cell done only by record whose checkpoint a pending cell starts from: trained
        again here (checkpoints are not committed)."""
        for cell in list(self.pending):
            src = cell.source()
            if src is None or src in self.pending or not self._ok(src):
                continue
            name = src.name(self.cfg.model)
            if not self._ckpt(name).exists():
                self.log(
                    f"{name}: done by record, but its checkpoint (which initialises "
                    f"{cell.name(self.cfg.model)}) is not on this machine: trained again"
                )
                self.done.pop(name)
                self.by_record.discard(name)
                self.pending.insert(self.pending.index(cell), src)

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(
            total=self.total,
            initial=self.total - len(self.pending),
            desc="cells",
            unit="cell",
            disable=not self.show,
            dynamic_ncols=True,
        )

    def rows(self) -> list[CellResult]:
        return [self.done[n] for n in self.names if n in self.done]

    def _say(self, msg: str) -> None:
        self.log(msg) if not self.show else self.bar.write(msg)

    def _store(self, row: CellResult | None) -> None:
        """Record ``row`` (None: only rewrite): results.csv and results.md (atomically)."""
        from ..fileio import atomic_write_text

        with self.lock:
            if row is not None:
                self.done[row.cell] = row
            rows = self.rows() + self.others  # rows of cells no longer in the grid stay
            write_results(self.csv_path, rows)
            md = render_markdown(rows, cfg_dict(self.cfg), self.out)
            atomic_write_text(self.out / "results.md", md)

    def _write_record(self, row: CellResult) -> None:
        """The cell's committed record (``--records``), for a finished cell."""
        if self.cfg.records and row.ok:
            cell_dir = self.out / "cells" / row.cell
            cell = self.cells[row.cell]
            write_record(self.cfg.records, make_record(self.cfg, cell, row, cell_dir))

    def record(self, row: CellResult) -> None:
        """A newly finished (or failed) cell."""
        self._store(row)
        self._write_record(row)
        msg = _cell_msg(row)
        self.bar.update(1)
        self.bar.set_postfix_str(msg[:60])
        self._say(msg)

    def record_runtime(self, row: CellResult) -> None:
        """A recorded cell's runtime columns, filled in (not a newly recorded cell)."""
        self._store(row)
        self._write_record(row)
        self._say(f"{row.cell}: (recorded before)" + _runtime_msg(row))

    def _start_ready(self, pool: ThreadPoolExecutor) -> None:
        """Submit fills, then cells whose source cell is done, up to ``jobs`` running."""
        cfg = self.cfg
        while self.fills and len(self.running) < cfg.jobs:
            r = self.fills.pop(0)
            self.running[pool.submit(runtime_columns, cfg, r, self.out, self.children)] = r.cell
        for cell in list(self.pending):
            if len(self.running) >= cfg.jobs:
                break
            src = cell.source()
            if src is not None and (src in self.pending or src in self.running.values()):
                continue  # its source cell is not trained yet
            self.pending.remove(cell)
            if src is not None and not self._ok(src):
                error = f"its source cell {src.name(cfg.model)} failed"
                self.record(cell_row(cfg, cell, status="failed", error=error))
                continue
            self.running[pool.submit(run_cell, cfg, cell, self.out, self.children)] = cell

    def _collect(self, fut: Future) -> None:
        cell = self.running.pop(fut)
        if isinstance(cell, str):
            try:
                self.record_runtime(fut.result())
            except Exception as exc:  # a bug; the cell stays as it was recorded
                self.log(f"{cell}: runtime columns not filled in: {type(exc).__name__}: {exc}")
            return
        try:
            row = fut.result()
        except Exception as exc:  # a bug in the parent's bookkeeping of this cell
            row = cell_row(self.cfg, cell, status="failed", error=f"{type(exc).__name__}: {exc}")
        self.record(row)

    def run(self) -> None:
        self.bar = self._progress_bar()
        pool = ThreadPoolExecutor(max_workers=self.cfg.jobs)
        try:
            while self.pending or self.running or self.fills:
                n_pending = len(self.pending)
                self._start_ready(pool)
                if not self.running:
                    if len(self.pending) == n_pending:  # a source never trained: a bug
                        raise RuntimeError("sweep scheduler: no runnable cell left")
                    continue  # cells recorded as failed (their source failed): look again
                finished, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    self._collect(fut)
        finally:
            self.children.stop()  # killed or stopped: the cells in flight end now
            pool.shutdown(wait=True, cancel_futures=True)
            self.bar.close()


def run_sweep(cfg: SweepConfig, log=print) -> list[CellResult]:
    """Run (or resume) every cell of ``cfg.grid``; returns the result rows in grid order."""
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {cfg.jobs}")
    cells = with_seeds(load_grid(cfg.grid), sweep_seeds(cfg))
    out = Path(cfg.out)
    for cell in cells:  # a setting out of range is an error now, not a failure of every cell
        train_command(cfg, cell, out / "cells" / cell.name(cfg.model), None)
    with FolderLock(out, "`dorefa sweep`") as lock:  # two sweeps into one folder lost rows
        first = check_settings(cfg, out, lock, log)
        return _run(cfg, cells, out, log, first)


def _run(cfg: SweepConfig, cells: list, out: Path, log, first: bool) -> list[CellResult]:
    """run_sweep's work, with the folder's lock held (``first``: this run wrote sweep.json)."""
    from ..data import check_spec

    sweep = _Sweep(cfg, cells, out, log)
    if sweep.pending or sweep.fills:  # cells to train or run: their data must be there (a
        # missing --data-dir had failed every cell, and stayed the folder's setting)
        try:
            check_spec(cfg.data, cfg.data_dir, folder_exists=True)
        except ValueError:
            if first:  # settings no cell used: a run with the right folder is not refused
                (out / "sweep.json").unlink()
            raise
    log(
        f"sweep {cfg.grid}: {len(cells)} cells, {len(cells) - len(sweep.pending)} already done"
        + (
            f" ({len(sweep.by_record)} by record in {', '.join((cfg.records, *cfg.done_records))})"
            if cfg.records
            else ""
        )
        + f", {cfg.jobs} job(s) -> {out}"
        + (f"; {len(sweep.fills)} to run on the bit runtime" if sweep.fills else "")
    )
    if sweep.by_record:
        sweep._store(None)  # the cells done by record, in this folder's results.csv too
    sweep.run()
    render_report(out)
    return sweep.rows()
