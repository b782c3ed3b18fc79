"""Grids of cells: what a sweep trains (``Cell``), the paper's grid, and grid files.

A grid is ``{"cells": [entry, ...]}`` where an entry is ``{bits: "W,A,G", widths: [...]}`` (or a
single ``width``) and optionally ``init: "W,A,G"``, the bits of the cell of the same width whose
trained checkpoint initialises this one. ``paper`` is the SVHN bitwidth table of the paper
(docs/method.md section 4) with the SVHN model family's widths (1 = model A, 0.5, 0.25, 0.125 =
models B, C, D); ``headline`` is the cells the converged study reports with seeds (float, (1,2,6),
(1,2,32), (1,2,4), (1,1,6), (1,4,6), (8,8,8) and (1,2,6) from float, model A); ``tiny`` is two
cells for a smoke run. Seeds are part of the grid (:func:`with_seeds`): a cell is (bits, width,
init, seed), and its folder name is ``<model>-w1a2g6-x1.0[-init][-s<seed>]``, the seed suffix only
for a seed other than 0 (so the names of sweeps run before seeds were a grid axis stay valid).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..bits import Bits

PAPER_BITS = (
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
PAPER_GRID = {
    "cells": [{"bits": b, "widths": [1.0]} for b in PAPER_BITS]
    + [
        {"bits": "32,32,32", "widths": [0.5, 0.25, 0.125]},
        {"bits": "1,2,6", "widths": [0.5, 0.25, 0.125]},
        {"bits": "1,2,6", "widths": [1.0], "init": "32,32,32"},
    ]
}
HEADLINE_BITS = ("32,32,32", "1,2,6", "1,2,32", "1,2,4", "1,1,6", "1,4,6", "8,8,8")
HEADLINE_GRID = {
    "cells": [{"bits": b, "widths": [1.0]} for b in HEADLINE_BITS]
    + [{"bits": "1,2,6", "widths": [1.0], "init": "32,32,32"}]
}
TINY_GRID = {"cells": [{"bits": "32,32,32", "widths": [0.25]}, {"bits": "1,2,6", "widths": [0.25]}]}
BUILTIN_GRIDS = {"paper": PAPER_GRID, "headline": HEADLINE_GRID, "tiny": TINY_GRID}

GRID_KEYS = {"bits", "width", "widths", "init"}


@dataclass(frozen=True)
class Cell:
    """One training run of a grid."""

    bits: Bits
    width: float = 1.0
    init: Bits | None = None  # bits of the cell (same width) whose checkpoint initialises this one
    seed: int = 0  # the training seed (data order, initialisation)

    def name(self, model: str) -> str:
        """The cell's folder name, e.g. ``svhn-w1a2g6-x1.0-init`` (seed 0) or
        ``svhn-w1a2g6-x1.0-init-s1`` (seed 1)."""
        suffix = ("-init" if self.init else "") + (f"-s{self.seed}" if self.seed else "")
        return f"{model}-{self.bits.tag}-x{self.width}" + suffix

    def source(self) -> Cell | None:
        """The cell whose checkpoint initialises this one (same width and seed; None: trained
        from scratch)."""
        return Cell(self.init, self.width, seed=self.seed) if self.init else None


def parse_seeds(text: str | int | list) -> tuple[int, ...]:
    """``"0,1"`` -> (0, 1); ValueError for anything but distinct integers >= 0."""
    items = text if isinstance(text, list | tuple) else str(text).split(",")
    try:
        seeds = tuple(int(str(s).strip()) for s in items)
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give integers separated by commas, e.g. 0,1") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give distinct integers >= 0, e.g. 0,1")
    return seeds


def with_seeds(cells: list[Cell], seeds: tuple[int, ...]) -> list[Cell]:
    """Every cell once per seed, seed by seed (the whole grid at seed 0 first, then seed 1...)."""
    return [dataclasses.replace(c, seed=s) for s in seeds for c in cells]


def _parse_entry(entry: object, at: str) -> list[Cell]:
    """The cells of one grid entry (one per width)."""
    if not isinstance(entry, dict) or "bits" not in entry:
        raise ValueError(f"{at}: each cell needs 'bits' (\"W,A,G\"), got {entry!r}")
    unknown = set(entry) - GRID_KEYS
    if unknown and all(isinstance(k, int) for k in unknown):  # YAML read {bits: 1,2,6} so
        raise ValueError(f'{at}: quote the bits, e.g. bits: "1,2,6" (got {entry!r})')
    if unknown:
        raise ValueError(f"{at}: unknown key(s) {sorted(unknown)}; allowed: {sorted(GRID_KEYS)}")
    if "width" in entry and "widths" in entry:  # 'width' had been dropped, unsaid
        raise ValueError(f"{at}: give 'width' or 'widths', not both (got {entry!r})")
    init = entry.get("init")
    if init is not None and not isinstance(init, str):  # false or 0 had meant "from scratch"
        raise ValueError(f'{at}: init names the source cell\'s bits, e.g. init: "32,32,32"; '
                         f"leave it out to train from scratch (got {init!r})")  # fmt: skip
    try:
        bits = Bits.parse(entry["bits"])
        init = Bits.parse(init) if init else None
    except ValueError as exc:
        raise ValueError(f"{at}: {exc}") from None
    widths = entry.get("widths", [entry.get("width", 1.0)])
    if not isinstance(widths, list) or not widths:
        raise ValueError(f"{at}: 'widths' must be a non-empty list of numbers, got {widths!r}")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 4:
            raise ValueError(f"{at}: width must be a number in (0, 4], got {w!r}")
    return [Cell(bits, float(w), init) for w in widths]


def _check_cells(cells: list[Cell], where: str) -> None:
    """No cell twice; every ``init`` source is in the grid."""
    names = [c.name("m") for c in cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    for name in dup:
        inits = sorted({str(c.init) for c in cells if c.name("m") == name and c.init})
        if len(inits) > 1:  # one folder per (bits, width, seed) started from a checkpoint
            raise ValueError(
                f"{where}: cell {name[2:].removesuffix('-init')} is listed with two init "
                f"sources ({' and '.join(inits)}); a grid holds one of them"
            )
    if dup:
        raise ValueError(f"{where}: cells listed twice: {', '.join(d[2:] for d in dup)}")
    for c in cells:
        if c.init and c.source() not in cells:
            started = [d for d in cells if d.bits == c.init and d.width == c.width and d.init]
            why = (
                f"which is itself initialised from {started[0].init}: a source is trained "
                "from scratch"
                if started
                else "which is not in the grid; add it"
            )
            raise ValueError(
                f"{where}: cell {c.bits} width {c.width} is initialised from "
                f"{c.init} width {c.width}, {why}"
            )


def parse_grid(obj: object, where: str) -> list[Cell]:
    """The cells of a grid object (a built-in grid, or a parsed grid file named ``where``)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("cells"), list) or not obj["cells"]:
        raise ValueError(
            f"{where}: a grid needs a non-empty list 'cells', e.g. "
            "cells: [{bits: '1,2,6', widths: [1.0, 0.5]}, "
            "{bits: '1,2,6', width: 1.0, init: '32,32,32'}]"
        )
    if set(obj) != {"cells"}:  # a misspelled 'cell:' list had been skipped without a word
        others = sorted(map(str, set(obj) - {"cells"}))
        raise ValueError(f"{where}: unknown top-level key(s) {others}; a grid holds 'cells' only")
    cells: list[Cell] = []
    for i, entry in enumerate(obj["cells"]):
        cells += _parse_entry(entry, f"{where}: cells[{i}]")
    _check_cells(cells, where)
    return cells


def _read_grid_file(spec: str, path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--grid {spec}: not a text file; give a .yaml or .toml grid") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError
        raise ValueError(f"--grid {spec}: cannot parse: {str(exc).splitlines()[0]}") from None
    raise ValueError(f"--grid {spec}: unknown grid format {suffix!r}; use .yaml or .toml")


def load_grid(spec: str) -> list[Cell]:
    """A built-in grid by name (``paper``, ``headline``, ``tiny``) or a ``.yaml``/``.yml``/
    ``.toml`` file."""
    if spec in BUILTIN_GRIDS:
        return parse_grid(BUILTIN_GRIDS[spec], f"built-in grid {spec!r}")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"--grid {spec}: no such file and not a built-in grid ({', '.join(BUILTIN_GRIDS)})"
        )
    return parse_grid(_read_grid_file(spec, path), str(path))
