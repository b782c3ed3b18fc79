"""Grids of (W, A, G, width) training runs: ``dorefa sweep`` and ``dorefa report``.

A sweep runs every cell of a grid (the paper's SVHN table, DOREFA.md section 4) as a normal
``dorefa train`` run in ``OUT/cells/<model>-w1a2g6-x1.0[-init]/``, one subprocess per cell with one
torch thread each, ``--jobs`` of them side by side. The parent alone writes ``OUT/results.csv``
(atomically, after every cell), so a sweep killed at any point resumes where it stopped: recorded
cells are skipped, and the cell in flight resumes from its last epoch checkpoint
(``train --resume``). A cell with ``init`` (the float-initialised (1,2,6)) waits for its source
cell and starts from that cell's checkpoint (``train --init-from``).

Cost columns, per image, from one forward pass with hooks on every QConv2d/QLinear:

    MACs(layer)              = output elements * (in_channels / groups) * kh * kw   (linear: in*out)
    inference bit-ops        = sum MACs * W_l * A_l
    training bit-ops         = sum MACs * (W_l*A_l + W_l*G_l + A_l*G_l)
                               (forward, backward to the input, backward to the weights)
    weight storage (bytes)   = sum (weights * W_l + biases * 32) / 8

A float layer (``w_bits == 32``: the first conv and last linear under the paper's
``keep_first_last``) counts W_l = A_l = G_l = 32, i.e. its MACs * 32 * 32 are inside the bit-op
totals; its MACs are also listed on their own (``float_macs``). A quantized layer has W_l = W,
G_l = G and A_l = A, except the network's first layer, whose input is the image (A_l = 32).
BatchNorm parameters are not counted in storage (they fold into thresholds at inference).

Bit-runtime columns: after a cell trains, if its bits are exportable (W and A in 1..8, float
first/last layers, a plain svhn/alexnet model), a small subprocess exports its final checkpoint to
``cells/<cell>/model.dorefa`` and runs it on the bit runtime (popcount kernels, one thread) over
the same test images: ``runtime_acc`` (test accuracy there), ``agreement`` (share of images where
it and the torch model in eval mode predict the same class), ``model_bytes`` (the file's size).
Other cells leave them empty. A failure of this step is a note (``runtime_note``), never a failed
cell; a resumed sweep fills the columns in for recorded cells that lack them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from .bits import FLOAT, Bits

# --------------------------------------------------------------------------------------- grids

# (bits, widths, init) entries; ``init`` names the bits of the float cell (same width) whose
# trained checkpoint initialises this one.
PAPER_GRID = {
    "cells": [
        {"bits": b, "widths": [1.0]}
        for b in (
            "32,32,32",
            "8,8,8",
            "1,32,32",
            "1,1,32",
            "1,2,32",
            "1,4,32",
            "1,1,6",
            "1,2,6",
            "1,4,6",
            "2,2,6",
            "1,2,8",
            "1,2,4",
            "1,2,2",
            "1,1,4",
            "1,1,2",
        )
    ]
    + [
        {"bits": "32,32,32", "widths": [0.5, 0.25, 0.125]},
        {"bits": "1,2,6", "widths": [0.5, 0.25, 0.125]},
        {"bits": "1,2,6", "widths": [1.0], "init": "32,32,32"},
    ]
}
TINY_GRID = {"cells": [{"bits": "32,32,32", "widths": [0.25]}, {"bits": "1,2,6", "widths": [0.25]}]}
BUILTIN_GRIDS = {"paper": PAPER_GRID, "tiny": TINY_GRID}

GRID_KEYS = {"bits", "width", "widths", "init"}


@dataclass(frozen=True)
class Cell:
    """One training run of a grid."""

    bits: Bits
    width: float = 1.0
    init: Bits | None = None  # bits of the cell (same width) whose checkpoint initialises this one

    def name(self, model: str) -> str:
        return f"{model}-{self.bits.tag}-x{self.width}" + ("-init" if self.init else "")

    def source(self) -> Cell | None:
        return Cell(self.init, self.width) if self.init else None


def _parse_grid(obj: object, where: str) -> list[Cell]:
    if not isinstance(obj, dict) or not isinstance(obj.get("cells"), list) or not obj["cells"]:
        raise ValueError(
            f"{where}: a grid needs a non-empty list 'cells', e.g. "
            "cells: [{bits: '1,2,6', widths: [1.0, 0.5]}, "
            "{bits: '1,2,6', width: 1.0, init: '32,32,32'}]"
        )
    cells: list[Cell] = []
    for i, entry in enumerate(obj["cells"]):
        at = f"{where}: cells[{i}]"
        if not isinstance(entry, dict) or "bits" not in entry:
            raise ValueError(f"{at}: each cell needs 'bits' (\"W,A,G\"), got {entry!r}")
        unknown = set(entry) - GRID_KEYS
        if unknown:
            raise ValueError(
                f"{at}: unknown key(s) {sorted(unknown)}; allowed: {sorted(GRID_KEYS)}"
            )
        try:
            bits = Bits.parse(entry["bits"])
            init = Bits.parse(entry["init"]) if entry.get("init") else None
        except ValueError as exc:
            raise ValueError(f"{at}: {exc}") from None
        widths = entry.get("widths", [entry.get("width", 1.0)])
        if not isinstance(widths, list) or not widths:
            raise ValueError(f"{at}: 'widths' must be a non-empty list of numbers, got {widths!r}")
        for w in widths:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 4:
                raise ValueError(f"{at}: width must be a number in (0, 4], got {w!r}")
            cells.append(Cell(bits, float(w), init))
    names = [c.name("m") for c in cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: cells listed twice: {', '.join(d[2:] for d in dup)}")
    for c in cells:
        if c.init and c.source() not in cells:
            raise ValueError(
                f"{where}: cell {c.bits} width {c.width} is initialised from "
                f"{c.init} width {c.width}, which is not in the grid; add it"
            )
    return cells


def load_grid(spec: str) -> list[Cell]:
    """A built-in grid by name (``paper``, ``tiny``) or a ``.yaml``/``.yml``/``.toml`` file."""
    if spec in BUILTIN_GRIDS:
        return _parse_grid(BUILTIN_GRIDS[spec], f"built-in grid {spec!r}")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"--grid {spec}: no such file and not a built-in grid ({', '.join(BUILTIN_GRIDS)})"
        )
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            obj = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            obj = yaml.safe_load(text)
        else:
            raise ValueError(f"--grid {spec}: unknown grid format {suffix!r}; use .yaml or .toml")
    except ValueError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError
        raise ValueError(f"--grid {spec}: cannot parse: {str(exc).splitlines()[0]}") from None
    return _parse_grid(obj, str(path))


# ------------------------------------------------------------------------------------- costs


def layer_costs(model, image_size: int, in_channels: int, bits: Bits) -> dict:
    """MACs, bit-ops and weight storage per image (formulas in the module docstring)."""
    import torch

    from .nn import QConv2d, QLinear

    layers: list[tuple[object, int]] = []  # (module, MACs per image) in call order

    def hook(module, inputs, output):
        if isinstance(module, QConv2d):
            kh, kw = module.kernel_size
            per_out = module.in_channels // module.groups * kh * kw
            macs = output[0].numel() * per_out
        else:
            macs = module.in_features * module.out_features
        layers.append((module, macs))

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (QConv2d, QLinear))
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, image_size, image_size))
    model.train(was_training)
    for h in handles:
        h.remove()

    out = {"macs": 0, "float_macs": 0, "infer_bitops": 0, "train_bitops": 0, "weight_bytes": 0.0}
    for i, (m, macs) in enumerate(layers):
        if m.w_bits == FLOAT:
            w = a = g = FLOAT
            out["float_macs"] += macs
        else:
            w, a, g = m.w_bits, (FLOAT if i == 0 else bits.a), bits.g
        out["macs"] += macs
        out["infer_bitops"] += macs * w * a
        out["train_bitops"] += macs * (w * a + w * g + a * g)
        bias = m.bias.numel() if m.bias is not None else 0
        out["weight_bytes"] += (m.weight.numel() * w + bias * FLOAT) / 8
    return out


def cell_costs(model_name: str, cell: Cell, num_classes: int, in_channels: int) -> dict:
    from .models import create_model, input_size

    model = create_model(
        model_name,
        bits=cell.bits,
        num_classes=num_classes,
        in_channels=in_channels,
        width=cell.width,
    )
    return layer_costs(model, input_size(model_name), in_channels, cell.bits)


# ------------------------------------------------------------------------------------- sweep

COLUMNS = [
    "cell",
    "model",
    "data",
    "W",
    "A",
    "G",
    "width",
    "init",
    "status",
    "best_test_acc",
    "final_test_acc",
    "epochs",
    "wall_s",
    "macs",
    "float_macs",
    "infer_bitops",
    "train_bitops",
    "weight_bytes",
    "runtime_acc",
    "agreement",
    "model_bytes",
    "runtime_note",
    "subset",
    "test_n",
    "seed",
    "error",
]

# A sweep's settings: every cell gets the same budget; resuming with different ones is refused.
SETTING_KEYS = (
    "model",
    "data",
    "data_dir",
    "grid",
    "epochs",
    "subset",
    "test_subset",
    "seed",
    "batch_size",
    "lr",
)


@dataclass
class SweepConfig:
    model: str = "svhn"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    grid: str = "paper"  # built-in name or grid file
    epochs: int = 2
    out: str = "runs/sweep"
    subset: int | None = None  # first N training images, every cell
    test_subset: int | None = None  # first N test images (None = the whole test set)
    jobs: int = 1  # cells side by side, one torch thread each
    seed: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    progress: bool | None = None  # tqdm over cells; None = only on a terminal


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [_typed(row) for row in csv.DictReader(f)]


def _typed(row: dict) -> dict:
    out: dict = dict(row)
    for k in (
        "W",
        "A",
        "G",
        "epochs",
        "macs",
        "float_macs",
        "infer_bitops",
        "train_bitops",
        "seed",
        "test_n",
        "model_bytes",
    ):
        out[k] = int(float(row[k])) if row.get(k) not in (None, "") else None
    for k in (
        "width",
        "best_test_acc",
        "final_test_acc",
        "wall_s",
        "weight_bytes",
        "runtime_acc",
        "agreement",
    ):
        out[k] = float(row[k]) if row.get(k) not in (None, "") else None
    out["subset"] = int(row["subset"]) if row.get("subset") not in (None, "") else None
    return out


def write_results(path: Path, rows: list[dict]) -> None:
    """The CSV, written to a temporary file and renamed (readers never see half a file)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    _write_atomic(path, buf.getvalue())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _train_command(cfg: SweepConfig, cell: Cell, cell_dir: Path, init_from: Path | None):
    cmd = [
        sys.executable,
        "-m",
        "dorefa",
        "train",
        "--model",
        cfg.model,
        "--data",
        cfg.data,
        "--bits",
        str(cell.bits),
        "--width",
        str(cell.width),
        "--epochs",
        str(cfg.epochs),
        "--batch-size",
        str(cfg.batch_size),
        "--lr",
        str(cfg.lr),
        "--seed",
        str(cfg.seed),
        "--threads",
        "1",
        "--out",
        str(cell_dir),
        "--resume",
    ]
    if cfg.data_dir:
        cmd += ["--data-dir", cfg.data_dir]
    if cfg.subset:
        cmd += ["--subset", str(cfg.subset)]
    if cfg.test_subset:
        cmd += ["--test-subset", str(cfg.test_subset)]
    if init_from is not None:
        cmd += ["--init-from", str(init_from)]
    return cmd


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the sweep dies, so no orphan keeps writing a cell."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _child_env() -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # the folder holding this dorefa package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


class _Children:
    """The cells' subprocesses; ``stop()`` ends them and refuses new ones."""

    def __init__(self):
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopped = False

    def start(self, name: str, cmd: list[str], logf) -> subprocess.Popen:
        with self.lock:
            if self.stopped:
                raise RuntimeError("the sweep is stopping")
            proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                preexec_fn=_die_with_parent if os.name == "posix" else None,
            )
            self.procs[name] = proc
            return proc

    def done(self, name: str) -> None:
        with self.lock:
            self.procs.pop(name, None)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            for proc in self.procs.values():
                proc.terminate()  # the cell keeps its last epoch checkpoint; --resume continues


def _cell_row(cfg: SweepConfig, cell: Cell, **fields) -> dict:
    """The result row's columns that name the cell and the sweep's settings, plus `fields`."""
    return {
        "cell": cell.name(cfg.model),
        "model": cfg.model,
        "data": cfg.data,
        "W": cell.bits.w,
        "A": cell.bits.a,
        "G": cell.bits.g,
        "width": cell.width,
        "init": str(cell.init) if cell.init else "",
        "subset": cfg.subset,
        "seed": cfg.seed,
        **fields,
    }


def _run_cell(cfg: SweepConfig, cell: Cell, out: Path, children: _Children) -> dict:
    """Train one cell in a subprocess; return its result row (status ok or failed)."""
    cell_dir = out / "cells" / cell.name(cfg.model)
    cell_dir.mkdir(parents=True, exist_ok=True)
    src = cell.source()
    init_from = out / "cells" / src.name(cfg.model) / "checkpoint.pt" if src else None
    row = _cell_row(cfg, cell)
    t0 = time.perf_counter()
    for attempt in range(2):
        with open(cell_dir / "train.log", "a") as logf:
            cmd = _train_command(cfg, cell, cell_dir, init_from)
            logf.write(f"$ {' '.join(cmd)}\n")
            logf.flush()
            proc = children.start(row["cell"], cmd, logf)
            rc = proc.wait()
            children.done(row["cell"])
        history = _read_metrics(cell_dir / "metrics.jsonl")
        complete = len(history) >= cfg.epochs and (cell_dir / "checkpoint.pt").exists()
        # Killed by a signal (e.g. a shared library rebuilt under it): resume it once.
        if complete or rc >= 0 or children.stopped or attempt == 1:
            break
    if not complete:
        lines = [ln for ln in (cell_dir / "train.log").read_text().splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if "rror" in ln), lines[-1] if lines else "")
        return row | {
            "status": "failed",
            "error": f"exit {rc}: {err.strip()[:300]}",
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    # Every epoch and the checkpoint are on disk: the run is complete even if the process
    # died on the way out (noted in the error column).
    row["error"] = f"exit {rc} after the last epoch" if rc != 0 else ""
    conf = json.loads((cell_dir / "config.json").read_text())
    costs = cell_costs(cfg.model, cell, conf["num_classes"], conf["in_channels"])
    # wall time = the cell's epochs (train + test), summed over resumed pieces
    row = (
        row
        | costs
        | {
            "status": "ok",
            "epochs": len(history),
            "best_test_acc": max(h["test_acc"] for h in history),
            "final_test_acc": history[-1]["test_acc"],
            "wall_s": round(sum(h["seconds"] for h in history), 1),
            "test_n": cfg.test_subset,
        }
    )
    return row | runtime_columns(cfg, row, out, children)


# ------------------------------------------------------------------- bit-runtime columns

EXPORTABLE_MODELS = ("svhn", "alexnet")  # plain conv stacks; resnets are not exportable
RUNTIME_KEYS = ("runtime_acc", "agreement", "model_bytes", "runtime_note")


def exportable(row: dict) -> bool:
    """Bits (and model) the bit runtime runs: W and A in 1..8, float first/last layers (the
    sweep always trains with the paper's keep_first_last)."""
    w, a = row.get("W"), row.get("A")
    return (
        row.get("model") in EXPORTABLE_MODELS
        and isinstance(w, int)
        and isinstance(a, int)
        and 1 <= w <= 8
        and 1 <= a <= 8
    )


def needs_runtime(row: dict) -> bool:
    """An ok, exportable row whose runtime columns are not recorded yet."""
    return row.get("status") == "ok" and exportable(row) and row.get("runtime_acc") is None


def runtime_columns(cfg: SweepConfig, row: dict, out: Path, children: _Children) -> dict:
    """Export the cell's final checkpoint and evaluate it on the bit runtime in a subprocess
    (a crash there cannot take the sweep down). Never raises: a failure becomes a note."""
    empty = {k: None for k in RUNTIME_KEYS}
    if not exportable(row):
        return empty
    cell_dir = out / "cells" / row["cell"]
    result = cell_dir / "runtime.json"
    try:
        result.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-c",
            "import sys; from dorefa.sweep import _runtime_main; sys.exit(_runtime_main())",
            str(cell_dir),
            cfg.data,
            cfg.data_dir or "",
            str(cfg.test_subset or 0),
        ]
        with open(cell_dir / "runtime.log", "a") as logf:
            logf.write(f"$ {' '.join(cmd)}\n")
            logf.flush()
            proc = children.start(row["cell"] + ":runtime", cmd, logf)
            try:
                rc = proc.wait()
            finally:
                children.done(row["cell"] + ":runtime")
        if rc != 0 or not result.exists():
            lines = [ln for ln in (cell_dir / "runtime.log").read_text().splitlines() if ln.strip()]
            err = next((ln for ln in reversed(lines) if "rror" in ln), lines[-1] if lines else "")
            return empty | {"runtime_note": f"runtime: exit {rc}: {err.strip()[:200]}"}
        res = json.loads(result.read_text())
        return empty | {k: res.get(k) for k in ("runtime_acc", "agreement", "model_bytes")}
    except Exception as exc:
        return empty | {"runtime_note": f"runtime: {type(exc).__name__}: {str(exc)[:200]}"}


def _runtime_main(argv: list[str] | None = None) -> int:
    """In the subprocess: export ``CELL_DIR/checkpoint.pt`` to ``model.dorefa``, run it and the
    torch model on the test set, write ``runtime.json``."""
    import numpy as np
    import torch

    from . import runtime
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .data import get_dataset
    from .export import export
    from .runtime.cli import _batches, compare_logits

    cell_dir, data, data_dir, test_subset = argv or sys.argv[1:]
    cell_dir = Path(cell_dir)
    torch.set_num_threads(1)
    ckpt_path = cell_dir / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path)
    torch_model = model_from_checkpoint(ckpt, ckpt_path).eval()
    meta = dict(ckpt["meta"]) | {
        "checkpoint": str(ckpt_path),
        "epoch": int(ckpt.get("epoch", -1)) + 1,
    }
    dorefa_path = cell_dir / "model.dorefa"
    export(torch_model, dorefa_path, meta=meta)  # written to a temp file and renamed
    model = runtime.load(dorefa_path, threads=1)
    _, size, _ = model.input_shape
    test_set = get_dataset(data, "test", data_dir=data_dir or None, image_size=size)
    if int(test_subset):
        test_set = test_set.subset(min(int(test_subset), len(test_set)))
    rt_all, torch_all, labels_all = [], [], []
    for x, labels in _batches(test_set, 256, size):
        rt_all.append(model(x.numpy()))
        with torch.no_grad():
            torch_all.append(torch_model(x).numpy())
        labels_all.append(labels)
    logits, labels = np.concatenate(rt_all), np.concatenate(labels_all)
    res = {
        "runtime_acc": round(float((logits.argmax(1) == labels).mean()), 6),
        "agreement": round(compare_logits(logits, np.concatenate(torch_all))["agreement"], 6),
        "model_bytes": dorefa_path.stat().st_size,
        "test_n": len(labels),
    }
    _write_atomic(cell_dir / "runtime.json", json.dumps(res) + "\n")
    print(json.dumps(res))
    return 0


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _check_settings(cfg: SweepConfig, out: Path) -> None:
    settings = {k: getattr(cfg, k) for k in SETTING_KEYS}
    path = out / "sweep.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} holds a sweep with other settings ({what}); every cell must "
                "get the same budget: use the same arguments or another --out"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(settings, indent=2) + "\n")


def run_sweep(cfg: SweepConfig, log=print) -> list[dict]:
    """Run (or resume) every cell of ``cfg.grid``; returns the result rows in grid order.

    Test hook: ``DOREFA_SWEEP_STOP_AFTER=N`` raises after N cells were recorded by this call, as
    if the sweep had been killed there."""
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {cfg.jobs}")
    cells = load_grid(cfg.grid)
    out = Path(cfg.out)
    _check_settings(cfg, out)
    csv_path = out / "results.csv"
    names = [c.name(cfg.model) for c in cells]
    done = {r["cell"]: r for r in read_results(csv_path) if r["cell"] in names}
    # A recorded ok cell is finished; a recorded failure is tried again.
    pending = [c for c in cells if done.get(c.name(cfg.model), {}).get("status") != "ok"]
    # Recorded ok cells without the bit-runtime columns (an older sweep, or a sweep killed
    # between training and recording them): evaluated again on the runtime, not retrained.
    fills = [done[n] for n in names if n in done and needs_runtime(done[n])]
    stop_after = int(os.environ.get("DOREFA_SWEEP_STOP_AFTER", "0") or 0)
    log(
        f"sweep {cfg.grid}: {len(cells)} cells, {len(cells) - len(pending)} already done, "
        f"{cfg.jobs} job(s) -> {out}"
        + (f"; {len(fills)} to run on the bit runtime" if fills else "")
    )

    from tqdm import tqdm

    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(pending),
        desc="cells",
        unit="cell",
        disable=not show,
        dynamic_ncols=True,
    )
    lock = threading.Lock()
    children = _Children()
    recorded = 0

    def record(row: dict) -> None:
        nonlocal recorded
        with lock:
            done[row["cell"]] = row
            rows = [done[n] for n in names if n in done]
            write_results(csv_path, rows)
            _write_atomic(out / "results.md", render_markdown(rows, cfg_dict(cfg), out))
            recorded += 1
        msg = (
            f"{row['cell']}: best {row['best_test_acc']:.4f} final "
            f"{row['final_test_acc']:.4f} ({row['wall_s']:.0f}s)" + _runtime_msg(row)
            if row["status"] == "ok"
            else f"{row['cell']}: FAILED {row['error']}"
        )
        bar.update(1)
        bar.set_postfix_str(msg[:60])
        log(msg) if not show else bar.write(msg)
        if stop_after and recorded >= stop_after:
            raise RuntimeError(f"DOREFA_SWEEP_STOP_AFTER={stop_after}: stopping the sweep")

    def record_runtime(row: dict) -> None:
        """A recorded cell's runtime columns, filled in (not a newly recorded cell)."""
        with lock:
            done[row["cell"]] = row
            rows = [done[n] for n in names if n in done]
            write_results(csv_path, rows)
            _write_atomic(out / "results.md", render_markdown(rows, cfg_dict(cfg), out))
        msg = f"{row['cell']}: (recorded before)" + _runtime_msg(row)
        log(msg) if not show else bar.write(msg)

    running: dict = {}  # future -> cell, or the name of a recorded cell being filled in
    pool = ThreadPoolExecutor(max_workers=cfg.jobs)
    try:
        while pending or running or fills:
            while fills and len(running) < cfg.jobs:
                r = fills.pop(0)
                running[pool.submit(_fill_runtime, cfg, r, out, children)] = r["cell"]
            for cell in list(pending):
                if len(running) >= cfg.jobs:
                    break
                src = cell.source()
                src_row = done.get(src.name(cfg.model)) if src else None
                if src is not None and (src in pending or src in running.values()):
                    continue  # its source cell is not trained yet
                pending.remove(cell)
                if src and (src_row is None or src_row["status"] != "ok"):
                    record(
                        _cell_row(
                            cfg,
                            cell,
                            status="failed",
                            error=f"its source cell {src.name(cfg.model)} failed",
                        )
                    )
                    continue
                running[pool.submit(_run_cell, cfg, cell, out, children)] = cell
            if not running:
                if pending and not any(
                    c.source() is None or c.source() not in pending for c in pending
                ):
                    raise RuntimeError("sweep scheduler: no runnable cell left")  # unreachable
                continue
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                cell = running.pop(fut)
                if isinstance(cell, str):
                    try:
                        record_runtime(fut.result())
                    except Exception as exc:  # a bug; the cell stays as it was recorded
                        log(f"{cell}: runtime columns not filled in: {type(exc).__name__}: {exc}")
                    continue
                try:
                    row = fut.result()
                except Exception as exc:  # a bug in the parent's bookkeeping of this cell
                    row = _cell_row(
                        cfg, cell, status="failed", error=f"{type(exc).__name__}: {exc}"
                    )
                record(row)
    finally:
        children.stop()  # killed or stopped: the cells in flight end now
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    rows = [done[n] for n in names if n in done]
    render_report(out)
    return rows


def _fill_runtime(cfg: SweepConfig, row: dict, out: Path, children: _Children) -> dict:
    return row | runtime_columns(cfg, row, out, children)


def _runtime_msg(row: dict) -> str:
    if row.get("runtime_acc") is not None:
        return f"; bit runtime {row['runtime_acc']:.4f}, agreement {row['agreement']:.4f}"
    return f"; {row['runtime_note']}" if row.get("runtime_note") else ""


def cfg_dict(cfg: SweepConfig) -> dict:
    return dataclasses.asdict(cfg)


# ------------------------------------------------------------------------------------ report

TOL = 0.01  # accuracy differences smaller than this are "about equal" (seed noise at this budget)


def _fmt_ops(x) -> str:
    if x is None:
        return ""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _status(r: dict) -> str:
    err = "; ".join(str(r.get(k)) for k in ("error", "runtime_note") if r.get(k))
    err = err.replace("|", "/")
    if r.get("status") == "ok":
        return f"ok ({err})" if err else "ok"
    return f"failed: {err}"


def _kib(x) -> str:
    return "" if x is None else f"{x / 1024:.1f}"


def _acc(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def render_table(rows: list[dict]) -> str:
    head = (
        "| W | A | G | width | init | best acc | final acc | epochs | wall (s) | "
        "inference bit-ops | training bit-ops | float MACs | weights (KiB) | "
        "runtime acc | agreement | .dorefa (KiB) | status |"
    )
    lines = [head, "|" + "---|" * 17]
    for r in rows:
        lines.append(
            f"| {r['W']} | {r['A']} | {r['G']} | {r['width']:g} | {r.get('init') or ''} | "
            f"{_acc(r.get('best_test_acc'))} | {_acc(r.get('final_test_acc'))} | "
            f"{r.get('epochs') or ''} | {r.get('wall_s') or ''} | "
            f"{_fmt_ops(r.get('infer_bitops'))} | {_fmt_ops(r.get('train_bitops'))} | "
            f"{_fmt_ops(r.get('float_macs'))} | "
            f"{_kib(r.get('weight_bytes'))} | "
            f"{_acc(r.get('runtime_acc'))} | {_acc(r.get('agreement'))} | "
            f"{_kib(r.get('model_bytes'))} | "
            f"{_status(r)} |"
        )
    return "\n".join(lines)


class _Lookup:
    def __init__(self, rows: list[dict]):
        self.rows = {
            (r["W"], r["A"], r["G"], float(r["width"]), bool(r.get("init"))): r
            for r in rows
            if r.get("status") == "ok"
        }

    def __call__(self, w, a, g, width=1.0, init=False):
        r = self.rows.get((w, a, g, float(width), init))
        return None if r is None else r["best_test_acc"]


def _t(w, a, g, width=1.0, init=False) -> str:
    return f"({w},{a},{g})" + ("" if width == 1.0 else f" x{width:g}") + (" init" if init else "")


def _cmp(acc, a, b, label_a=None, label_b=None):
    """'(1,2,6) 0.9012 vs (1,2,32) 0.9050: -0.0038' or None when a cell is missing."""
    va, vb = acc(*a), acc(*b)
    if va is None or vb is None:
        return None, None
    la, lb = label_a or _t(*a), label_b or _t(*b)
    return va - vb, f"{la} {va:.4f} vs {lb} {vb:.4f}: {va - vb:+.4f}"


def _verdict(ok: bool | None) -> str:
    return {True: "**holds**", False: "**does not hold**", None: "not measured"}[ok]


def claims(rows: list[dict]) -> list[str]:
    """The paper's claims (DOREFA.md section 4), each checked with the sweep's best accuracies."""
    acc = _Lookup(rows)
    out: list[str] = []

    def section(title: str, paper: str, pairs, test) -> None:
        diffs, texts = [], []
        for a, b in pairs:
            d, text = _cmp(acc, a, b)
            if d is not None:
                diffs.append(d)
                texts.append(text)
        verdict = test(diffs) if diffs else None
        out.append(f"- **{title}** (paper: {paper}): {_verdict(verdict)}")
        out.extend(f"  - {t}" for t in texts)

    section(
        "G=6 is about as good as G=32",
        "6-bit gradients are about as good as float ones; AlexNet (1,2,6) 46.8% vs (1,2,32) "
        f"46.6% error), taken as holding when every G=6 cell is within {TOL} of G=32 or above",
        [((1, a, 6), (1, a, 32)) for a in (1, 2, 4)],
        lambda ds: all(d >= -TOL for d in ds),
    )
    section(
        "G=4 and G=2 are clearly worse than G=6",
        "4-bit gradients clearly hurt; AlexNet (1,2,4) 54.0% vs (1,2,6) 46.8% error), "
        f"holding when every G<6 cell is more than {TOL} below its G=6 cell",
        [((1, a, g), (1, a, 6)) for a in (1, 2) for g in (4, 2)],
        lambda ds: all(d < -TOL for d in ds),
    )
    section(
        "G=8 adds nothing over G=6",
        "6 bits suffice",
        [((1, 2, 8), (1, 2, 6))],
        lambda ds: all(abs(d) <= TOL for d in ds),
    )
    section(
        "More activation bits help: A=1 < A=2 < A=4 at W=1",
        "accuracy rises with A; activations need more bits than weights",
        [
            ((1, 2, 32), (1, 1, 32)),
            ((1, 4, 32), (1, 2, 32)),
            ((1, 2, 6), (1, 1, 6)),
            ((1, 4, 6), (1, 2, 6)),
        ],
        lambda ds: all(d > 0 for d in ds),
    )
    section(
        "1-bit weights alone cost little; activations cost more",
        "AlexNet (1,32,32) 44.3% vs float 40.3% error, but (1,1,32) 51.5%",
        [((1, 32, 32), (32, 32, 32)), ((1, 1, 32), (1, 32, 32))],
        lambda ds: ds[0] > ds[-1] if len(ds) == 2 else None,
    )
    section(
        "More weight bits help: (2,2,6) >= (1,2,6); (8,8,8) ~ float",
        "AlexNet (8,8,8) 42.0% vs float 40.3% error",
        [((2, 2, 6), (1, 2, 6)), ((8, 8, 8), (32, 32, 32))],
        lambda ds: ds[0] >= -TOL and (len(ds) < 2 or ds[1] >= -2 * TOL),
    )
    section(
        "Initialising from a trained float model helps",
        "initialising from a float model gives higher accuracy than training from scratch",
        [(((1, 2, 6, 1.0, True)), (1, 2, 6))],
        lambda ds: ds[0] > 0,
    )

    gaps = []
    for width in (1.0, 0.5, 0.25, 0.125):
        d, text = _cmp(acc, (1, 2, 6, width), (32, 32, 32, width))
        if d is not None:
            gaps.append((width, d, text))
    verdict = None
    if len(gaps) >= 2:  # thinner = larger loss: the (1,2,6) - float gap falls as width falls
        verdict = all(b[1] <= a[1] for a, b in zip(gaps, gaps[1:], strict=False))
    out.append(
        f"- **Thinner models lose more from quantization** (paper: the gap between "
        f"(1,2,6) and float grows from model A to D): {_verdict(verdict)} "
        "(monotone in width)"
    )
    out.extend(f"  - width {w:g}: {t}" for w, _, t in gaps)

    f32, q = acc(32, 32, 32), acc(1, 2, 6)
    out.append(
        "- **The issue's targets** ((32,32,32) >= 0.930; (1,2,6) >= 0.920 and within "
        "0.010 of float):"
    )
    if f32 is not None:
        out.append(
            f"  - (32,32,32) {f32:.4f}: {'reached' if f32 >= 0.930 else 'not reached'} "
            f"({f32 - 0.930:+.4f})"
        )
    if q is not None:
        out.append(
            f"  - (1,2,6) {q:.4f}: {'reached' if q >= 0.920 else 'not reached'} "
            f"({q - 0.920:+.4f})"
            + (
                f"; gap to float {q - f32:+.4f} "
                f"({'within' if f32 - q <= 0.010 else 'outside'} 0.010)"
                if f32 is not None
                else ""
            )
        )
    return out


def runtime_line(rows: list[dict]) -> str:
    """The line on the bit-runtime columns: where they come from and the worst agreement."""
    ran = [r for r in rows if r.get("agreement") is not None]
    text = (
        "Runtime acc = test accuracy of the cell's final checkpoint exported to a .dorefa file "
        "and run on the bit runtime's popcount kernels (one thread, same test images); "
        "agreement = share of those images where it predicts the same class as the torch "
        "model in eval mode; empty for cells the runtime cannot run (W or A = 32)."
    )
    if not ran:
        return text + " No cell has been run on the bit runtime yet."
    worst = min(ran, key=lambda r: r["agreement"])
    return text + (
        f" Agreement with torch: min {worst['agreement']:.4f} over {len(ran)} cell(s) "
        f"({worst['cell']})."
    )


def render_markdown(rows: list[dict], settings: dict | None, out: Path, plots=()) -> str:
    settings = settings or {}
    parts = ["# DoReFa sweep results", ""]
    if settings:
        keep = {k: settings.get(k) for k in SETTING_KEYS if k in settings}
        parts += ["Settings: " + ", ".join(f"{k}={v}" for k, v in keep.items()), ""]
    n_ok = sum(r.get("status") == "ok" for r in rows)
    parts += [
        f"{n_ok} of {len(rows)} recorded cells finished. Accuracies are test accuracy "
        "(fraction); best = best epoch, as the paper reports. Bit-ops are per image; "
        "float layers (first conv, last linear) count as MACs x 32 x 32 inside the bit-op "
        "totals and are also listed as float MACs. Training bit-ops = MACs x (W*A + W*G + "
        "A*G). Weights: quantized layers at W bits, float layers and biases at 32 bits, "
        "BatchNorm not counted. Wall time = the cell's epochs (training + test), one "
        "thread.",
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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def plot_all(rows: list[dict], out: Path, prefix: str = "") -> list[str]:
    """acc_vs_g.png, acc_vs_width.png, curves.png in ``out``; returns the file names written."""
    plt = _plt()
    acc = _Lookup(rows)
    written = []

    fig, ax = plt.subplots(figsize=(5.5, 4))
    gs = [2, 4, 6, 8, 32]
    for a in (1, 2, 4):
        pts = [(i, acc(1, a, g)) for i, g in enumerate(gs) if acc(1, a, g) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"W=1, A={a}")
    if acc(32, 32, 32) is not None:
        ax.axhline(acc(32, 32, 32), color="gray", ls="--", label="float (32,32,32)")
    ax.set_xticks(range(len(gs)), [str(g) for g in gs])
    ax.set_xlabel("gradient bits G"), ax.set_ylabel("best test accuracy")
    ax.set_title("accuracy vs G (width 1.0)")
    _legend(ax, fontsize=8)
    _save(fig, out / f"{prefix}acc_vs_g.png")
    plt.close(fig)
    written.append(f"{prefix}acc_vs_g.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    triples = sorted(
        {(r["W"], r["A"], r["G"]) for r in rows if r.get("status") == "ok"}, key=lambda t: -sum(t)
    )
    for t in triples:
        pts = sorted(
            (r["width"], r["best_test_acc"])
            for r in rows
            if r.get("status") == "ok" and (r["W"], r["A"], r["G"]) == t and not r.get("init")
        )
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=_t(*t))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width multiplier (1 = model A, 1/8 = model D)")
    ax.set_ylabel("best test accuracy"), ax.set_title("accuracy vs width")
    _legend(ax, fontsize=8)
    _save(fig, out / f"{prefix}acc_vs_width.png")
    plt.close(fig)
    written.append(f"{prefix}acc_vs_width.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    from cycler import cycler

    styles = cycler(ls=["-", "--", ":"]) * cycler(color=plt.cm.tab10.colors)  # 30 distinct lines
    ax1.set_prop_cycle(styles), ax2.set_prop_cycle(styles)
    for r in rows:
        hist = _read_metrics(out / "cells" / r["cell"] / "metrics.jsonl")
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        label = r["cell"].split("-", 1)[1]
        ax1.plot(ep, [h["train_loss"] for h in hist], "o-", ms=3, label=label)
        ax2.plot(ep, [h["test_acc"] for h in hist], "o-", ms=3, label=label)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("training loss")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("test accuracy")
    _legend(ax2, fontsize=6, ncol=2, loc="lower right")
    fig.suptitle("training curves of all cells")
    _save(fig, out / f"{prefix}curves.png")
    plt.close(fig)
    written.append(f"{prefix}curves.png")
    return written


def render_report(out: str | Path) -> list[dict]:
    """Re-render results.md and the plots of a sweep folder from its results.csv."""
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
    _write_atomic(out / "results.md", render_markdown(rows, settings, out, plots))
    return rows


# --------------------------------------------------------------------------------------- CLI


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
    failed = [r["cell"] for r in rows if r.get("status") != "ok"]
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
