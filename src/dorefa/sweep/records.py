"""Committed cell records: one small JSON file per finished cell, so a sweep survives machines.

With ``dorefa sweep --records DIR`` every finished cell writes ``DIR/<cell>.json`` (atomically,
:mod:`dorefa.fileio`): the cell's settings (model, data, bits, width, init, seed, epochs, subset,
test subset, lr, batch size,
recipe), the training run's ``config.json`` (the recipe's knobs: schedule,
weight decay, augmentation, ...; machine paths left out), the metrics of every epoch (train loss
and accuracy, test accuracy, seconds), the final and best test accuracy, the result row
(:class:`~dorefa.sweep.results.CellResult`: costs and bit-runtime columns) and the dorefa git
commit. Committed to the repository, the records let a later sweep on another machine skip the
finished cells: a record counts as done only when its settings are the sweep's
(:func:`settings_diff`); ``dorefa report --records DIR`` renders a page from them.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from ..bits import VALID_BITS
from ..data.registry import data_identity
from ..fileio import atomic_write_text
from .results import CellResult, read_metrics

FORMAT = 1
# Settings a record must share with the sweep to count as done (data_dir and the grid's name are
# not among them: the same cell from another machine or grid is the same cell).
BUDGET_KEYS = ("model", "data", "epochs", "subset", "test_subset", "batch_size", "lr", "recipe")
# Keys of the training run's config.json that name this machine's files, left out of a record.
LOCAL_KEYS = ("out", "data_dir", "init_from", "progress", "resume", "threads", "workers")


def cell_settings(cfg, cell) -> dict:
    """What a cell's record must match to count as done: the sweep's budget and the cell."""
    return {k: getattr(cfg, k) for k in BUDGET_KEYS} | {
        "data": data_identity(cfg.data, cfg.data_dir),
        "bits": str(cell.bits),
        "width": cell.width,
        "init": str(cell.init) if cell.init else "",
        "seed": cell.seed,
    }


def settings_diff(record: dict, cfg, cell) -> dict:
    """``{key: (recorded, wanted)}`` for every setting where ``record`` differs from the sweep."""
    got = _settings(record)
    want = cell_settings(cfg, cell)
    return {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}


def git_commit() -> str:
    """The commit of the dorefa checkout this package runs from ("" when not a git checkout)."""
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def make_record(cfg, cell, row: CellResult, cell_dir: Path) -> dict:
    """The record of a finished cell from its result row and its run folder."""
    conf_path = cell_dir / "config.json"
    train_conf = json.loads(conf_path.read_text()) if conf_path.exists() else {}
    history = read_metrics(cell_dir / "metrics.jsonl")
    return {
        "format": FORMAT,
        "cell": row.cell,
        "config": cell_settings(cfg, cell),
        "train_config": {k: v for k, v in train_conf.items() if k not in LOCAL_KEYS},
        "metrics": history,
        "final_test_acc": row.final_test_acc,
        "best_test_acc": row.best_test_acc,
        "seconds": row.wall_s,
        "row": row.to_dict(),
        "commit": git_commit(),
    }


def record_path(records: str | Path, name: str) -> Path:
    return Path(records) / f"{name}.json"


def write_record(records: str | Path, record: dict) -> Path:
    """``records/<cell>.json``, written atomically (a reader never sees half a record)."""
    path = record_path(records, record["cell"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def read_record(path: Path) -> dict:
    """One record; ValueError naming the file if it is not one."""
    try:
        rec = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path}: not a cell record ({exc}); delete it to train the cell again"
        raise ValueError(msg) from None
    if not isinstance(rec, dict) or "row" not in rec or "config" not in rec:
        raise ValueError(f"{path}: not a cell record (no 'row'/'config'); delete it or move it")
    damage = _damage(rec)
    if damage:
        raise ValueError(
            f"{path}: a damaged cell record ({damage}); delete it to train the cell again"
        )
    return rec


def _damage(rec: dict) -> str:
    """What makes a record not one a run wrote ("" if nothing): its cell named, as its row's;
    its row a result row of possible values; its config and train_config dicts; its metrics
    rows with a test_acc in [0, 1] and a train_loss (the page plots both)."""
    metrics = rec.get("metrics", [])
    if not (isinstance(rec["row"], dict) and isinstance(rec["config"], dict)):
        return "its row or config is not an object"
    if not isinstance(rec.get("cell"), str) or rec["cell"] != rec["row"].get("cell"):
        return "its cell is missing or not its row's"  # the page keys curves by one
    if not isinstance(rec.get("train_config", {}), dict):
        return "its train_config is not an object"  # a list had raised deep in the page
    if not isinstance(metrics, list) or not all(
        isinstance(m, dict) and _accuracy(m.get("test_acc")) and _loss(m.get("train_loss"))
        for m in metrics
    ):
        return "its metrics are not epochs with a test_acc in [0, 1] and a train_loss"
    try:  # each field of its type: as results.csv would read it back (a text accuracy, a
        # null W had been taken, then broken the page or the sweep's results.csv)
        row = CellResult.from_dict(rec["row"])
        if CellResult.from_csv(row.to_csv()) != row:
            raise ValueError
    except (TypeError, ValueError):
        return "a field of its row is not of its type"
    return _impossible(row)


def _impossible(row: CellResult) -> str:
    """The first value no run writes ("" if none): an inf or -5 accuracy, W = 99 or a width of
    0 had been averaged into the page."""
    for name in ("best_test_acc", "final_test_acc", "runtime_acc", "agreement"):
        v = getattr(row, name)
        if v is not None and not _accuracy(v):
            return f"its {name} is {v}, not in [0, 1]"
    for name in ("W", "A", "G"):
        if getattr(row, name) not in VALID_BITS:
            return f"its {name} is {getattr(row, name)}, not 1-8 or 32"
    if not (math.isfinite(row.width) and row.width > 0):
        return f"its width is {row.width}"
    if row.seed is not None and row.seed < 0:
        return f"its seed is {row.seed}"
    if row.status not in ("ok", "failed", ""):
        return f"its status is {row.status!r}"
    return ""


def _accuracy(v: object) -> bool:
    return _number(v) and 0.0 <= v <= 1.0  # NaN fails both


def _loss(v: object) -> bool:
    return _number(v) and math.isfinite(v) and v >= 0


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def one_study(records: list[dict]) -> None:
    """Refuse records that one page would mix: other models or data sets (their cells had been
    grouped with the same bits' as seeds, and a claim's verdict changed), or seeds of one cell
    with other budgets (a budget setting of :data:`BUDGET_KEYS`)."""
    settings = [_settings(rec) for rec in records]
    seen: dict[tuple, int] = {}  # cell -> the index of its first record
    for i, (rec, mine) in enumerate(zip(records, settings, strict=True)):
        for key in ("model", "data"):
            if mine.get(key) != settings[0].get(key):
                raise ValueError(
                    f"records {records[0]['cell']} and {rec['cell']} have other {key}s "
                    f"({settings[0].get(key)!r}, {mine.get(key)!r}): report one study's "
                    "records at a time"
                )
        row = record_row(rec)
        j = seen.setdefault((row.W, row.A, row.G, row.width, bool(row.init)), i)
        diff = [k for k in (*BUDGET_KEYS, "init") if settings[j].get(k) != mine.get(k)]
        if diff:
            raise ValueError(
                f"records {records[j]['cell']} and {rec['cell']} are seeds of one cell with "
                f"other {', '.join(diff)}: report them apart"
            )


def read_records(folders) -> list[dict]:
    """Every record (``*.json``) of the folders, in file-name order per folder."""
    out, where = [], []
    for folder in [folders] if isinstance(folders, str | Path) else folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--records {folder}: no such folder")
        paths = sorted(Path(folder).glob("*.json"))
        out += [read_record(p) for p in paths]
        where += paths
    return one_per_cell(out, where)


def one_per_cell(records: list[dict], where: list[Path]) -> list[dict]:
    """The records with each cell (and seed) once, the first folder's first: records of one
    cell with other settings (the data compared by ``data_identity``) are refused, naming both
    (a report had counted a stale record beside the new one as a second seed, its budget mixed
    into the mean); with the same settings, another run of the cell (a sweep retrains a source
    cell whose checkpoint is elsewhere, writing its record to the first folder) is left out,
    with a warning."""
    from ..say import warning

    seen: dict[str, tuple[dict, Path]] = {}
    out = []
    for rec, path in zip(records, where, strict=True):
        first = seen.get(rec["cell"])
        if first is None:
            seen[rec["cell"]] = (rec, path)
            out.append(rec)
            continue
        a, b = _settings(first[0]), _settings(rec)
        diff = ", ".join(  # a setting one record lacks is None, as settings_diff reads it
            f"{k}: {a.get(k)!r} there, {b.get(k)!r} here"
            for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)
        )
        if diff:
            raise ValueError(
                f"{first[1]} and {path} are records of one cell with other settings ({diff}): "
                "remove the stale one, or report the folders one at a time"
            )
        if (first[0]["row"], first[0].get("metrics")) != (rec["row"], rec.get("metrics")):
            warning(f"{path}: another run of the cell of {first[1]}, whose record is taken")
    return out


def _settings(record: dict) -> dict:
    """A record's settings as compared: the data as ``data_identity``."""
    config = dict(record.get("config", {}))
    config["data"] = data_identity(config.get("data"))
    return config


def record_row(record: dict) -> CellResult:
    """The result row a record holds."""
    return CellResult.from_dict(record["row"])
