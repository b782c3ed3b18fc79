"""Hostile input, tried as a hostile user would: the list of what dorefa promises on bad input.

Every case runs in a process of its own and ends in one of two ways:

- a clear error: exit code 2, no traceback, stderr's last line ``dorefa CMD: error: ...`` (the
  form argparse uses too) naming what was wrong (the flag, the file), and nothing half-written
  left behind (no checkpoint, .dorefa, results.csv or temp file in the case's output folder);
- correct behaviour, as the case says.

The command-line cases run ``python -m dorefa ARGS`` each in a forked copy of one warm
interpreter; the ``.dorefa`` fuzz loop and the runtime API cases run in one subprocess each
(the programs are in tests/hostile_children.py); the kill -9 cases, the training fixture and
one cross-check run ``python -m dorefa`` in a fresh interpreter.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostile_children import resign
from hostile_files import make_checkpoints, make_data

HERE = Path(__file__).resolve()
SRC = str(HERE.parents[1] / "src")
CHILDREN = str(HERE.with_name("hostile_children.py"))
TINY = ["--model", "svhn", "--width", "0.125", "--epochs", "1", "--subset", "64"]
TINY += ["--test-subset", "32", "--batch-size", "32", "--threads", "1"]
ERROR_LINE = re.compile(r"^dorefa(?: [a-z]+)?: error: \S")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class Result:
    rc: int
    out: str
    err: str
    timed_out: bool = False
    seconds: float = 0.0


def dorefa(*args, cwd, timeout: float = 120) -> Result:
    """``python -m dorefa ARGS`` in a fresh interpreter."""
    cmd = [sys.executable, "-m", "dorefa", *map(str, args)]
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


def assert_clean_error(r: Result, *needles: str) -> None:
    """Exit code 2, no traceback, last stderr line 'dorefa CMD: error: ...' holding needles."""
    assert not r.timed_out, f"hung (killed after its timeout); stderr tail: {r.err[-800:]}"
    assert "Traceback" not in r.err, f"traceback instead of a one-line error:\n{r.err[-2500:]}"
    lines = r.err.strip().splitlines()
    assert r.rc == 2 and lines and ERROR_LINE.match(lines[-1]), (
        f"exit code {r.rc}, want 2 and a 'dorefa CMD: error:' line; stderr tail:\n{r.err[-1500:]}"
    )
    assert "[Errno" not in lines[-1], f"a raw OSError, not a clear message: {lines[-1]}"
    for n in needles:
        assert n.lower() in lines[-1].lower(), f"{n!r} not named in: {lines[-1]}"


def assert_ok(r: Result) -> None:
    assert not r.timed_out and r.rc == 0, f"exit code {r.rc}; stderr tail:\n{r.err[-2500:]}"
    assert "Traceback" not in r.err, r.err[-2500:]


def half_written(folder: Path) -> list[str]:
    """Outputs an erroring command must not leave: checkpoints, models, results, temp files."""
    if not folder.exists():
        return []
    bad = ("checkpoint.pt", "results.csv")
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name in bad or p.suffix in (".dorefa", ".tmp")
    ]


def run_cases(cases: list[dict], tmp: Path) -> dict[str, Result]:
    cases_json, results_json = tmp / "cases.json", tmp / "results.json"
    cases_json.write_text(json.dumps(cases))
    cmd = [sys.executable, CHILDREN, "fork-runner", str(cases_json), str(results_json)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"fork runner failed:\n{p.stderr[-3000:]}"
    return {k: Result(**v) for k, v in json.loads(results_json.read_text()).items()}


# ------------------------------------------------------------------ the files a hostile user has
@pytest.fixture(scope="module")
def world(tmp_path_factory, fashion_dir):
    """A tiny real run (fresh ``python -m dorefa train``), its .dorefa, and the hostile files."""
    from dorefa.cli import main
    from dorefa.runtime.format import FORMAT_VERSION

    tmp = tmp_path_factory.mktemp("hostile")
    run = tmp / "run"
    assert_ok(dorefa("train", *TINY, "--out", run, cwd=tmp))
    assert main(["export", str(run / "checkpoint.pt"), "-o", str(run / "model.dorefa")]) == 0
    paths = {"tmp": tmp, "ckpt": run / "checkpoint.pt", "dorefa": run / "model.dorefa"}
    paths["file"] = tmp / "a-file"
    paths["file"].write_text("just a file\n")
    paths["grid"] = tmp / "grid.yaml"
    paths["grid"].write_text("cells:\n  - {bits: '32,32,32', width: 0.125}\n")
    paths["d_bad_sweep"] = tmp / "bad_sweep"
    paths["d_bad_sweep"].mkdir()
    (paths["d_bad_sweep"] / "results.csv").write_bytes(b'\x00\xff garbage,\n"unclosed')
    paths |= make_data(tmp / "data") | make_checkpoints(tmp / "ckpts", paths["ckpt"])
    good = paths["dorefa"].read_bytes()
    paths["m_future"] = tmp / "ckpts" / "future.dorefa"  # a newer version, checksum valid
    future = (FORMAT_VERSION + 1).to_bytes(4, "little")
    paths["m_future"].write_bytes(resign(good[:8] + future + good[12:-32]))
    paths["m_cut"] = tmp / "ckpts" / "cut.dorefa"
    paths["m_cut"].write_bytes(good[: len(good) // 2])
    paths["fifo"] = tmp / "fifo.dorefa"
    os.mkfifo(paths["fifo"])
    return paths


# ------------------------------------------------------------------ the command-line cases
ERR, OK, EITHER = "error", "ok", "error or ok"
T = ["train", *TINY, "--out", "{scratch}/run"]
SW = ["sweep", "--grid", "{grid}", "--out", "{scratch}/sweep", "--epochs", "1", "--subset", "64"]
EV, RUN, O = ["eval", "{ckpt}"], ["run", "{dorefa}"], ["-o", "{scratch}/m.dorefa"]
CASES = {  # id: (argv, expected, words the error line must hold)
    "train-bits-0": ([*T, "--bits", "0,2,6"], ERR, ["--bits"]),
    "train-bits-two-values": ([*T, "--bits", "1,2"], ERR, ["--bits"]),
    "train-bits-words": ([*T, "--bits", "one,two,six"], ERR, ["--bits"]),
    "train-width-0": ([*T, "--width", "0"], ERR, ["--width"]),
    "train-width-negative": ([*T, "--width", "-1"], ERR, ["--width"]),
    "train-width-nan": ([*T, "--width", "nan"], ERR, ["--width"]),
    "train-width-huge": ([*T, "--width", "1e6"], ERR, ["--width"]),
    "train-epochs-negative": ([*T, "--epochs", "-1"], ERR, ["--epochs"]),
    "train-epochs-0": ([*T, "--epochs", "0"], ERR, ["--epochs"]),
    "train-epochs-word": ([*T, "--epochs", "two"], ERR, ["--epochs"]),
    "train-batch-size-0": ([*T, "--batch-size", "0"], ERR, ["--batch-size"]),
    "train-batch-size-negative": ([*T, "--batch-size", "-32"], ERR, ["--batch-size"]),
    "train-batch-size-huge": ([*T, "--batch-size", "1000000000"], OK, []),
    "train-threads-0": ([*T, "--threads", "0"], ERR, ["--threads"]),
    "train-threads-999": ([*T, "--threads", "999"], EITHER, ["--threads"]),
    "train-subset-0": ([*T, "--subset", "0"], ERR, ["--subset"]),
    "train-subset-negative": ([*T, "--subset", "-5"], ERR, ["--subset"]),
    "train-test-subset-negative": ([*T, "--test-subset", "-5"], ERR, ["--test-subset"]),
    "train-lr-negative": ([*T, "--lr", "-1"], ERR, ["--lr"]),
    "train-lr-nan": ([*T, "--lr", "nan"], ERR, ["--lr"]),
    "train-weight-decay-negative": ([*T, "--weight-decay", "-1"], ERR, ["--weight-decay"]),
    "train-workers-negative": ([*T, "--workers", "-1"], ERR, ["--workers"]),
    "train-nproc-0": ([*T, "--nproc", "0"], ERR, ["--nproc"]),
    "train-model-nosuch": ([*T, "--model", "nosuch"], ERR, ["nosuch"]),
    "train-device-nosuch": ([*T, "--device", "nosuch"], ERR, ["nosuch"]),
    "train-data-nosuch": ([*T, "--data", "nosuch"], ERR, ["nosuch"]),
    "train-out-is-a-file": ([*T, "--out", "{file}"], ERR, ["a-file"]),
    "train-init-from-missing": ([*T, "--init-from", "{tmp}/nope.pt"], ERR, ["nope.pt"]),
    # --data
    "data-missing-folder": ([*T, "--data", "idx:{tmp}/no-such-dir"], ERR, ["no-such-dir"]),
    "data-folder-is-a-file": ([*T, "--data", "idx:{file}"], ERR, ["a-file"]),
    "data-empty-folder": ([*T, "--data", "idx:{d_empty}"], ERR, ["d_empty"]),
    "data-dir-empty-folder": ([*T, "--data-dir", "{d_empty}"], ERR, ["d_empty"]),
    "idx-truncated-images": ([*T, "--data", "idx:{d_trunc}"], ERR, ["train-images", "truncated"]),
    "idx-truncated-gzip": ([*T, "--data", "idx:{d_trunc_gz}"], ERR, ["train-images"]),
    "idx-label-count-mismatch": ([*T, "--data", "idx:{d_count}"], ERR, ["count"]),
    "idx-label-out-of-range": ([*T, "--data", "fashion-mnist:{d_label10}"], ERR, ["range"]),
    "idx-wrong-magic": ([*T, "--data", "idx:{d_magic}"], ERR, ["magic"]),
    "idx-zero-images": ([*T, "--data", "idx:{d_zero}"], ERR, ["no images"]),
    "idx-one-class": ([*T, "--data", "idx:{d_one_class}"], ERR, ["class"]),
    "idx-huge-dims": ([*T, "--data", "idx:{d_huge_dims}"], ERR, ["truncated"]),
    "idx-gzip-bomb": ([*T, "--data", "idx:{d_bomb}"], ERR, ["limit"]),
    "imagefolder-missing": ([*T, "--data", "imagefolder:{tmp}/no-imgs"], ERR, ["no-imgs"]),
    "imagefolder-empty": ([*T, "--data", "imagefolder:{d_empty}"], ERR, ["d_empty"]),
    "imagefolder-one-class": ([*T, "--data", "imagefolder:{d_img_one}"], ERR, ["class"]),
    "imagefolder-other-files": ([*T, "--data", "imagefolder:{d_img_ok}"], OK, []),
    "imagefolder-garbage-jpg": ([*T, "--data", "imagefolder:{d_img_garbage}"], ERR, ["bad.jpg"]),
    "imagefolder-truncated-png": ([*T, "--data", "imagefolder:{d_img_cut}"], ERR, ["cut.png"]),
    # checkpoints
    "eval-missing": (["eval", "{tmp}/no-such.pt"], ERR, ["no-such.pt"]),
    "eval-directory": (["eval", "{d_empty}"], ERR, ["d_empty"]),
    "eval-threads-0": ([*EV, "--threads", "0"], ERR, ["--threads"]),
    "eval-batch-size-0": ([*EV, "--batch-size", "0"], ERR, ["--batch-size"]),
    "eval-test-subset-negative": ([*EV, "--test-subset", "-5"], ERR, ["--test-subset"]),
    "eval-data-nosuch": ([*EV, "--data", "nosuch"], ERR, ["nosuch"]),
    "eval-data-3-channels": ([*EV, "--data", "imagefolder:{d_img_ok}"], ERR, ["channels"]),
    "ckpt-truncated": (["eval", "{c_truncated}"], ERR, ["truncated.pt"]),
    "ckpt-empty-file": (["eval", "{c_empty}"], ERR, ["empty.pt"]),
    "ckpt-garbage": (["eval", "{c_garbage}"], ERR, ["garbage.pt"]),
    "ckpt-future-version": (["eval", "{c_future}"], ERR, ["future.pt", "version"]),
    "ckpt-pickle-runs-code": (["eval", "{c_evil}"], ERR, ["evil.pt"]),
    "ckpt-keys-renamed": (["eval", "{c_renamed}"], ERR, ["renamed.pt"]),
    "ckpt-meta-incomplete": (["eval", "{c_no_meta_size}"], ERR, ["no_meta_size.pt"]),
    "ckpt-meta-huge-width": (["eval", "{c_huge_width}"], ERR, ["huge_width.pt"]),
    "ckpt-weights-not-tensors": (["eval", "{c_strings}"], ERR, ["strings.pt"]),
    "ckpt-alexnet-init-svhn": ([*T, "--init-from", "{c_alexnet}"], ERR, ["alexnet.pt"]),
    "ckpt-alexnet-resume-svhn": (
        [*T, "--resume", "--out", "{d_resume_alexnet}"],
        ERR,
        ["checkpoint.pt"],
    ),
    "ckpt-truncated-resume": ([*T, "--resume", "--out", "{d_resume_cut}"], ERR, ["checkpoint.pt"]),
    "ckpt-pickle-as-init": ([*T, "--init-from", "{c_evil}"], ERR, ["evil.pt"]),
    # export
    "export-missing": (["export", "{tmp}/no-such.pt", *O], ERR, []),
    "export-truncated": (["export", "{c_truncated}", *O], ERR, []),
    "export-pickle-runs-code": (["export", "{c_evil}", *O], ERR, []),
    "export-future-version": (["export", "{c_future}", *O], ERR, []),
    "export-meta-huge-width": (["export", "{c_huge_width}", *O], ERR, []),
    "export-meta-wide-alexnet": (["export", "{c_wide_meta}", *O], ERR, ["do not fit"]),
    "export-meta-1e9-classes": (["export", "{c_many_classes}", *O], ERR, ["do not fit"]),
    "export-meta-keep-as-words": (["export", "{c_keep_words}", *O], ERR, ["keep_first_last"]),
    "export-epoch-a-word": (["export", "{c_epoch_word}", *O], ERR, ["epoch_word.pt", "epoch 'x'"]),
    "export-out-is-a-folder": (["export", "{ckpt}", "-o", "{d_empty}"], ERR, ["d_empty"]),
    "export-out-under-a-file": (["export", "{ckpt}", "-o", "{file}/m.dorefa"], ERR, ["a-file"]),
    # run
    "run-missing": (["run", "{tmp}/no-such.dorefa"], ERR, ["no-such.dorefa"]),
    "run-garbage": (["run", "{c_garbage}"], ERR, ["garbage.pt"]),
    "run-compare-empty": ([*RUN, "--compare", ""], ERR, ["--compare is empty"]),
    "run-checkpoint-as-model": (["run", "{ckpt}"], ERR, ["checkpoint.pt"]),
    "run-model-truncated": (["run", "{m_cut}"], ERR, ["cut.dorefa", "truncated"]),
    "run-model-future-version": (["run", "{m_future}"], ERR, ["future.dorefa", "version"]),
    "run-model-is-a-folder": (["run", "{d_empty}"], ERR, ["d_empty"]),
    "run-model-is-a-fifo": (["run", "{fifo}"], ERR, ["fifo.dorefa"]),
    "run-threads-0": ([*RUN, "--threads", "0"], ERR, ["--threads"]),
    "run-batch-size-0": ([*RUN, "--batch-size", "0"], ERR, ["--batch-size"]),
    "run-test-subset-negative": ([*RUN, "--test-subset", "-5"], ERR, ["--test-subset"]),
    "run-data-3-classes": ([*RUN, "--data", "idx:{d_3class}"], ERR, ["classes"]),
    "run-compare-garbage": ([*RUN, "--compare", "{c_garbage}"], ERR, ["garbage"]),
    "run-compare-pickle": ([*RUN, "--compare", "{c_evil}"], ERR, ["evil.pt"]),
    "run-compare-alexnet": ([*RUN, "--compare", "{c_alexnet}"], ERR, ["alexnet"]),
    # sweep, report
    "sweep-grid-missing": ([*SW, "--grid", "{tmp}/nope.yaml"], ERR, ["nope.yaml"]),
    "sweep-epochs-negative": ([*SW, "--epochs", "-1"], ERR, ["--epochs"]),
    "sweep-jobs-0": ([*SW, "--jobs", "0"], ERR, ["--jobs"]),
    "sweep-subset-0": ([*SW, "--subset", "0"], ERR, ["--subset"]),
    "sweep-test-subset-negative": ([*SW, "--test-subset", "-5"], ERR, ["--test-subset"]),
    "sweep-batch-size-0": ([*SW, "--batch-size", "0"], ERR, ["--batch-size"]),
    "sweep-lr-negative": ([*SW, "--lr", "-1"], ERR, ["--lr"]),
    "sweep-model-nosuch": ([*SW, "--model", "nosuch"], ERR, ["nosuch"]),
    "sweep-data-nosuch": ([*SW, "--data", "nosuch"], ERR, ["nosuch"]),
    "sweep-out-is-a-file": ([*SW, "--out", "{file}"], ERR, ["a-file"]),
    "report-missing": (["report", "{tmp}/no-such-sweep"], ERR, ["no-such-sweep"]),
    "report-on-a-file": (["report", "{file}"], ERR, ["a-file"]),
    "report-garbage-csv": (["report", "{d_bad_sweep}"], ERR, ["results.csv"]),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cli(world):
    """Run every CASES entry (forked ``python -m dorefa``); returns (results, inputs changed)."""
    tmp = world["tmp"]
    inputs = [world["ckpt"].parent, tmp / "data", tmp / "ckpts"]
    before = [_snapshot(p) for p in inputs]
    fill = {k: str(v) for k, v in world.items()}
    cases = []
    for cid, (argv, _, _) in CASES.items():
        scratch = tmp / "scratch" / cid
        scratch.mkdir(parents=True)
        args = [a.format(**fill, scratch=scratch) for a in argv]
        cases.append(dict(id=cid, argv=args, cwd=str(scratch), timeout=90))
    results = run_cases(cases, tmp)
    (tmp / "cli-summary.txt").write_text(  # for a human: exit code, seconds, last stderr line
        "".join(
            f"{k}: rc {r.rc} {r.seconds}s {(r.err.strip().splitlines() or [''])[-1][:300]}\n"
            for k, r in results.items()
        )
    )
    changed = [
        f"{folder.name}/{k}"
        for folder, old in zip(inputs, before, strict=True)
        for k, v in _snapshot(folder).items()
        if old.get(k) != v and k != "pwned"
    ]
    return results, changed


@pytest.mark.parametrize("cid", list(CASES))
def test_cli_case(cid, cli, world):
    results, _ = cli
    r, (_, expected, needles) = results[cid], CASES[cid]
    scratch = world["tmp"] / "scratch" / cid
    if expected == ERR or (expected == EITHER and r.rc != 0):
        assert_clean_error(r, *needles)
        assert not half_written(scratch), f"left behind: {half_written(scratch)}"
    else:
        assert_ok(r)
        if cid.startswith(("train", "imagefolder", "data", "idx")):
            from dorefa.checkpoint import load_checkpoint

            assert load_checkpoint(scratch / "run" / "checkpoint.pt")["meta"]["model"] == "svhn"


def test_hostile_files_are_never_modified_nor_executed(cli, world):
    _, changed = cli
    assert not (world["tmp"] / "ckpts" / "pwned").exists(), "a pickle payload ran"
    assert not changed, f"a failing command modified its input: {changed}"


def test_fork_runner_matches_a_fresh_interpreter(cli, world):
    """The warm-fork harness reports what a fresh ``python -m dorefa`` prints."""
    fresh, forked = dorefa("eval", world["c_truncated"], cwd=world["tmp"]), cli[0]["ckpt-truncated"]
    assert (fresh.rc, fresh.err.splitlines()[-1:]) == (forked.rc, forked.err.splitlines()[-1:])


def test_dorefa_file_fuzz(world, tmp_path):
    cmd = [sys.executable, CHILDREN, "fuzz", str(world["dorefa"]), str(tmp_path)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    last = p.stdout.strip().splitlines()[-1:] or [""]
    assert p.returncode == 0 and last[0].startswith("SUMMARY "), (
        f"fuzz process died (exit {p.returncode}) at case {last}; stderr:\n{p.stderr[-2000:]}"
    )
    s = json.loads(last[0][len("SUMMARY ") :])
    assert s["n"] >= 3000 and s["seconds"] < 30, (s["n"], s["seconds"])  # no file loads slowly
    assert not s["failures"], f"{len(s['failures'])} failures:\n" + "\n".join(s["failures"][:15])
    for kind in ("truncated", "flipped"):  # no checksum fix: never loads
        assert set(k for k in s["counts"] if k.startswith(kind + ":")) == {f"{kind}: FormatError"}


@pytest.fixture(scope="module")
def api(world):
    cmd = [sys.executable, CHILDREN, "api", str(world["dorefa"])]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    rows = {r["name"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert p.returncode == 0 and "_meta" in rows, (
        f"runtime API process died (exit {p.returncode}) in case "
        f"{p.stderr.strip().splitlines()[-1:]}:\n{p.stderr[-2000:]}"
    )
    return rows


SAME = ("float32", "float64", "non-contiguous", "strided", "fortran-order", "read-only")
API_CASES = {
    **{k: "same result as float32" for k in SAME},
    "int": "converted (same as float32 of the values) or ValueError",
    "list": "converted or ValueError",
    "wrong-rank-3": "ValueError",
    "wrong-rank-5": "ValueError",
    "wrong-channels": "ValueError",
    "wrong-size": "ValueError",
    "empty-batch": "(0, classes) float32",
    "nan": "ValueError naming NaN / finite",
    "inf": "ValueError naming NaN / finite",
    "threads-0": "ValueError naming threads",
    "load-threads-0": "ValueError naming threads",
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_runtime_api_input(case, api):
    r, classes = api[case], api["_meta"]["classes"]
    assert r["input_untouched"], "the runtime wrote into the caller's array"
    want = API_CASES[case]
    if want.startswith("same") or (want.startswith("converted") and r["outcome"] == "ok"):
        assert r["outcome"] == "ok", r
        assert r["same"] and r["shape"] == [3, classes], r
    elif case == "empty-batch":
        assert r["outcome"] == "ok" and r["shape"] == [0, classes], r
        assert r["dtype"] == "float32", r
    else:
        assert r["outcome"] == "ValueError", f"want {want}, got {r}"
        msg = r["message"].lower()
        if case in ("nan", "inf"):
            assert "nan" in msg or "finite" in msg, msg
        if "threads" in case:
            assert "threads" in msg, msg


# ------------------------------------------------------------------ kill -9 mid-write
def _start(args, cwd: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dorefa", *map(str, args)]
    with open(log, "wb") as f:
        return subprocess.Popen(
            cmd, cwd=cwd, env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> bool:
    """SIGKILL proc's whole process group as soon as ready() holds; False if it exited first."""
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        try:
            hit = ready()
        except OSError:  # a file vanished while we looked
            hit = False
        if hit:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return False


def _temp_of(folder: Path, name: str, old: frozenset = frozenset()) -> bool:
    """A temp file of ``name`` (``.NAME.*``, ``NAME.*.tmp``), not one of ``old`` (a killed
    run's, left behind), is in folder: a write is under way."""
    return folder.is_dir() and any(
        n.startswith(f".{name}") or (n.startswith(name) and n.endswith(".tmp"))
        for n in set(os.listdir(folder)) - old
    )


def _check_run_folder(out: Path) -> int:
    """Every file a resume reads is whole; returns the number of finished epochs."""
    from dorefa.checkpoint import load_checkpoint

    if not (out / "checkpoint.pt").exists():
        return 0
    return int(load_checkpoint(out / "checkpoint.pt")["epoch"]) + 1


def test_kill9_during_training_then_same_command_resumes(world, tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "3", "--subset", "256", "--resume", "--out", out]
    hits = []
    timings = [
        ("mid-save of epoch 1", lambda old: _temp_of(out, "checkpoint.pt", old)),
        ("right after a checkpoint appears", lambda old: (out / "checkpoint.pt").exists()),
        ("mid-save over an existing checkpoint", lambda old: _temp_of(out, "checkpoint.pt", old)),
    ]
    for k, (what, ready) in enumerate(timings):
        old = frozenset(os.listdir(out)) if out.is_dir() else frozenset()  # an earlier kill's
        proc = _start(args, tmp_path, tmp_path / f"log{k}")
        hits.append((what, _kill_when(proc, lambda ready=ready, old=old: ready(old))))
        _check_run_folder(out)
        if k == 1 and (out / "metrics.jsonl").exists():  # as if killed mid-append of a line
            with open(out / "metrics.jsonl", "a") as f:
                f.write('{"epoch": 2, "train_lo')
    print("kill -9 timings hit (else the run ended first):", hits)
    log = tmp_path / "final.log"
    proc = _start(args, tmp_path, log)
    rc = proc.wait(timeout=120)
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text, f"kills {hits}; rerun exit {rc}:\n{text[-2000:]}"
    assert _check_run_folder(out) == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3], rows


def test_kill9_during_export_then_same_command_redoes(world, tmp_path):
    import dorefa.runtime as rt

    target = tmp_path / "m.dorefa"
    args = ["export", world["ckpt"], "-o", target]
    for k in range(2):  # the second time, an older complete file is being replaced
        ready = lambda: _temp_of(tmp_path, target.name)  # noqa: E731
        hit = _kill_when(_start(args, tmp_path, tmp_path / f"l{k}"), ready)
        print("kill -9 mid-write hit:", hit)
        if target.exists():
            assert rt.load(target).num_classes == 10  # whole: the old file or the new one
        if k == 0:
            assert_ok(dorefa(*args, cwd=tmp_path))
    assert target.exists()


def test_kill9_during_sweep_then_same_command_resumes(world, tmp_path):
    from dorefa.checkpoint import load_checkpoint

    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "cells:\n  - {bits: '32,32,32', width: 0.125}\n  - {bits: '1,2,6', width: 0.125}\n"
    )
    out = tmp_path / "sweep"
    args = ["sweep", "--grid", grid, "--out", out, "--epochs", "1", "--subset", "64"]
    args += ["--test-subset", "32", "--batch-size", "32"]
    cell1 = out / "cells" / "svhn-w32a32g32-x0.125"
    # killed once cell 1 is trained but not yet recorded, then once results.csv appears
    timings = [lambda: (cell1 / "checkpoint.pt").exists(), lambda: (out / "results.csv").exists()]
    for k, ready in enumerate(timings):
        hit = _kill_when(_start(args, tmp_path, tmp_path / f"l{k}"), ready)
        print(f"sweep kill -9 timing {k} hit:", hit)
        if (out / "results.csv").exists():
            with open(out / "results.csv", newline="") as f:
                list(csv.DictReader(f))
    log = tmp_path / "final.log"
    rc = _start(args, tmp_path, log).wait(timeout=180)
    assert rc == 0, f"rerun exit {rc}:\n{log.read_text()[-2500:]}"
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["cell"], r["status"]) for r in rows] == [
        ("svhn-w32a32g32-x0.125", "ok"),
        ("svhn-w1a2g6-x0.125", "ok"),
    ], rows
    for r in rows:
        load_checkpoint(out / "cells" / r["cell"] / "checkpoint.pt")
