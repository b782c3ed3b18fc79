"""Bit-runtime columns of a cell: after a cell trains, if the bit runtime can run its model
(:func:`dorefa.exporter.exportable`: W and A in 1..8, float first/last layers, a plain svhn/alexnet
model), a small subprocess exports its final checkpoint to ``cells/<cell>/model.dorefa`` and runs
it on the bit runtime (popcount kernels, one thread) over the same test images, as ``dorefa run
--compare`` does (:func:`dorefa.runtime.compare.run_test_set`):

    runtime_acc  = test accuracy there
    agreement    = share of images where it and the torch model in eval mode predict the same class
    model_bytes  = the .dorefa file's size

Other cells leave them empty. A failure of this step is a note (``runtime_note``), never a failed
cell; a resumed sweep fills the columns in for recorded cells that lack them. The subprocess keeps
a crash of the runtime from taking the sweep down.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..fileio import atomic_write_text
from .children import Children, last_error
from .config import SweepConfig
from .results import RUNTIME_KEYS, CellResult

RESULT_KEYS = ("runtime_acc", "agreement", "model_bytes")  # what runtime.json gives a row


def runtime_reason(row: CellResult) -> str | None:
    """None if the bit runtime runs the cell's model, else why not
    (:func:`dorefa.exporter.exportable`; the sweep always trains with float first/last layers)."""
    from ..bits import Bits
    from ..exporter import exportable

    return exportable(row.model, Bits(row.W, row.A, row.G))


def needs_runtime(row: CellResult) -> bool:
    """An ok, exportable row whose runtime columns are not recorded yet."""
    return row.ok and row.runtime_acc is None and runtime_reason(row) is None


def runtime_columns(cfg: SweepConfig, row: CellResult, out: Path, children: Children) -> CellResult:
    """``row`` with its runtime columns: the cell's final checkpoint exported and evaluated on the
    bit runtime in a subprocess. Never raises: a failure becomes a note."""
    empty = {k: (None if k != "runtime_note" else "") for k in RUNTIME_KEYS}
    if runtime_reason(row) is not None:
        return row.replace(**empty)
    cell_dir = out / "cells" / row.cell
    result = cell_dir / "runtime.json"
    try:
        result.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-c",
            "import sys; from dorefa.sweep.runtime_columns import runtime_main; "
            "sys.exit(runtime_main())",
            str(cell_dir),
            cfg.data,
            cfg.data_dir or "",
            str(cfg.test_subset or 0),
        ]
        rc = children.run(row.cell + ":runtime", cmd, cell_dir / "runtime.log")
        if rc != 0 or not result.exists():
            err = last_error(cell_dir / "runtime.log")
            return row.replace(**empty, runtime_note=f"runtime: exit {rc}: {err[:200]}")
        res = json.loads(result.read_text())
        return row.replace(**empty | {k: res.get(k) for k in RESULT_KEYS})
    except Exception as exc:
        return row.replace(**empty, runtime_note=f"runtime: {type(exc).__name__}: {str(exc)[:200]}")


def runtime_main(argv: list[str] | None = None) -> int:
    """In the subprocess (argv: CELL_DIR DATA DATA_DIR TEST_SUBSET, "" / 0 for none): export
    ``CELL_DIR/checkpoint.pt`` to ``model.dorefa``, run it and the torch model on the test set
    (:func:`dorefa.runtime.compare.run_test_set`, as ``dorefa run --compare``), write
    ``runtime.json``."""
    import torch

    from ..checkpoint import export_meta, load_checkpoint, model_from_checkpoint
    from ..exporter import export
    from ..runtime.compare import run_test_set

    cell_dir, data, data_dir, test_subset = argv or sys.argv[1:]
    cell_dir = Path(cell_dir)
    torch.set_num_threads(1)
    ckpt_path = cell_dir / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path)
    dorefa_path = cell_dir / "model.dorefa"
    model = model_from_checkpoint(ckpt, ckpt_path).eval()
    export(model, dorefa_path, meta=export_meta(ckpt, ckpt_path))  # atomic
    res = run_test_set(
        dorefa_path,
        data,
        data_dir=data_dir or None,
        test_subset=int(test_subset) or None,
        compare=ckpt_path,
        threads=1,
    )
    out = {
        "runtime_acc": round(res["accuracy"], 6),
        "agreement": round(res["agreement"], 6),
        "model_bytes": res["model_bytes"],
        "test_n": res["n"],
    }
    atomic_write_text(cell_dir / "runtime.json", json.dumps(out) + "\n")
    print(json.dumps(out))
    return 0
