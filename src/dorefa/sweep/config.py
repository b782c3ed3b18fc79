"""A sweep's settings (:class:`SweepConfig`) and the rule that every cell gets the same budget.

``OUT/sweep.json`` keeps the settings of :data:`SETTING_KEYS` from the sweep's first run; a later
run in the same folder with other values is refused (it would mix budgets in one table). The seeds
are not among them: they are part of the grid (a later run may add seeds to a sweep).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..data.registry import data_identity, folder_read, spec_place
from ..fileio import FolderLock, atomic_write_text, read_json, resolved_path

# A sweep's settings: every cell gets the same budget; resuming with different ones is refused.
SETTING_KEYS = (
    "model",
    "data",
    "data_dir",
    "grid",
    "epochs",
    "subset",
    "test_subset",
    "batch_size",
    "lr",
    "recipe",
)
# The budget when neither the command line nor a recipe gives it.
BUDGET_DEFAULTS = {"epochs": 2, "batch_size": 128, "lr": 1e-3}


@dataclass
class SweepConfig:
    model: str = "svhn"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    grid: str = "paper"  # built-in name or grid file
    epochs: int | None = None  # None: the recipe's, else BUDGET_DEFAULTS
    out: str = "runs/sweep"
    subset: int | None = None  # first N training images, every cell
    test_subset: int | None = None  # first N test images (None = the whole test set)
    jobs: int = 1  # cells side by side, one torch thread each
    seed: int = 0  # the seed when ``seeds`` is None (``--seed``)
    seeds: tuple[int, ...] | None = None  # the grid's seeds (``--seeds 0,1``); None = (seed,)
    records: str | None = None  # folder of committed cell records (``--records``), see .records
    # more folders whose records count as done (``--records`` given again), never written
    done_records: tuple[str, ...] = ()
    batch_size: int | None = None
    lr: float | None = None
    recipe: str | None = None  # dorefa.recipes name: every cell's training knobs (``--recipe``)
    progress: bool | None = None  # tqdm over cells; None = only on a terminal
    # Training engine of every cell (``--engine``): not a budget setting, as both train the same
    # model (docs/training.md); a sweep may switch to the faster one between runs.
    engine: str = "torch"

    def __post_init__(self) -> None:
        """Fill the budget the caller left None: from the recipe, else BUDGET_DEFAULTS."""
        from ..recipes import get_recipe

        recipe = get_recipe(self.recipe).defaults if self.recipe else {}
        for key, fallback in BUDGET_DEFAULTS.items():
            if getattr(self, key) is None:
                setattr(self, key, recipe.get(key, fallback))


def cell_done(cfg: SweepConfig, history: list[dict]) -> bool:
    """Whether a cell whose run recorded ``history`` (metrics per epoch) has trained the whole
    schedule: the sweep's epochs, and past them while the recipe's ``until_flat`` asks."""
    from ..optim import training_done
    from ..recipes import get_recipe

    until_flat = get_recipe(cfg.recipe).defaults.get("until_flat") if cfg.recipe else None
    return training_done(cfg.epochs, until_flat, [h["test_acc"] for h in history])


def sweep_seeds(cfg: SweepConfig) -> tuple[int, ...]:
    """The seeds every cell of the grid is trained with."""
    return tuple(cfg.seeds) if cfg.seeds else (cfg.seed,)


def cfg_dict(cfg: SweepConfig) -> dict:
    return dataclasses.asdict(cfg)


def check_settings(
    cfg: SweepConfig, out: Path, lock: FolderLock | None = None, log=None
) -> bool:  # fmt: skip
    """Refuse a model, data spec or --out that cannot work before any cell starts; write
    ``out/sweep.json`` on the first run (returns True then); refuse a later run with other
    settings; ``log`` a warning where a later run reads the same data set from another
    folder (the default one included), which sweep.json then records."""
    from ..data import check_spec
    from ..models import list_models

    if cfg.model not in list_models():
        raise ValueError(f"--model {cfg.model!r} is not one of {', '.join(list_models())}")
    check_spec(cfg.data, cfg.data_dir)  # its folder: once cells are to train (scheduler)
    if not str(cfg.out).strip():  # Path("") is the working folder: its files had been written
        raise ValueError("--out is empty; name the sweep's folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    for folder in filter(None, (cfg.records, *cfg.done_records)):
        if Path(folder).exists() and not Path(folder).is_dir():
            raise ValueError(f"--records {folder} is a file, not a folder; give a folder")
    if lock is not None:  # before sweep.json is read or written
        lock.acquire()
    settings = {k: getattr(cfg, k) for k in SETTING_KEYS}
    path = out / "sweep.json"
    if path.exists():
        old = read_json(path)
        then, now = _places(old), _places(settings)
        diff = {k: (then.get(k), v) for k, v in now.items() if then.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} holds a sweep with other settings ({what}); every cell must "
                "get the same budget: use the same arguments or another --out"
            )
        then, now = (folder_read(s.get("data"), s.get("data_dir")) for s in (old, settings))
        if then != now:  # the same data set (else refused above) from another folder
            if log is not None:
                log(
                    f"warning: this run reads the data in {now}; {path} recorded {then} (the "
                    "same data set, moved?): cells trained from now on read this run's"
                )
            atomic_write_text(path, json.dumps(_stored(settings), indent=2) + "\n")
        return False
    else:  # folders as absolute paths: a later run from another folder means the same ones
        left = [p.name for p in (out / "results.csv", out / "cells") if p.exists()]
        if left:  # cells of unknown settings had counted as done under any budget
            raise ValueError(
                f"{out} holds {' and '.join(left)} but no sweep.json, which says the settings "
                "its cells were trained with: restore it, or move the folder away and choose "
                "another --out"
            )
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(_stored(settings), indent=2) + "\n")
        return True


def _places(settings: dict) -> dict:
    """Settings in one spelling, to compare sweep.json with a later run (``--data-dir d`` and
    ``--data-dir ./d/``, or ``--data NAME:d``, had been refused as another budget): the data
    as ``data.registry.data_identity`` (a data set's folder is not a setting: a sweep run with
    a wrong --data-dir, its cells all done by records, had kept it as one) and a grid file as
    an absolute path."""
    out = _stored(settings)
    out["data"] = data_identity(out.get("data"), out.pop("data_dir", None))
    return out


def _stored(settings: dict) -> dict:
    """Settings as sweep.json keeps them: the data's folder (the spec's or data_dir) and a grid
    file as absolute paths, so that a relative one is not read against a later run's folder."""
    out = dict(settings)
    data, data_dir, grid = (settings.get(k) for k in ("data", "data_dir", "grid"))
    if isinstance(data, str):
        out["data"] = spec_place(data)
    if isinstance(data_dir, str) and data_dir:
        out["data_dir"] = resolved_path(data_dir)
    if isinstance(grid, str) and Path(grid).expanduser().is_file():
        out["grid"] = resolved_path(grid)
    return out
