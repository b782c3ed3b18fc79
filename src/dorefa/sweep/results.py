"""The sweep's record: one typed row per cell (:class:`CellResult`), kept in ``results.csv``.

The CSV's columns are the dataclass's fields, in order; an empty CSV field is ``None`` (or ``""``
for text). Only the sweep's parent process writes the file, atomically (temporary file, fsync,
rename: :mod:`dorefa.fileio`), after every cell, so a reader or a resumed sweep never sees half a
file. A CSV written before a column existed reads with that column empty.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from ..fileio import atomic_write_text
from ..run_files import read_rows


@dataclass
class CellResult:
    """One cell's row of ``results.csv``: what it is, how it went, what it costs."""

    cell: str  # folder name under cells/, e.g. svhn-w1a2g6-x1.0-init
    model: str
    data: str
    W: int
    A: int
    G: int
    width: float
    init: str = ""  # bits of the cell whose checkpoint initialised this one ("" = scratch)
    status: str = ""  # "ok" or "failed"
    best_test_acc: float | None = None  # best epoch's test accuracy (fraction), as the paper
    final_test_acc: float | None = None
    epochs: int | None = None
    wall_s: float | None = None  # the cell's epochs (train + test), one thread
    macs: int | None = None  # per image, see dorefa.sweep.costs
    float_macs: int | None = None
    infer_bitops: int | None = None
    train_bitops: int | None = None
    weight_bytes: float | None = None
    runtime_acc: float | None = None  # test accuracy of the exported model on the bit runtime
    agreement: float | None = None  # share of images where runtime and torch agree
    model_bytes: int | None = None  # size of the .dorefa file
    runtime_note: str = ""  # why the runtime columns are empty (a failure there)
    subset: int | None = None  # first N training images
    test_n: int | None = None  # first N test images (None = the whole test set)
    seed: int | None = None
    error: str = ""  # a failed cell's error (or a note on an ok one)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def bits(self) -> tuple[int, int, int]:
        return (self.W, self.A, self.G)

    def replace(self, **changes) -> CellResult:
        """A copy with ``changes`` (field name -> value)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CellResult:
        """From a dict with (at least) the fields without default; other keys are ignored."""
        return cls(**{k: d[k] for k in COLUMNS if k in d})

    def to_csv(self) -> dict[str, str]:
        return {k: "" if v is None else str(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_csv(cls, row: dict[str, str | None]) -> CellResult:
        """From a ``csv.DictReader`` row; a missing or empty numeric field is None."""
        missing = [k for k in REQUIRED if row.get(k) in (None, "")]
        if missing:
            raise ValueError(f"a row lacks the column(s) {', '.join(missing)}")
        values = {}
        for name, parse in _PARSERS.items():
            text = row.get(name)
            try:
                values[name] = parse(text) if text not in (None, "") else _EMPTY[name]
            except ValueError:
                what = "an integer" if parse is _int else "a number"
                raise ValueError(f"column {name}: {text!r} is not {what}") from None
        return cls(**values)


def _base_type(hint) -> type:
    """``int`` for ``int | None``, ``str`` for ``str``."""
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def _int(text: str) -> int:
    return int(float(text))  # also reads "2.0"


_HINTS = typing.get_type_hints(CellResult)
COLUMNS = [f.name for f in dataclasses.fields(CellResult)]
REQUIRED = [f.name for f in dataclasses.fields(CellResult) if f.default is dataclasses.MISSING]
_PARSERS = {k: {int: _int, float: float, str: str}[_base_type(_HINTS[k])] for k in COLUMNS}
_EMPTY = {k: "" if _base_type(_HINTS[k]) is str else None for k in COLUMNS}

RUNTIME_KEYS = ("runtime_acc", "agreement", "model_bytes", "runtime_note")


def read_results(path: Path) -> list[CellResult]:
    """The rows of ``results.csv`` ([] if it does not exist); ValueError if it is not one."""
    if not Path(path).exists():
        return []
    rows = []
    with open(path, newline="", errors="replace") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                fields = sum(v is not None for k, v in row.items() if k is not None)
                if fields != len(reader.fieldnames or ()) or None in row:  # cut short, or extra
                    raise ValueError(
                        f"has {fields + len(row.get(None) or ())} fields, the header "
                        f"{len(reader.fieldnames or ())} (a truncated or edited file: delete the "
                        "line, or the file to record every cell again)"
                    )
                rows.append(CellResult.from_csv(row))
        except (ValueError, csv.Error) as exc:
            raise ValueError(f"{path}: line {reader.line_num}: {exc}") from None
    return rows


def write_results(path: Path, rows: list[CellResult]) -> None:
    """The CSV, written to a temporary file and renamed (readers never see half a file)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.to_csv() for row in rows)
    atomic_write_text(path, buf.getvalue())


def read_metrics(path: Path) -> list[dict]:
    """A cell's ``metrics.jsonl`` (one dict per finished epoch, written by ``dorefa train``)."""
    if not path.exists():
        return []
    return read_rows(path)  # the training's reader: a line that is not a row is skipped
