"""Training on real Fashion-MNIST subsets: outputs, learning, resume, init, eval, bad files."""

import dataclasses
import json
import os
import pickle

import pytest
import torch

from dorefa.checkpoint import CheckpointError, load_checkpoint
from dorefa.cli import main
from dorefa.optim import training_done
from dorefa.train import TrainConfig, train

SMALL = dict(
    model="svhn",
    data="fashion-mnist",
    width=0.5,
    batch_size=64,
    subset=1024,
    test_subset=500,
    threads=1,
    progress=False,
)


class Killed(Exception):
    pass


def _kill_after(n_epochs):
    seen = []

    def log(msg):
        if msg.startswith("epoch"):
            seen.append(msg)
            if len(seen) == n_epochs:
                raise Killed(msg)

    return log


@pytest.fixture(scope="module")
def run_two_epochs(tmp_path_factory, fashion_dir):
    out = tmp_path_factory.mktemp("runs") / "straight"
    result = train(TrainConfig(bits="1,2,6", epochs=2, out=str(out), **SMALL), log=lambda m: None)
    return out, result


def test_run_folder_contents(run_two_epochs):
    out, result = run_two_epochs
    assert {"metrics.jsonl", "config.json", "checkpoint.pt", "curves.png"} <= set(os.listdir(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "train_loss", "train_acc", "test_acc", "seconds", "images_per_s"} <= set(r)
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["bits"] == "1,2,6" and config["bits_tag"] == "w1a2g6"
    assert rows[1]["lr"] == pytest.approx(5e-4)  # halved at 50% of the epochs
    # it learns (10 classes, chance 0.1): 32 steps of a 1-bit width-0.5 model (0.45 seen)
    assert result["test_acc"] > 0.3
    assert rows[1]["train_loss"] < rows[0]["train_loss"]


def test_resume_gives_identical_weights(run_two_epochs, tmp_path):
    straight, _ = run_two_epochs
    out = tmp_path / "killed"
    cfg = TrainConfig(bits="1,2,6", epochs=2, out=str(out), **SMALL)
    with pytest.raises(Killed):
        train(cfg, log=_kill_after(1))  # dies right after epoch 1 is saved
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 0
    with pytest.raises(ValueError, match="--resume"):
        train(cfg, log=lambda m: None)  # refuses to overwrite a run
    cfg.resume = True
    train(cfg, log=lambda m: None)
    a = load_checkpoint(straight / "checkpoint.pt")["model"]
    b = load_checkpoint(out / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_training_done_follows_epochs_then_the_until_flat_rule():
    assert not training_done(3, None, [0.5, 0.6]) and training_done(3, None, [0.5, 0.6, 0.7])
    flat = (0.003, 2)  # continue while the last two epochs differ by > 0.3 points, <= 2 more
    assert training_done(2, flat, [0.70, 0.702])  # flat at the scheduled end: no extension
    assert not training_done(2, flat, [0.70, 0.71]) and not training_done(1, flat, [0.7])
    assert training_done(2, flat, [0.70, 0.71, 0.7125])  # flat after one more
    assert not training_done(2, flat, [0.70, 0.71, 0.72])
    assert training_done(2, flat, [0.70, 0.71, 0.72, 0.73])  # at most 2 more
    assert training_done(2, flat, [0.70, 0.71, float("nan")])  # unknown: no further epoch


def test_until_flat_extends_a_run_and_resume_gives_identical_weights(tmp_path, fashion_dir):
    """epochs=1 with until_flat: a second epoch always (one accuracy has nothing to compare
    with), then more while the accuracy moves (tolerance -1: always, up to 2 more); the
    extension's lr follows the milestones; a run killed inside the extension resumes to the
    same weights as an uninterrupted one."""
    knobs = dict(bits="1,2,6", epochs=1, lr_milestones=((1, 0.5),), **SMALL)
    out = tmp_path / "straight"
    train(TrainConfig(out=str(out), until_flat=(-1.0, 2), **knobs), log=lambda m: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 5e-4, 5e-4])
    killed = TrainConfig(out=str(tmp_path / "killed"), until_flat=(-1.0, 2), **knobs)
    with pytest.raises(Killed):
        train(killed, log=_kill_after(2))
    killed.resume = True
    train(killed, log=lambda m: None)
    a = load_checkpoint(out / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    short = tmp_path / "short"  # any change within 100 points is flat: one extra epoch
    train(TrainConfig(out=str(short), until_flat=(1.0, 2), **knobs), log=lambda m: None)
    assert len((short / "metrics.jsonl").read_text().splitlines()) == 2


def test_init_from_float_checkpoint(tmp_path, fashion_dir):
    float_run = tmp_path / "float"
    train(TrainConfig(bits="32,32,32", epochs=1, out=str(float_run), **SMALL), log=lambda m: None)
    msgs = []
    cfg = TrainConfig(
        bits="1,2,6",
        epochs=1,
        out=str(tmp_path / "q"),
        init_from=str(float_run / "checkpoint.pt"),
        **SMALL,
    )
    train(cfg, log=msgs.append)
    assert any("initialised weights from" in m for m in msgs)
    # resumed: the run's weights are its checkpoint's; another --init-from is said to go unused
    # and config.json keeps the source the run started from (it had recorded the unused one)
    config = tmp_path / "q" / "config.json"
    again = dataclasses.replace(cfg, resume=True, epochs=2)
    msgs.clear()
    train(again, log=msgs.append)  # the same source: nothing said
    assert not [m for m in msgs if "is not used" in m]
    train(dataclasses.replace(again, epochs=3, init_from=None), log=lambda m: None)  # plain
    assert json.loads(config.read_text())["init_from"] == cfg.init_from  # it had become None
    other = str(tmp_path / "q" / "checkpoint.pt")
    msgs.clear()
    train(dataclasses.replace(again, epochs=4, init_from=other), log=msgs.append)
    assert [m for m in msgs if f"--init-from {other} is not used" in m], msgs
    assert json.loads(config.read_text())["init_from"] == cfg.init_from
    assert json.loads(config.read_text())["test_images"] == 500  # after --test-subset
    assert json.loads(config.read_text())["train_images"] == 1024  # after --subset
    wrong = TrainConfig(
        bits="1,2,6",
        epochs=1,
        out=str(tmp_path / "q2"),
        init_from=str(float_run / "checkpoint.pt"),
        **(SMALL | {"width": 0.25}),
    )
    with pytest.raises(CheckpointError, match="do not fit"):
        train(wrong, log=lambda m: None)


def test_eval_cli_prints_accuracy_and_writes_nothing(run_two_epochs, capsys):
    out, result = run_two_epochs
    before = sorted(os.listdir(out)), (out / "checkpoint.pt").stat().st_mtime
    assert main(["eval", str(out / "checkpoint.pt"), "--test-subset", "500", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert f"accuracy {result['test_acc']:.4f}" in text
    assert (sorted(os.listdir(out)), (out / "checkpoint.pt").stat().st_mtime) == before


def test_corrupt_truncated_and_hostile_checkpoints(run_two_epochs, tmp_path, capsys):
    out, _ = run_two_epochs
    good = (out / "checkpoint.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = tmp_path / "hostile.pt"
    with open(hostile, "wb") as f:
        pickle.dump({"format": "dorefa-checkpoint", "x": Evil()}, f)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    for path in (truncated, garbage, hostile, other, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError, match=str(path.name)):
            load_checkpoint(path)
        assert main(["eval", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and path.name in err
    assert not marker.exists()


def test_cli_argument_errors(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--bits", "1,2,9"])
    assert "1..8 or 32" in capsys.readouterr().err
    assert main(["train", "--model", "nope", "--epochs", "1", "--out", "/tmp/_x_"]) == 2
    assert "unknown model" in capsys.readouterr().err


# ---------------------------------------------------------------- the flag table


def test_flag_table_defines_the_cli_and_the_config_defaults():
    import argparse

    from dorefa.bits import Bits
    from dorefa.cli import build_parser
    from dorefa.train_flags import FLAGS, add_train_args, config_from_argv

    p = argparse.ArgumentParser()
    add_train_args(p)
    assert {s for a in p._actions for s in a.option_strings} == {"-h", "--help"} | {
        f.name for f in FLAGS
    }
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    assert [a.option_strings for a in train_parser._actions] == [
        a.option_strings for a in p._actions
    ]
    default = TrainConfig()
    for flag in FLAGS:
        if flag.field is not None and flag.field != "out":
            assert getattr(default, flag.field) == flag.field_default(), flag.name
    assert default.out == "runs/svhn-w1a2g6"  # --out's default, resolved
    cfg = config_from_argv([])
    assert cfg == default and isinstance(cfg.bits, Bits)  # parsed once, by argparse
    assert config_from_argv(["--bits", "w1a4g32"]).bits == Bits(1, 4, 32)


@pytest.mark.parametrize(
    "fields",
    [
        dict(),
        dict(bits="32,32,32", width=0.125, epochs=3, threads=1, out="/tmp/x", resume=True),
        dict(keep_first_last=False, amp="bf16", channels_last=True, augment="none", lr=3e-4),
        dict(init_from="a b/c.pt", data="idx:/d", data_dir="/dd", subset=7, test_subset=9),
        dict(model="alexnet", recipe="alexnet-imagenet", epochs=1),
    ],
)
def test_config_to_argv_rebuilds_the_config(fields):
    from dorefa.recipes import apply_recipe
    from dorefa.train_flags import config_from_argv, config_to_argv

    cfg = TrainConfig(**apply_recipe(fields, set(fields), fields.get("recipe")))
    argv = config_to_argv(cfg)
    assert all(isinstance(a, str) for a in argv)
    assert config_from_argv(argv) == cfg
    if not fields:
        assert argv == ["--out", "runs/svhn-w1a2g6"]


def test_config_to_argv_refuses_what_no_flag_expresses():
    from dorefa.train_flags import config_to_argv

    with pytest.raises(ValueError, match="adam_eps"):
        config_to_argv(TrainConfig(adam_eps=1e-5))


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--width", "0"),
        ("--width", "1e6"),
        ("--width", "nan"),
        ("--epochs", "-1"),
        ("--epochs", "two"),
        ("--batch-size", "0"),
        ("--subset", "0"),
        ("--test-subset", "-5"),
        ("--lr", "0"),
        ("--lr", "inf"),
        ("--weight-decay", "-1"),
        ("--threads", "0"),
        ("--seed", "-1"),
        ("--workers", "-1"),
        ("--nproc", "0"),
        ("--bits", "0,2,6"),
        ("--bits", "1,2"),
    ],
)
def test_cli_rejects_nonsense_flags_in_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", flag, value, "--out", "/nonexistent/never-written"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"dorefa train: error: argument {flag}: ") and value in last


def test_python_configs_are_checked_like_flags(tmp_path, capsys):
    for fields, needle in (
        (dict(epochs=0), "--epochs must be an integer >= 1, got 0"),
        (dict(lr=-1.0), "--lr must be a number > 0"),
        (dict(optimizer="rmsprop"), "--optimizer must be one of adam, sgd"),
        (dict(device="nosuch"), "--device must be auto, cpu, cuda or cuda:N"),
        (dict(batch_size=1), "BatchNorm needs 2 or more"),
        (dict(subset=1, batch_size=2), "BatchNorm needs 2 or more"),
    ):
        cfg = TrainConfig(out=str(tmp_path / "never"), **(SMALL | fields))
        with pytest.raises(ValueError, match=needle):
            train(cfg, log=lambda m: None)
    assert not (tmp_path / "never").exists()
    assert main(["train", "--device", "nosuch", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("dorefa train: error: --device")


# ---------------------------------------------------------------- CPU-dependent defaults


def test_thread_default_follows_the_cpus(monkeypatch):
    from dorefa import cpuinfo

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(cpuinfo, "usable_cpus", lambda: [0, 1])
    n, why = cpuinfo.pick_threads(None)
    assert n == 1 and "0.57x" in why  # 2 vCPUs: one thread
    monkeypatch.setattr(cpuinfo, "usable_cpus", lambda: list(range(8)))
    monkeypatch.setattr(cpuinfo, "physical_cores", lambda cpus: 4)
    assert cpuinfo.pick_threads(None)[0] == 4  # one per physical core
    monkeypatch.setattr(cpuinfo, "physical_cores", lambda cpus: None)
    assert cpuinfo.pick_threads(None)[0] == 4  # topology unknown: CPUs / 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cpuinfo.pick_threads(None)[0] == 1  # 2 CPUs per process
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpuinfo.pick_threads(None) == (3, "torch threads: 3 (OMP_NUM_THREADS=3)")
    assert cpuinfo.pick_threads(2) == (2, "torch threads: 2 (--threads)")
    n, why = cpuinfo.pick_threads(999)
    assert n == 8 and why.startswith("warning: --threads 999 is more than the 8 CPUs")


def test_physical_cores_from_sysfs(tmp_path):
    from dorefa.cpuinfo import physical_cores

    for cpu, core in enumerate([0, 1, 0, 1]):  # 4 CPUs, 2 cores with 2 hyperthreads each
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_id").write_text(f"{core}\n")
        (topo / "physical_package_id").write_text("0\n")
    assert physical_cores([0, 1, 2, 3], tmp_path) == 2
    assert physical_cores([0, 2], tmp_path) == 1
    assert physical_cores([9], tmp_path) is None


def test_bf16_detection_and_warning(tmp_path):
    from dorefa.cpuinfo import bf16_warning, native_bf16

    cases = {
        "flags\t\t: fpu sse2 avx2 fma\n": False,  # AMD Zen 2
        "flags\t\t: fpu avx2 avx512f avx512_bf16\n": True,
        "flags\t\t: fpu avx2 amx_bf16 amx_tile\n": True,
        "Features\t: fp asimd bf16 i8mm\n": True,  # Arm
    }
    for i, (text, expected) in enumerate(cases.items()):
        (tmp_path / f"c{i}").write_text("processor\t: 0\n" + text)
        assert native_bf16(tmp_path / f"c{i}") is expected
    assert native_bf16(tmp_path / "missing") is None
    assert bf16_warning(True) is None
    for native in (False, None):
        line = bf16_warning(native)
        assert line.startswith("warning: --amp bf16") and "21x slower" in line
        assert "avx512_bf16" in line and "\n" not in line


def test_bf16_on_a_cpu_without_it_warns_in_the_log(tmp_path, monkeypatch, fashion_dir):
    import dorefa.train

    monkeypatch.setattr(dorefa.train, "native_bf16", lambda: False)
    msgs = []
    cfg = TrainConfig(
        amp="bf16", epochs=1, out=str(tmp_path / "run"), **(SMALL | dict(subset=128, width=0.125))
    )
    train(cfg, log=msgs.append)
    assert msgs[0] == "torch threads: 1 (--threads)"
    assert any(m.startswith("warning: --amp bf16 on a CPU without native bf16") for m in msgs)


# ---------------------------------------------------------------- checkpoint and run folder


def test_checkpoint_keys_and_restore_errors(run_two_epochs, tmp_path):
    from dorefa import checkpoint
    from dorefa.checkpoint import KEYS, VERSION, restore

    out, _ = run_two_epochs
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert (
        tuple(ckpt) == (*KEYS, checkpoint.DIGEST)
        and ckpt["version"] == VERSION
        and ckpt["epoch"] == 1
    )
    assert ckpt["config"] == json.loads((out / "config.json").read_text())
    model = checkpoint.model_from_checkpoint(ckpt).train()
    opt = torch.optim.Adam(model.parameters())
    assert restore(ckpt, "c.pt", meta=ckpt["meta"], model=model, optimizer=opt) == (
        2,
        ckpt["best_acc"],
    )
    changed = r"was made with --width 0.5; this run has --width 1.0; use the same arguments"
    with pytest.raises(CheckpointError, match=changed):  # the setting that differs, alone
        restore(ckpt, "c.pt", meta=ckpt["meta"] | {"width": 1.0}, model=model, optimizer=opt)
    moved = ckpt["meta"] | {"data_dir": "/elsewhere", "classes": ["a", "b"]}  # an older ckpt
    assert restore(ckpt, "c.pt", meta=moved, model=model, optimizer=opt)[0] == 2  # has neither
    no_optimizer = {k: v for k, v in ckpt.items() if k != "optimizer"}
    with pytest.raises(CheckpointError, match="optimizer"):
        restore(no_optimizer, "c.pt", meta=ckpt["meta"], model=model, optimizer=opt)
    checkpoint.save_atomic({"format": "x"}, tmp_path / "a.pt")
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]  # no temp file left behind


def test_run_files_drop_rows_after_the_checkpoint_and_stale_temp_files(tmp_path):
    from dorefa.run_files import RunFiles

    files = RunFiles(tmp_path)
    files.lock()
    rows = [{"epoch": e, "train_loss": 1.0} for e in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 4, "train_lo'
    files.metrics.write_text(text)  # a partial last line, as a kill mid-append leaves
    (tmp_path / ".checkpoint.pt.k2j3.tmp").write_bytes(b"half a checkpoint")
    files.read_history(2)
    assert not (tmp_path / "config.json").exists()  # reading writes nothing
    files.start({"a": 1})
    assert [h["epoch"] for h in files.history] == [1, 2]
    assert files.metrics.read_text().splitlines() == [json.dumps(r) for r in rows[:2]]
    assert sorted(os.listdir(tmp_path)) == [".lock", "config.json", "metrics.jsonl"]
    files.add_epoch({"epoch": 3, "train_loss": 0.5})
    assert len(files.metrics.read_text().splitlines()) == 3
    held = rf"{tmp_path} is being written by `dorefa train` \(process {os.getpid()}\)"
    with pytest.raises(ValueError, match=held):
        RunFiles(tmp_path).lock()  # a second run into the folder, while this one trains
    files.close()
    again = RunFiles(tmp_path)
    again.lock()  # the lock is free again
    again.start({"b": 2})
    again.close()
    assert json.loads((tmp_path / "config.json").read_text()) == {"b": 2}
    silent = RunFiles(tmp_path / "rank1", enabled=False)
    silent.lock()  # rank 1 takes no lock
    silent.read_history(0)
    silent.start({})
    silent.add_epoch({"epoch": 1})
    assert not (tmp_path / "rank1").exists() and len(silent.history) == 1


def test_a_killed_writers_forked_children_do_not_hold_its_folder(tmp_path):
    """A run killed (SIGKILL) with DataLoader workers alive: its folder is free at once, not
    when the workers notice their parent is gone (the flock was shared with every fork)."""
    import signal
    import subprocess
    import sys
    import textwrap

    from dorefa.fileio import FolderLock

    code = textwrap.dedent(f"""
        import multiprocessing as mp, os, signal, sys, time
        from dorefa.fileio import FolderLock
        lock = FolderLock({str(tmp_path)!r}, "`dorefa train`")
        lock.acquire()
        running = mp.get_context("fork").Event()
        def work():  # a DataLoader worker; the at-fork hooks ran before it
            running.set()
            time.sleep(60)
        child = mp.get_context("fork").Process(target=work)
        child.start()
        running.wait(60)  # killed right after its fork, the child may not have run at all
        print(child.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "src"))
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env) as p:
        child = int(p.stdout.readline())  # the child keeps the pipe open: no communicate()
        status = p.wait(timeout=60)
    try:
        assert status == -signal.SIGKILL
        os.kill(child, 0)  # the child outlives its parent ...
        with FolderLock(tmp_path, "`dorefa train`") as lock:  # ... and does not hold the folder
            lock.acquire()
    finally:
        os.kill(child, signal.SIGKILL)


# ------------------------------------------------------------------ dorefa train --engine int
def test_train_engine_int_resumes_bit_identical(tmp_path, fashion_dir, monkeypatch):
    """``--engine int`` trains (the log says which layers run where), and a run killed after
    epoch 1 and resumed ends with the same weights as an uninterrupted one."""
    from dorefa.checkpoint import load_checkpoint
    from dorefa.cli import main
    from dorefa.train import TrainConfig, train

    small = dict(model="svhn", width=0.25, batch_size=32, subset=256, test_subset=128,
                 threads=1, progress=False, bits="1,2,6", engine="int")  # fmt: skip
    msgs = []
    train(TrainConfig(epochs=2, out=str(tmp_path / "straight"), **small), log=msgs.append)
    assert any(m.startswith("engine int: 6 of 8 quantized layers") for m in msgs), msgs

    class Killed(Exception):
        pass

    def kill_after_first(msg):
        if msg.startswith("epoch 1/"):
            raise Killed

    cfg = TrainConfig(epochs=2, out=str(tmp_path / "killed"), **small)
    with pytest.raises(Killed):
        train(cfg, log=kill_after_first)
    cfg.resume = True
    train(cfg, log=lambda m: None)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    argv = ["train", "--width", "0.25", "--subset", "128", "--test-subset", "64", "--epochs", "1",
            "--threads", "1", "--engine", "int", "--out", str(tmp_path / "cli")]  # fmt: skip
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # main sets it: restored afterwards
    assert main(argv) == 0
    assert '"engine": "int"' in (tmp_path / "cli" / "config.json").read_text()


_HEAP_CASE = """
import ctypes, resource
from dorefa.process import keep_freed_memory
libc = ctypes.CDLL(None)
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages whatever the host's THP setting
applied = keep_freed_memory()
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # as torch allocates (NumPy asks for huge pages: fewer faults)
    p = libc.malloc(48 << 20)  # 48 MB: above glibc's largest adaptive mmap threshold
    ctypes.memset(p, 1, 48 << 20)
    libc.free(p)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def test_training_keeps_freed_memory_in_the_heap():
    """``dorefa train`` raises glibc's mmap threshold (dorefa/process.py): ten 48 MB blocks in turn
    then fault their pages in once, not ten times (12k faults each); DOREFA_KEEP_HEAP=0 leaves
    the allocator alone."""
    import sys

    from kernel_cases import fresh_process

    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt is glibc's")
    tuned = {k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}
    if tuned:
        pytest.skip(f"the shell sets glibc's allocator itself ({', '.join(sorted(tuned))})")
    applied, faults = fresh_process(_HEAP_CASE, DOREFA_KEEP_HEAP="1")
    assert applied == "True" and int(faults) < 3 * 12288, faults
    applied, faults = fresh_process(_HEAP_CASE, DOREFA_KEEP_HEAP="0")
    assert applied == "False" and int(faults) > 9 * 12288, faults


_OMP_CASE = """
import contextlib, io, os, sys
from dorefa import cli
from dorefa.process import passive_openmp
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    cli.main(sys.argv[1:])
print(os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules, passive_openmp())
"""


@pytest.mark.parametrize(
    "preset, args, want",
    [
        (None, ["train", "--engine", "int", "--help"], "PASSIVE"),
        (None, ["train", "--engine=int", "--help"], "PASSIVE"),
        ("ACTIVE", ["train", "--engine", "int", "--help"], "ACTIVE"),
        (None, ["train", "--help"], "None"),  # the torch engine: torch's own default
        (None, ["sweep", "--engine", "int", "--help"], "None"),
    ],
)
def test_int_engine_training_lets_idle_openmp_threads_sleep(preset, args, want):
    """``dorefa train --engine int`` sets OMP_WAIT_POLICY=PASSIVE before the subcommands import
    torch (whose OpenMP runtime reads it once, on loading: dorefa/process.py), unless the user
    set it; other commands leave it; asked once torch is loaded, passive_openmp says it is too
    late."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run(
        [sys.executable, "-c", _OMP_CASE, *args], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == [want, "True"], out.stdout + out.stderr
    assert out.stdout.split()[2] == "False"  # too late now, whatever the variable says
