"""The files of a run folder, written by rank 0 only, each atomically (dorefa.fileio):

    config.json     the run's configuration (TrainConfig plus what was resolved: device, threads)
    metrics.jsonl   one JSON row per finished epoch
    checkpoint.pt   the training state after the last finished epoch (dorefa.checkpoint)
    curves.png      loss and accuracy per epoch
    .lock           locked (flock) by the process training in the folder, from before it reads the
                    folder to its end: a second `dorefa train` into it stops before it reads or
                    writes anything

The checkpoint is what counts: on ``--resume`` the metrics rows of epochs after it are dropped.
Each epoch writes metrics.jsonl before the checkpoint, so a kill between the two leaves a row
that the next resume drops and trains again.
"""

from __future__ import annotations

import json
from pathlib import Path

from .fileio import FolderLock, atomic_savefig, atomic_write_text, read_json

NAMES = ("config.json", "metrics.jsonl", "checkpoint.pt", "curves.png")
# The settings that decide the weights a run ends with: ``--resume`` keeps them (config.json's),
# else its weights would not be those of the uninterrupted run. (bits, width, model and data
# are the checkpoint's meta, checked by checkpoint.restore; epochs, threads, workers, device and
# the test subset may change.)
RESUME_SAME = (
    "subset",
    "batch_size",
    "lr",
    "weight_decay",
    "weight_decay_on",
    "seed",
    "augment",
    "optimizer",
    "adam_eps",
    "momentum",
    "nesterov",
    "lr_milestones",
    "until_flat",
    "amp",
    "engine",
    "sync_bn",
    "channels_last",
    "world_size",  # each process's BatchNorm batch and its share of the data
)


def _setting(field: str) -> str:
    """A TrainConfig field as the user sets it: its flag, else (a recipe's settings) its name."""
    from .train_flags import FLAGS

    if field == "world_size":
        return "--nproc (processes)"
    flag = next((f for f in FLAGS if f.field == field), None)
    return flag.name if flag is not None else f"{field} (a recipe's setting)"


def _config_record(path: Path) -> dict | None:
    """The JSON object of a config.json, or None where it is missing or not one."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _run_file(path: Path) -> bool:
    """Whether ``path`` (config.json or metrics.jsonl) is a run's: a config record with its
    resolved keys, or metrics rows (an empty file counts)."""
    if path.name == "config.json":
        record = _config_record(path)
        return record is not None and {"model", "bits_tag"} <= record.keys()
    try:
        return bool(read_rows(path)) or not path.read_text(errors="replace").strip()
    except OSError:
        return False


def read_rows(path: Path) -> list[dict]:
    """The epoch rows of metrics.jsonl; a line that is not a JSON row with an "epoch" (a
    partial line, from an older version that appended in place) is skipped."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
    return rows


class RunFiles:
    """The run folder ``out``; ``enabled`` False (ranks other than 0) makes every write a no-op."""

    def __init__(self, out: str | Path, enabled: bool = True):
        self.out = Path(out)
        self.enabled = enabled
        self.checkpoint = self.out / "checkpoint.pt"
        self.metrics = self.out / "metrics.jsonl"
        self.history: list[dict] = []
        self._lock = FolderLock(self.out, "`dorefa train`")

    def lock(self) -> None:
        """Take the folder's lock (rank 0) before anything in it is read. Under data-parallel
        training, call it through :func:`dorefa.distributed.together`, so every rank learns the
        outcome and all stop together (a rank left behind would wait in its first collective)."""
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} is a file, not a folder; choose another --out")
        if self.enabled:
            self._lock.acquire()

    def check_fresh(self, resume: bool) -> None:
        """Refuse a new run over an existing one, and a folder whose config.json or
        metrics.jsonl no run wrote (a new run replaces those two)."""
        if self.checkpoint.exists() and not resume:
            raise ValueError(
                f"{self.out} already holds a run (checkpoint.pt); pass --resume to continue "
                "it or choose another --out"
            )
        if self.checkpoint.exists():
            return
        for path in (self.out / "config.json", self.metrics):
            if path.is_file() and not _run_file(path):
                raise ValueError(
                    f"{path} was not written by `dorefa train`, and a new run would replace "
                    "it; choose another --out (or move the file)"
                )

    def check_resume(self, config: dict, saved: object) -> None:
        """``--resume`` over a run: refuse settings (RESUME_SAME) that differ from the run's,
        before anything is written. The run's record is ``saved``, the configuration stored in
        its checkpoint (the one that made those weights), else its config.json; a record
        without a setting (older versions) leaves that setting unchecked."""
        old = saved if isinstance(saved, dict) else _config_record(self.out / "config.json")
        if old is None:
            return  # no record: the checkpoint's meta is still checked
        changed = [k for k in RESUME_SAME if k in old and k in config and old[k] != config[k]]
        if not changed:
            return
        said = "; ".join(f"{_setting(k)} {old[k]!r} then, {config[k]!r} now" for k in changed)
        recipe = old.get("recipe")
        how = "give the run's own settings (its config.json)"
        if recipe and recipe != config.get("recipe"):
            how = f"add --recipe {recipe}"
        raise ValueError(
            f"{self.out} was trained with other settings ({said}); to resume, {how}, or choose "
            "another --out for a new run"
        )

    def read_history(self, start_epoch: int) -> None:
        """The metrics rows of the ``start_epoch`` finished epochs (read on every rank: the
        flatness rule of ``until_flat`` needs them)."""
        rows = read_rows(self.metrics) if self.metrics.exists() else []
        self.history = [h for h in rows if h["epoch"] <= start_epoch]

    def start(self, config: dict) -> None:
        """Before the first epoch this process trains: write config.json and the rows kept by
        :meth:`read_history` (a run with nothing left to train writes nothing)."""
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for name in NAMES:  # temp files of writes that a kill interrupted
            for stale in self.out.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        atomic_write_text(self.out / "config.json", json.dumps(config, indent=2) + "\n")
        self._write_metrics()

    def close(self, failed: bool = False) -> None:
        """Release the folder's lock; ``failed`` (the run stopped before its first write): the
        folder too, if the lock made it and nothing else is in it."""
        self._lock.release(tidy=failed)

    def __enter__(self) -> RunFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def add_epoch(self, row: dict) -> None:
        """Record a finished epoch (rank 0: metrics.jsonl rewritten whole, atomically)."""
        self.history.append(row)
        if self.enabled:
            self._write_metrics()

    def _write_metrics(self) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(h) + "\n" for h in self.history))

    def plot(self, title: str) -> None:
        if self.enabled:
            plot_curves(self.history, self.out / "curves.png", title=title)


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch (matplotlib, Agg backend), saved atomically."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h.get("test_loss", float("nan")) for h in history], "o-", label="test")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("cross-entropy"), ax1.legend()
    ax2.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [h["test_acc"] for h in history], "o-", label="test")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)
