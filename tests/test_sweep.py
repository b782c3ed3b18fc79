"""Sweeps on real Fashion-MNIST subsets: outputs, kill and resume, dependencies, bad grids."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dorefa.bits import Bits
from dorefa.cli import main
from dorefa.data.registry import folder_read
from dorefa.models import create_model
from dorefa.sweep import (
    RUNTIME_KEYS,
    Cell,
    CellResult,
    SweepConfig,
    layer_costs,
    load_grid,
    parse_seeds,
    read_records,
    read_results,
    run_sweep,
    with_seeds,
    write_results,
)
from dorefa.sweep.page import BEGIN as PAGE_BEGIN
from dorefa.sweep.page import END as PAGE_END
from sweep_rows import make_row

TINY = dict(
    model="svhn",
    data="fashion-mnist",
    epochs=1,
    subset=2000,
    test_subset=500,
    seed=0,
    batch_size=128,
    progress=False,
)
PLOTS = ("acc_vs_g.png", "acc_vs_width.png", "curves.png")

GRID3 = """\
# float, scratch (1,2,6), and (1,2,6) initialised from the float cell
cells:
  - {bits: "32,32,32", widths: [0.25]}
  - {bits: "1,2,6", width: 0.25}
  - {bits: "1,2,6", width: 0.25, init: "32,32,32"}
"""


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_grid_runs_to_completion(tmp_path, fashion_dir, capsys):
    out = tmp_path / "tiny"
    args = [
        "sweep",
        "--grid",
        "tiny",
        "--data-dir",
        fashion_dir,
        "--epochs",
        "1",
        "--subset",
        "2000",
        "--test-subset",
        "500",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr()
    rows = _rows(out)
    assert [r["cell"] for r in rows] == ["svhn-w32a32g32-x0.25", "svhn-w1a2g6-x0.25"]
    for r in rows:
        assert r["status"] == "ok" and r["epochs"] == "1"
        assert 0.0 <= float(r["best_test_acc"]) <= 1.0
        assert float(r["best_test_acc"]) >= float(r["final_test_acc"])
        assert int(r["infer_bitops"]) > 0 and int(r["train_bitops"]) > int(r["infer_bitops"])
        assert (out / "cells" / r["cell"] / "checkpoint.pt").exists()
    assert int(rows[1]["infer_bitops"]) < int(rows[0]["infer_bitops"])
    # bit-runtime columns: empty for the float cell, measured for the exportable (1,2,6) cell
    flt, q = rows
    assert flt["runtime_acc"] == flt["agreement"] == flt["model_bytes"] == ""
    assert not (out / "cells" / flt["cell"] / "model.dorefa").exists()
    assert q["runtime_note"] == "", q["runtime_note"]
    assert 0.0 <= float(q["runtime_acc"]) <= 1.0 and float(q["agreement"]) >= 0.99
    dorefa_file = out / "cells" / q["cell"] / "model.dorefa"
    assert int(q["model_bytes"]) == dorefa_file.stat().st_size > 0
    assert abs(float(q["runtime_acc"]) - float(q["final_test_acc"])) <= 0.01
    md = (out / "results.md").read_text()
    assert "| 1 | 2 | 6 | 0.25 |" in md and "The paper's claims" in md
    assert "popcount kernels" in md and f"min {float(q['agreement']):.4f} over 1 cell" in md

    # a sweep recorded without the runtime columns (an older version) gets them on resume,
    # without retraining; `dorefa report` keeps them
    ckpt_mtime = (out / "cells" / q["cell"] / "checkpoint.pt").stat().st_mtime_ns
    with open(out / "results.csv", newline="") as f:
        old = [{k: v for k, v in r.items() if k not in RUNTIME_KEYS} for r in csv.DictReader(f)]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(old[0]))
        w.writeheader()
        w.writerows(old)
    dorefa_file.unlink()
    assert main(args) == 0, capsys.readouterr()
    again = _rows(out)
    assert again[1]["agreement"] == q["agreement"] and again[1]["runtime_acc"] == q["runtime_acc"]
    assert again[0]["runtime_acc"] == "" and dorefa_file.exists()
    assert (out / "cells" / q["cell"] / "checkpoint.pt").stat().st_mtime_ns == ckpt_mtime
    assert main(["report", str(out)]) == 0
    assert _rows(out) == again and "popcount kernels" in (out / "results.md").read_text()
    for p in PLOTS:
        assert (out / p).stat().st_size > 1000


def _sweep_until_first_record(cmd: list[str], out, timeout: float = 900.0) -> None:
    """Start ``cmd`` (a sweep) in its own process group, wait until results.csv records a cell,
    then kill -9 the whole group (the sweep and the cell it is training)."""
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + timeout
        while not ((out / "results.csv").exists() and _rows(out)):
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended (exit {proc.returncode}) before recording a cell")
            if time.monotonic() > deadline:
                pytest.fail(f"no cell recorded in {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def test_kill_and_resume_skips_finished_cells(tmp_path, fashion_dir):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID3)
    out = tmp_path / "sweep"
    cfg = SweepConfig(grid=str(grid), out=str(out), data_dir=fashion_dir, jobs=1, **TINY)
    cmd = [sys.executable, "-m", "dorefa", "sweep", "--grid", str(grid), "--out", str(out)]
    cmd += ["--data-dir", fashion_dir, "--epochs", "1", "--subset", "2000"]
    cmd += ["--test-subset", "500", "--jobs", "1"]

    _sweep_until_first_record(cmd, out)  # killed (-9) while the second cell trains
    rows = _rows(out)
    assert [(r["cell"], r["status"]) for r in rows] == [("svhn-w32a32g32-x0.25", "ok")]
    first_ckpt = out / "cells" / "svhn-w32a32g32-x0.25" / "checkpoint.pt"
    mtime = first_ckpt.stat().st_mtime_ns

    cfg.jobs = 2  # the two remaining cells run side by side; the init cell's source is done
    rows = run_sweep(cfg, log=lambda m: None)
    assert [r.cell for r in rows] == [
        "svhn-w32a32g32-x0.25",
        "svhn-w1a2g6-x0.25",
        "svhn-w1a2g6-x0.25-init",
    ]
    assert all(r.ok for r in rows), [(r.cell, r.error) for r in rows]
    assert first_ckpt.stat().st_mtime_ns == mtime  # not retrained
    assert "--init-from" in (out / "cells" / "svhn-w1a2g6-x0.25-init" / "train.log").read_text()
    assert read_results(out / "results.csv")[2].init == "32,32,32"

    # everything recorded: a third run trains nothing
    assert len(run_sweep(cfg, log=lambda m: None)) == 3
    assert first_ckpt.stat().st_mtime_ns == mtime

    # the grid edited: a cell dropped keeps its row (it had vanished from results.csv); the
    # init cell's source changed is refused while its folder holds the old run
    grid.write_text(GRID3.rsplit('\n  - {bits: "1,2,6", width: 0.25, init', 1)[0] + "\n")
    assert len(run_sweep(cfg, log=lambda m: None)) == 2
    assert len(read_results(out / "results.csv")) == 3
    grid.write_text(
        GRID3.replace('init: "32,32,32"', 'init: "8,8,8"') + '  - {bits: "8,8,8", width: 0.25}\n'
    )
    with pytest.raises(ValueError, match="was initialised from 32,32,32 but the grid now says"):
        run_sweep(cfg, log=lambda m: None)
    grid.write_text(GRID3)

    settings = json.loads((out / "sweep.json").read_text())
    assert settings["epochs"] == 1 and settings["subset"] == 2000
    cfg.epochs = 2  # another budget in the same folder is refused
    with pytest.raises(ValueError, match="same budget"):
        run_sweep(cfg, log=lambda m: None)

    # dorefa report re-renders the table and plots from the CSV
    for p in PLOTS + ("results.md",):
        (out / p).unlink()
    assert main(["report", str(out)]) == 0
    assert "init" in (out / "results.md").read_text()
    for p in PLOTS:
        assert (out / p).exists()


def test_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "cells:\n  - {bits: '32,32,32', width: 0.125}\n"
        "  - {bits: '1,2,6', width: 0.125, init: '32,32,32'}\n"
    )
    out = tmp_path / "s"
    (tmp_path / "no-such-data").mkdir()  # there, but without IDX files: each cell fails
    rc = main(
        [
            "sweep",
            "--grid",
            str(grid),
            "--data",
            f"idx:{tmp_path / 'no-such-data'}",
            "--epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 1
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "no-such-data" in rows[0]["error"]
    assert "source cell svhn-w32a32g32-x0.125 failed" in rows[1]["error"]
    assert "failed: " in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "text, suffix, match",
    [
        ("cells:\n  - {bits: '1,2,0'}\n", ".yaml", r"cells\[0\]: .*gradient bits"),
        ("cells:\n  - {bits: '1,2,6', widht: 0.5}\n", ".yaml", "unknown key"),
        ("cells: [\n", ".yaml", "cannot parse"),
        ("[[cells]]\nbits = '1,2,6'\nwidths = [0]\n", ".toml", "width must be"),
        ("cells = 3\n", ".toml", "non-empty list 'cells'"),
        ("cells:\n  - {bits: '1,2,6', init: '32,32,32'}\n", ".yaml", "not in the grid"),
        ("cells:\n  - {bits: '1,2,6'}\n  - {bits: 'w1a2g6'}\n", ".yaml", "listed twice"),
        (
            "cells:\n  - {bits: '1,2,6', init: '32,32,32'}\n  - {bits: '1,2,6', init: '8,8,8'}\n"
            "  - {bits: '32,32,32'}\n  - {bits: '8,8,8'}\n",
            ".yaml",
            r"listed with two init sources \(32,32,32 and 8,8,8\)",
        ),
        (
            "cells:\n  - {bits: '1,2,6', init: '8,8,8'}\n  - {bits: '8,8,8', init: '32,32,32'}\n"
            "  - {bits: '32,32,32'}\n",
            ".yaml",
            "itself initialised from 32,32,32: a source is trained from scratch",
        ),
        ("cells: []\n", ".json", "unknown grid format"),
        ("cells:\n  - {bits: '1,2,6'}\ncell:\n  - {bits: '1,1,6'}\n", ".yaml", "top-level"),
        ("cells:\n  - {bits: 1,2,32, widths: [0.5]}\n", ".yaml", "quote the bits"),
    ],
)
def test_bad_grid_file_is_a_clear_error(tmp_path, text, suffix, match, capsys):
    path = tmp_path / f"grid{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_grid(str(path))
    assert main(["sweep", "--grid", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "dorefa sweep: error:" in capsys.readouterr().err


def test_missing_grid_and_report_without_results(tmp_path, capsys):
    assert main(["sweep", "--grid", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "not a built-in grid" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no results yet" in capsys.readouterr().err


def test_toml_grid(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(
        "[[cells]]\nbits = '1,1,32'\nwidths = [0.5, 0.125]\n"
        "[[cells]]\nbits = '1,2,6'\ninit = '1,1,32'\nwidth = 0.5\n"
    )
    assert [c.name("svhn") for c in load_grid(str(path))] == [
        "svhn-w1a1g32-x0.5",
        "svhn-w1a1g32-x0.125",
        "svhn-w1a2g6-x0.5-init",
    ]


def test_paper_grid_cells():
    cells = load_grid("paper")
    names = [c.name("svhn") for c in cells]
    assert len(cells) == 22 and len(set(names)) == 22
    assert "svhn-w1a2g6-x1.0-init" in names and "svhn-w1a2g6-x0.125" in names
    assert Cell(Bits(1, 2, 6), 1.0, Bits(32, 32, 32)).source() == Cell(Bits(32, 32, 32), 1.0)


def test_costs_follow_the_formulas():
    """MACs of SVHN model A on a 1-channel 40x40 image, and the bit-op formulas on them."""
    macs = {  # output elements * in_channels * kh * kw
        "conv0": 36 * 36 * 48 * 1 * 25,
        "conv1": 18 * 18 * 64 * 48 * 9,
        "conv2": 18 * 18 * 64 * 64 * 9,
        "conv3": 7 * 7 * 128 * 64 * 9,
        "conv4": 7 * 7 * 128 * 128 * 9,
        "conv5": 5 * 5 * 128 * 128 * 9,
        "conv6": 512 * 128 * 25,
        "fc": 512 * 10,
    }
    total, float_macs = sum(macs.values()), macs["conv0"] + macs["fc"]
    q = total - float_macs
    for bits in ("32,32,32", "1,2,6", "1,32,32"):
        b = Bits.parse(bits)
        model = create_model("svhn", bits=b, num_classes=10, in_channels=1)
        c = layer_costs(model, 40, 1, b)
        assert c["macs"] == total
        if b.is_float:
            assert c["float_macs"] == total and c["infer_bitops"] == total * 32 * 32
            assert c["train_bitops"] == total * 3 * 32 * 32
        else:
            assert c["float_macs"] == float_macs
            assert c["infer_bitops"] == float_macs * 1024 + q * b.w * b.a
            assert c["train_bitops"] == float_macs * 3072 + q * (b.w * b.a + b.w * b.g + b.a * b.g)
    c = layer_costs(create_model("svhn", bits="1,2,6", in_channels=1), 40, 1, Bits(1, 2, 6))
    n_q = 64 * 48 * 9 + 64 * 64 * 9 + 128 * 64 * 9 + 128 * 128 * 9 * 2 + 512 * 128 * 25
    n_f = 48 * 25 + 48 + 512 * 10 + 10
    assert c["weight_bytes"] == n_q / 8 + n_f * 4


def test_out_of_range_settings_are_refused_before_anything_runs(tmp_path, capsys):
    for flag, value, match in [
        ("--batch-size", "0", "--batch-size must be an integer >= 1, got 0"),
        ("--subset", "0", "--subset must be an integer >= 1, got 0"),
        ("--lr", "-1", "--lr must be a number > 0 and <= 1e+37, got -1.0"),
        ("--epochs", "0", "--epochs must be >= 1, got 0"),
    ]:
        out = tmp_path / flag.strip("-")
        assert main(["sweep", "--grid", "tiny", flag, value, "--out", str(out)]) == 2
        assert match in capsys.readouterr().err
        assert not out.exists()  # no sweep.json, no cell folder
    records = tmp_path / "afile"
    records.write_text("")
    out = tmp_path / "rec"
    assert main(["sweep", "--grid", "tiny", "--records", str(records), "--out", str(out)]) == 2
    assert f"--records {records} is a file, not a folder" in capsys.readouterr().err
    assert not out.exists()
    assert main(["sweep", "--grid", "tiny", "--out", ""]) == 2  # had written into the cwd
    assert "--out is empty; name the sweep's folder" in capsys.readouterr().err


def test_a_folder_spelled_another_way_is_the_same_setting(tmp_path, monkeypatch):
    """sweep.json's folders and grid file are compared by where they are: a second run with
    ``--data-dir ./d/`` where the first gave ``d`` had been refused as another budget. The
    data is compared as data_identity: an idx folder is its data; a data set's folder is not
    a setting (a first run with a wrong --data-dir, its cells done by records, had kept it)."""
    from dorefa.sweep.config import check_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "g.yaml").write_text(GRID3)
    out = tmp_path / "s"
    check_settings(SweepConfig(data="idx", data_dir="d", grid="g.yaml", out=str(out)), out)
    same = SweepConfig(
        data="idx", data_dir=f"{tmp_path}/./d/", grid=str(tmp_path / "g.yaml"), out=str(out)
    )
    check_settings(same, out)
    check_settings(SweepConfig(data="idx:d", grid="g.yaml", out=str(out)), out)
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match=f"data: 'idx:{tmp_path}/d' then, 'idx:{tmp_path}/e'"):
        check_settings(SweepConfig(data="idx", data_dir="e", grid="g.yaml", out=str(out)), out)
    (tmp_path / "elsewhere" / "d").mkdir(parents=True)  # kept as an absolute path: not this d
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="same budget"):
        grid = str(tmp_path / "g.yaml")
        check_settings(SweepConfig(data="idx", data_dir="d", grid=grid, out=str(out)), out)
    named = tmp_path / "named"  # fashion-mnist in one folder, then another: the same data
    said: list[str] = []
    for folder in ("d", "d", "e", "e"):  # the move is said once (it had been silent)
        cfg = SweepConfig(data_dir=str(tmp_path / folder), grid=grid, out=str(named))
        check_settings(cfg, named, log=said.append)
    assert said == [
        f"warning: this run reads the data in {tmp_path}/e; {named}/sweep.json recorded "
        f"{tmp_path}/d (the same data set, moved?): cells trained from now on read this run's"
    ]
    said.clear()  # the default folder, left out or named, is one folder (it had warned)
    default = tmp_path / "default"
    for data_dir in (None, folder_read("fashion-mnist")):
        cfg = SweepConfig(data_dir=data_dir, grid=grid, out=str(default))
        check_settings(cfg, default, log=said.append)
    assert said == []


def test_a_cells_subsets_are_the_images_it_used():
    """A --subset or --test-subset past the split's end takes them all: the row says the whole
    split (its page had said "first 99999 test images"); a config.json of an older run: as
    asked."""
    from dorefa.sweep.scheduler import _first_n

    assert _first_n(99999, 10000) is None
    assert _first_n(500, 500) == 500
    assert _first_n(500, None) == 500
    assert _first_n(None, 10000) is None


def test_result_rows_round_trip_through_the_csv(tmp_path):
    rows = [
        make_row(1, 2, 6, 0.25, epochs=2, macs=10**10, weight_bytes=284.5, runtime_acc=0.75),
        make_row(32, 32, 32, init="", status="failed", error='exit 1: boom, "quoted"\nnext'),
    ]
    path = tmp_path / "results.csv"
    write_results(path, rows)
    assert read_results(path) == rows
    assert read_results(path)[0].to_dict() == rows[0].to_dict()
    assert CellResult.from_dict(rows[0].to_dict() | {"unknown": 1}) == rows[0]
    with open(path, newline="") as f:
        raw = next(csv.DictReader(f))
    assert raw["W"] == "1" and raw["width"] == "0.25" and raw["agreement"] == ""
    assert raw["macs"] == "10000000000" and raw["runtime_note"] == ""
    path.write_text("cell,W\nx,1\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_results(path)
    path.write_text("cell,model,data,W,A,G,width\nx,m,d,one,1,1,1\n")
    with pytest.raises(ValueError, match="line 2: column W: 'one' is not an integer"):
        read_results(path)
    write_results(path, rows)
    path.write_bytes(path.read_bytes()[:-40])  # cut mid-line: its fields past the cut were None
    with pytest.raises(ValueError, match=rf"{path}: line 3: has \d+ fields, the header \d+"):
        read_results(path)


# --- seeds, committed cell records, the page from records (the converged study's machinery) ---


def test_seeds_are_grid_cells_and_the_headline_grid():
    c = Cell(Bits.parse("1,2,6"), 1.0, Bits.parse("32,32,32"))
    assert c.name("svhn") == "svhn-w1a2g6-x1.0-init"  # seed 0: the names of older sweeps
    c1 = with_seeds([c], (0, 1))[1]
    assert c1.name("svhn") == "svhn-w1a2g6-x1.0-init-s1" and c1.source().seed == 1
    assert parse_seeds("0, 1") == (0, 1) and parse_seeds(3) == (3,)
    for bad in ("0,0", "-1", "a", ""):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    head = load_grid("headline")
    assert {(str(c.bits), c.width, str(c.init) if c.init else "") for c in head} == {
        ("32,32,32", 1.0, ""),
        ("1,2,6", 1.0, ""),
        ("1,2,32", 1.0, ""),
        ("1,2,4", 1.0, ""),
        ("1,1,6", 1.0, ""),
        ("1,4,6", 1.0, ""),
        ("8,8,8", 1.0, ""),
        ("1,2,6", 1.0, "32,32,32"),
    }


def test_records_are_written_and_taken_as_done(tmp_path, fashion_dir, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("cells:\n  - {bits: '1,2,6', width: 0.125}\n")
    rec_dir = tmp_path / "docs" / "results" / "cells" / "smoke"
    args = ["sweep", "--grid", str(grid), "--data-dir", fashion_dir, "--epochs", "1"]
    args += ["--subset", "256", "--test-subset", "256", "--seeds", "0,1"]
    args += ["--records", str(rec_dir)]
    out = tmp_path / "a"
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr()
    names = ["svhn-w1a2g6-x0.125", "svhn-w1a2g6-x0.125-s1"]
    assert sorted(p.stem for p in rec_dir.glob("*.json")) == names  # seeds: distinct cells
    recs = {r["cell"]: r for r in read_records(rec_dir)}
    for seed, name in enumerate(names):
        rec = recs[name]
        conf = rec["config"]
        assert conf["seed"] == seed and rec["train_config"]["seed"] == seed
        assert conf["bits"] == "1,2,6" and conf["width"] == 0.125 and conf["epochs"] == 1
        assert conf["subset"] == 256 and conf["lr"] == 1e-3 and conf["batch_size"] == 128
        assert "out" not in rec["train_config"] and str(tmp_path) not in json.dumps(rec)
        assert len(rec["metrics"]) == 1 and {"train_loss", "test_acc"} <= set(rec["metrics"][0])
        assert rec["best_test_acc"] == rec["metrics"][0]["test_acc"] == rec["final_test_acc"]
        assert rec["row"]["runtime_acc"] is not None and rec["row"]["seed"] == seed
    assert recs[names[0]]["metrics"] != recs[names[1]]["metrics"]
    capsys.readouterr()

    # another machine (a new --out): both cells are done by record, nothing trains
    mtimes = {p: p.stat().st_mtime_ns for p in rec_dir.glob("*.json")}
    out_b = tmp_path / "b"
    assert main([*args, "--out", str(out_b)]) == 0
    log = capsys.readouterr().out
    assert "2 already done (2 by record" in log, log
    assert not (out_b / "cells").exists() and len(_rows(out_b)) == 2
    assert {p: p.stat().st_mtime_ns for p in rec_dir.glob("*.json")} == mtimes

    # --records again: another grid's folder whose records count as done, never written to
    other = tmp_path / "docs" / "results" / "cells" / "other"
    args_two = [*args[:-2], "--records", str(other), "--records", str(rec_dir)]
    assert main([*args_two, "--out", str(tmp_path / "c")]) == 0
    log = capsys.readouterr().out
    assert f"2 already done (2 by record in {other}, {rec_dir})" in log, log
    assert not list(other.glob("*.json")) and not (tmp_path / "c" / "cells").exists()
    assert {p: p.stat().st_mtime_ns for p in rec_dir.glob("*.json")} == mtimes

    # a record with other settings is not done: that cell alone trains again, and says why
    path = rec_dir / f"{names[1]}.json"
    rec = json.loads(path.read_text())
    rec["config"]["epochs"] = 5
    path.write_text(json.dumps(rec))
    assert main([*args, "--out", str(out_b)]) == 0
    log = capsys.readouterr().out
    assert f"{names[1]}: the record" in log and "epochs: 5 there, 1 here" in log, log
    assert "1 already done (1 by record" in log
    assert (out_b / "cells" / names[1] / "train.log").exists()
    assert not (out_b / "cells" / names[0]).exists()
    assert json.loads(path.read_text())["config"]["epochs"] == 1  # replaced
    assert (rec_dir / f"{names[0]}.json").stat().st_mtime_ns == mtimes[rec_dir / f"{names[0]}.json"]

    # a record that stops before its schedule's end (here: no epoch recorded) trains again
    path = rec_dir / f"{names[0]}.json"
    rec = json.loads(path.read_text())
    rec["metrics"] = []
    path.write_text(json.dumps(rec))
    assert main([*args, "--out", str(out_b)]) == 0
    log = capsys.readouterr().out
    assert f"{names[0]}: the record {path} stops after 0 epochs" in log, log
    assert (out_b / "cells" / names[0] / "train.log").exists()
    assert len(json.loads(path.read_text())["metrics"]) == 1  # replaced

    # the page re-renders from the records; the prose around the markers stays
    page = tmp_path / "docs" / "results.md"
    page.write_text(f"# Study\n\nprose before\n\n{PAGE_BEGIN}\nold\n{PAGE_END}\n\nprose after\n")
    assert main(["report", "--records", str(rec_dir), "--out", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Study\n\nprose before") and text.endswith("prose after\n")
    assert "\nold\n" not in text and "| 1 | 2 | 6 | 0.125 |  | 2 |" in text
    assert "| 1 | torch cpu |" in text  # epochs, then where the seeds trained
    said = "svhn on fashion-mnist, the first 256 training images, the first 256 test images."
    assert f"Trained and tested: {said}" in text  # it had printed Python's None for "all"
    assert "## The paper's claims, checked" in text and "(paper: " in text
    csv_rows = _rows(tmp_path / "docs" / "results")
    assert sorted((r["cell"], r["seed"]) for r in csv_rows) == [(names[0], "0"), (names[1], "1")]
    for p in PLOTS:
        assert (tmp_path / "docs" / "results" / p).stat().st_size > 1000
        assert f"](results/{p})" in text
    notes = tmp_path / "docs" / "notes.md"  # a page someone wrote, without the markers
    notes.write_text("# my notes\n")
    before = sorted(p.name for p in (tmp_path / "docs").iterdir())
    assert main(["report", "--records", str(rec_dir), "--out", str(notes)]) == 2
    assert "has no generated-section markers" in capsys.readouterr().err
    assert notes.read_text() == "# my notes\n"  # it had been replaced whole
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == before  # no CSV, no plots
    old = tmp_path / "docs" / "old.md"  # a page the previous version wrote: no markers
    old.write_text("Generated by `dorefa report --records x` from 2 cell record(s)\n")
    assert main(["report", "--records", str(rec_dir), "--out", str(old)]) == 0
    assert old.read_text().startswith(PAGE_BEGIN)
    fresh = tmp_path / "docs" / "fresh.md"
    assert main(["report", "--records", str(rec_dir), "--out", str(fresh)]) == 0
    assert fresh.read_text().startswith(PAGE_BEGIN)  # so the next report splices
    assert main(["report", "--records", str(rec_dir), "--out", str(fresh)]) == 0


def test_a_recipe_sets_every_cells_knobs_and_is_part_of_the_budget(tmp_path):
    from dorefa.sweep.records import cell_settings, settings_diff
    from dorefa.sweep.scheduler import train_command, train_config
    from dorefa.train_flags import config_from_argv

    cell = Cell(Bits(1, 2, 6), 0.25, seed=1)
    cfg = SweepConfig(recipe="svhn-fashion-mnist", epochs=3, out=str(tmp_path))
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (3, 128, 1e-3)  # explicit, then the recipe's
    tc = train_config(cfg, cell, tmp_path / "c", None)
    assert tc.recipe == "svhn-fashion-mnist" and tc.epochs == 3 and tc.seed == 1
    assert tc.lr_milestones == ((6, 0.2), (9, 0.2), (12, 0.2)) and tc.until_flat == (0.003, 4)
    assert tc.weight_decay_on == "float"
    assert tc.augment == "flip" and tc.bits == Bits(1, 2, 6) and tc.width == 0.25
    argv = train_command(cfg, cell, tmp_path / "c", None)[4:]
    assert config_from_argv(argv) == tc  # the child process trains exactly this
    assert SweepConfig(recipe="svhn-fashion-mnist").epochs == 12
    assert SweepConfig().epochs == 2 and SweepConfig().lr == 1e-3  # no recipe: the old budget
    # a record trained without the recipe does not count as done for a sweep with it
    old = {"config": cell_settings(SweepConfig(epochs=3), cell)}
    assert settings_diff(old, cfg, cell) == {"recipe": (None, "svhn-fashion-mnist")}
    assert settings_diff({"config": cell_settings(cfg, cell)}, cfg, cell) == {}


def test_the_sweeps_engine_trains_every_cell_and_is_not_part_of_the_budget(tmp_path):
    """``dorefa sweep --engine int`` passes the engine to every cell's training; a record
    trained by the torch engine still counts as done (both train the same model)."""
    from dorefa.sweep.records import cell_settings, settings_diff
    from dorefa.sweep.scheduler import train_command, train_config
    from dorefa.train_flags import config_from_argv

    cell = Cell(Bits(1, 2, 6), 0.25, seed=0)
    cfg = SweepConfig(recipe="svhn-fashion-mnist", out=str(tmp_path), engine="int")
    tc = train_config(cfg, cell, tmp_path / "c", None)
    assert tc.engine == "int"
    assert config_from_argv(train_command(cfg, cell, tmp_path / "c", None)[4:]) == tc
    assert train_config(SweepConfig(out=str(tmp_path)), cell, tmp_path / "c", None).engine == (
        "torch"
    )
    torch_record = {"config": cell_settings(SweepConfig(recipe="svhn-fashion-mnist"), cell)}
    assert settings_diff(torch_record, cfg, cell) == {}


def test_a_killed_cell_says_so():
    from dorefa.sweep.scheduler import _exit_text

    assert _exit_text(-9) == "killed by SIGKILL" and _exit_text(2) == "exit 2"
