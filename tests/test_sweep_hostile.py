"""`dorefa sweep` and `dorefa report` against what a hostile review tried: settings that could
not be known, records of one cell twice, an engine switched on resume, the same data spelled
otherwise, damaged records, a missing data folder, grid keys and flags that went unused."""

from __future__ import annotations

import json
import os

import pytest

from dorefa.bits import Bits
from dorefa.cli import main
from dorefa.sweep import CellResult
from dorefa.sweep.claims import Claim, directed
from dorefa.sweep.config import SweepConfig, check_settings
from dorefa.sweep.grid import Cell, _parse_entry
from dorefa.sweep.records import cell_settings, read_record, read_records, settings_diff
from dorefa.sweep.report import check_claim
from dorefa.sweep.scheduler import train_config
from dorefa.sweep.seeds import Ref, Spread
from sweep_rows import make_row

CELL = Cell(Bits.parse("1,2,6"), 0.125)


def _record(cfg: SweepConfig, cell: Cell = CELL, row: CellResult | None = None) -> dict:
    row = row or make_row(1, 2, 6, 0.125, acc=0.5, epochs=1)
    metrics = [{"epoch": 1, "test_acc": 0.5, "train_loss": 1.0}]
    return {"cell": row.cell, "config": cell_settings(cfg, cell), "metrics": metrics,
            "row": row.to_dict()}  # fmt: skip


def test_a_folder_of_cells_without_sweep_json_is_refused(tmp_path):
    """Its cells' settings are unknown: with sweep.json deleted (as its error had advised for
    a damaged one), cells of --subset 256 counted as done under --subset 512."""
    out = tmp_path / "sw"
    (out / "cells").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds cells but no sweep.json"):
        check_settings(SweepConfig(out=str(out)), out)
    check_settings(SweepConfig(out=str(tmp_path / "new")), tmp_path / "new")  # a new folder


def test_records_of_one_cell_with_other_settings_are_refused_together(tmp_path, capsys):
    """`dorefa report --records A --records B` had counted a stale record of a cell beside the
    new one as a second seed, its budget mixed into the mean; copies are one record."""
    for folder, epochs in (("a", 1), ("b", 1), ("c", 2)):
        (tmp_path / folder).mkdir()
        rec = _record(SweepConfig(epochs=epochs))
        (tmp_path / folder / f"{rec['cell']}.json").write_text(json.dumps(rec))
    assert len(read_records([tmp_path / "a", tmp_path / "b"])) == 1
    with pytest.raises(ValueError, match="records of one cell with other settings .epochs: 1"):
        read_records([tmp_path / "a", tmp_path / "c"])
    rec = _record(SweepConfig(epochs=1))
    rec["config"]["data"] = "fashion-mnist:/usr/share/datasets/fashion-mnist"  # older spelling
    (tmp_path / "b" / f"{rec['cell']}.json").write_text(json.dumps(rec))
    assert len(read_records([tmp_path / "a", tmp_path / "b"])) == 1  # the same data
    rec["metrics"] = rec["metrics"] * 3  # the same settings, another run of the cell: the
    (tmp_path / "b" / f"{rec['cell']}.json").write_text(json.dumps(rec))  # first folder's
    capsys.readouterr()
    assert len(got := read_records([tmp_path / "a", tmp_path / "b"])) == 1
    assert len(got[0]["metrics"]) == 1
    assert "another run of the cell of" in capsys.readouterr().err
    rec["metrics"] = rec["metrics"][:1]
    del rec["config"]["recipe"]  # an older record without the key: None, as the sweep reads it
    (tmp_path / "b" / f"{rec['cell']}.json").write_text(json.dumps(rec))
    assert len(read_records([tmp_path / "b", tmp_path / "a"])) == 1


def test_a_cell_resumes_on_the_engine_it_began_on(tmp_path):
    """A sweep interrupted mid-cell and rerun with --engine int failed the cell on every rerun
    (dorefa train refuses another engine on resume); the engine is not a sweep setting. A cell
    without a checkpoint starts on the sweep's engine; one with a checkpoint keeps the engine
    its checkpoint's config records (what train compares)."""
    import torch

    cfg = SweepConfig(engine="int")
    assert train_config(cfg, CELL, tmp_path / "new", None).engine == "int"
    begun = tmp_path / "begun"
    begun.mkdir()
    (begun / "checkpoint.pt").write_bytes(b"not a checkpoint")  # unreadable: train says so
    assert train_config(cfg, CELL, begun, None).engine == "int"
    torch.save({"config": {"engine": "torch"}}, begun / "checkpoint.pt")  # its config only
    assert train_config(cfg, CELL, begun, None).engine == "torch"


def test_records_compare_the_data_set_not_its_spelling(tmp_path):
    """'idx:/a' and a link to /a, or FASHION-MNIST and fashion-mnist:/folder, had been other
    settings (the cell trained again, its record rewritten back and forth); another folder of
    a generic loader is other data."""
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    (tmp_path / "b").mkdir()
    same = [
        ("fashion-mnist", dict(data="FASHION-MNIST")),
        ("fashion-mnist", dict(data="fashion-mnist:/elsewhere")),
        (f"idx:{tmp_path / 'a'}", dict(data=f"idx:{tmp_path / 'link'}")),
        (f"idx:{tmp_path / 'a'}", dict(data="idx", data_dir=str(tmp_path / "a"))),
    ]
    for recorded, now in same:
        rec = _record(SweepConfig())
        rec["config"]["data"] = recorded
        assert settings_diff(rec, SweepConfig(**now), CELL) == {}, (recorded, now)
    rec["config"]["data"] = f"idx:{tmp_path / 'a'}"
    assert "data" in settings_diff(rec, SweepConfig(data=f"idx:{tmp_path / 'b'}"), CELL)


@pytest.mark.parametrize(
    "field, value",
    [("best_test_acc", "0.9"), ("W", None), ("W", "abc"), ("seed", "zero"),
     # values no run writes (a hostile review: averaged into the page, or OverflowError)
     ("best_test_acc", float("inf")), ("best_test_acc", -5.0), ("best_test_acc", 1e308),
     ("W", 0), ("W", 99), ("width", 0.0), ("width", -1.0), ("seed", -3), ("status", "weird"),
     ("metrics", [{"test_acc": float("nan"), "train_loss": 1.0}]), ("metrics", [{"test_acc": 0.5}]),
     ("cell", None), ("cell", "svhn-w8a8g8-x1.0"), ("train_config", [])],
)  # fmt: skip
def test_a_record_with_a_field_of_another_type_is_damaged(tmp_path, field, value):
    """Such records had counted as done, then broken the page (TypeError, KeyError,
    AttributeError) or written a row that made the sweep's results.csv unreadable."""
    rec = _record(SweepConfig())
    if field in ("metrics", "cell", "train_config"):
        rec[field] = value
    else:
        rec["row"][field] = value
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"a damaged cell record \(.*its .*\); delete"):
        read_record(path)


def test_a_page_refuses_records_of_other_models_or_of_one_cell_with_other_budgets(tmp_path):
    """A hostile review: an AlexNet record beside svhn's of the same bits had been averaged in
    as a seed of their cell (a claim's verdict changed)."""
    from dorefa.sweep.page import render_records_page

    def folder(name, recs):
        (tmp_path / name).mkdir()
        for i, rec in enumerate(recs):
            (tmp_path / name / f"{i}.json").write_text(json.dumps(rec))
        return tmp_path / name

    svhn = _record(SweepConfig())
    alex = _record(SweepConfig(model="alexnet"), row=make_row(1, 2, 6, 0.125, acc=0.3, seed=1))
    alex["row"]["cell"] = alex["cell"] = "alexnet-" + alex["cell"]
    longer = _record(SweepConfig(epochs=9), row=make_row(1, 2, 6, 0.125, acc=0.6, seed=2))
    page = tmp_path / "page.md"
    inits = []  # seeds of an -init cell started from other cells: not one cell's seeds
    for seed, source in ((0, "32,32,32"), (1, "8,8,8")):
        cell = Cell(Bits.parse("1,2,6"), 0.125, Bits.parse(source), seed)
        row = make_row(1, 2, 6, 0.125, init=source, acc=0.5, epochs=1, seed=seed)
        inits.append(_record(SweepConfig(), cell, row))
    cases = [
        ([svhn, alex], "have other models .'svhn', 'alexnet'.: report one study's"),
        ([svhn, longer], "are seeds of one cell with other epochs: report them apart"),
        (inits, "are seeds of one cell with other init: report them apart"),
    ]
    for i, (recs, match) in enumerate(cases):
        with pytest.raises(ValueError, match=match):
            render_records_page(folder(f"f{i}", recs), page, tmp_path / "r.csv")
    assert not page.exists() and not (tmp_path / "r.csv").exists()
    good = folder("good", [svhn])  # --csv and --out that would replace other files: refused
    record = good / "0.json"
    before = record.read_text()
    for out, csv, match in [
        (page, record, "is not a .csv file's path"),
        (page, tmp_path / "ckpt.pt", "is not a .csv file's path"),
        (tmp_path / "o" / "page", tmp_path / "o" / "page" / "results.csv", "would be the CSV's"),
    ]:
        with pytest.raises(ValueError, match=match):
            render_records_page(good, out, csv)
    assert record.read_text() == before and not (tmp_path / "o").exists()
    render_records_page(good, page, tmp_path / "r.csv")
    assert page.exists() and (tmp_path / "r.csv").exists()


def test_sweep_refuses_before_any_cell_what_cannot_work(tmp_path, capsys):
    """A missing --data-dir had started every cell (each failing) and been kept as the
    folder's setting; --seed beside --seeds went unused; a grid entry's 'width' beside
    'widths' was dropped, and init: false meant from scratch."""
    out = tmp_path / "sw"
    args = ["sweep", "--grid", "tiny", "--epochs", "1", "--out", str(out)]
    assert main([*args, "--data-dir", str(tmp_path / "none")]) == 2
    assert "none: no such folder (expected the fashion-mnist data)" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--seed", "5", "--seeds", "0,1"]) == 2
    assert "give --seed (one seed) or --seeds (several), not both" in capsys.readouterr().err
    with pytest.raises(ValueError, match="give 'width' or 'widths', not both"):
        _parse_entry({"bits": "1,2,6", "width": 0.125, "widths": [0.25]}, "cell 1")
    for init in (False, 0):
        with pytest.raises(ValueError, match="leave it out to train from scratch"):
            _parse_entry({"bits": "1,2,6", "init": init}, "cell 1")


def test_a_recipe_sweep_takes_the_recipe_model(tmp_path, capsys):
    """--recipe alexnet-imagenet without --model had been refused as 'for --model alexnet, got
    --model svhn' (the default counted as given)."""
    args = ["sweep", "--grid", "tiny", "--recipe", "alexnet-imagenet", "--out", str(tmp_path)]
    assert main([*args, "--data-dir", str(tmp_path / "none")]) == 2  # stops at the data
    err = capsys.readouterr().err
    assert "no such folder" in err and "--model" not in err


def test_a_claim_with_too_few_cells_is_not_judged_beside_a_figure():
    """A page had shown one pair's difference as 'ours' and the verdict 'not measured'."""
    a, b = Ref(1, 2, 6), Ref(32, 32, 32)
    claim = Claim("c", "p", "", ((a, b), (Ref(1, 2, 6, 0.5), Ref(32, 32, 32, 0.5))), "h",
                  lambda ds: None if None in ds else directed(-1)(ds))  # fmt: skip
    stats = {a: Spread.of([0.8]), b: Spread.of([0.9])}
    head = check_claim(claim, stats.get)[0]
    assert "ours: -0.1000" in head and head.endswith("not judged: too few of its cells measured")
    assert check_claim(claim, {}.get)[0].endswith("): not measured")


def test_damaged_sweep_files_are_named_and_another_sweep_is_kept_out(tmp_path, capsys):
    from dorefa.fileio import FolderLock
    from dorefa.sweep.records import read_record

    out = tmp_path / "sw"
    out.mkdir()
    (out / "sweep.json").write_text("[1]")
    args = ["sweep", "--grid", "tiny", "--epochs", "1", "--out", str(out)]
    assert main(args) == 2
    assert f"{out / 'sweep.json'}: holds a JSON list, not the dict" in capsys.readouterr().err
    (out / "sweep.json").write_text("{x")
    assert main(args) == 2
    assert f"{out / 'sweep.json'}: not a JSON file" in capsys.readouterr().err
    (out / "sweep.json").unlink()
    lock = FolderLock(out, "`dorefa sweep`")
    lock.acquire()  # a sweep running into this folder
    try:
        assert main(args) == 2
        assert f"being written by `dorefa sweep` (process {os.getpid()})" in (
            capsys.readouterr().err
        )
    finally:
        lock.release()
    rec = tmp_path / "rec.json"
    for damaged in ({"row": {}, "config": {}}, {"row": [], "config": {}},
                    {"row": {}, "config": {}, "metrics": [{}]}):  # fmt: skip
        rec.write_text(json.dumps(damaged))
        with pytest.raises(ValueError, match=f"{rec}: a damaged cell record"):
            read_record(rec)
    rec.write_bytes(b"\xff\xfe binary")
    with pytest.raises(ValueError, match=f"{rec}: not a cell record"):
        read_record(rec)
    page = tmp_path / "page"
    page.mkdir()
    assert main(["report", "--records", str(tmp_path), "--out", str(page)]) == 2
    assert "is a folder; give the page's file" in capsys.readouterr().err
    assert not list(page.iterdir())  # nothing written before the refusal


def test_a_sweep_done_by_records_needs_no_data(tmp_path, capsys):
    """The study's command on a machine without the data, every cell done by committed
    records: the data folder is checked only where a cell is to train (the first version of
    the check refused it); a refused first run leaves no settings behind."""
    from dorefa.sweep.grid import load_grid, with_seeds
    from dorefa.sweep.records import write_record

    cfg = SweepConfig(epochs=1, data_dir=str(tmp_path / "none"))
    for cell in with_seeds(load_grid("tiny"), (0,)):
        name = cell.name("svhn")
        init = str(cell.init) if cell.init else ""
        b = cell.bits
        row = CellResult(name, "svhn", "fashion-mnist", b.w, b.a, b.g, cell.width, init, "ok",
                         0.5, 0.5, epochs=1)  # fmt: skip
        write_record(tmp_path / "rec", _record(cfg, cell, row))
    out = tmp_path / "sw"
    args = ["sweep", "--grid", "tiny", "--epochs", "1", "--out", str(out)]
    args += ["--data-dir", str(tmp_path / "none"), "--records", str(tmp_path / "rec")]
    assert main(args) == 0
    assert "already done" in capsys.readouterr().out
