"""`dorefa train --nproc`: when one worker fails, is killed or interrupted, or the launcher dies,
the whole run stops at once with one line saying why (a lone failure had left the group hanging
for gloo's 30 minutes, a killed launcher its workers training on); variables left in the shell
neither hang a run nor change it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dorefa
from dorefa import distributed, say
from dorefa.cli import main
from two_ranks import run_two_ranks

SRC = str(Path(dorefa.__file__).resolve().parent.parent)
TINY = ["--model", "svhn", "--width", "0.25", "--subset", "256", "--test-subset", "64"]
TINY += ["--batch-size", "8", "--threads", "1", "--epochs", "30"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in say.LAUNCHER_VARS}
    return env | {
        "PYTHONPATH": SRC + os.pathsep + env.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }


def _start(out: Path) -> subprocess.Popen:
    """A 2-process run, returned once it has written its first checkpoint."""
    cmd = [sys.executable, "-m", "dorefa", "train", *TINY, "--nproc", "2", "--out", str(out)]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    return p


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _alive(pid: int) -> bool:
    """Running (a zombie no one reaps, where PID 1 is not an init, has stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _gone(pids: list[int], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not [pid for pid in pids if _alive(pid)]:
            return True
        time.sleep(0.05)
    return False


def test_an_error_on_one_rank_stops_the_group_with_its_message(tmp_path):
    """Rank 0's checkpoint write fails (a folder where the file goes, as a full disk would): it
    had waited in teardown's barrier while rank 1 waited in the gradients' all-reduce."""
    out = tmp_path / "run"
    p = _start(out)
    for _ in range(200):  # between two of rank 0's atomic writes (a rename may land first)
        try:
            (out / "checkpoint.pt").unlink(missing_ok=True)
            (out / "checkpoint.pt").mkdir()
            break
        except FileExistsError:
            time.sleep(0.01)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2, err
    assert "checkpoint.pt exists and is not a regular file" in err
    assert "rank 1 lost its process group (another worker stopped first" in err


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_a_killed_worker_is_named_and_a_killed_launcher_takes_its_workers(tmp_path):
    p = _start(tmp_path / "a")
    workers = _children(p.pid)
    os.kill(workers[1], signal.SIGKILL)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGKILL, err
    assert "worker rank 1 was killed by SIGKILL; the others are stopped" in err
    assert _gone(workers)
    p = _start(tmp_path / "b")
    workers = _children(p.pid)
    os.kill(p.pid, signal.SIGKILL)  # no cleanup runs in the launcher
    p.communicate(timeout=60)
    assert _gone(workers), "the workers outlived their launcher"


def test_launcher_variables_left_in_the_shell(monkeypatch, capsys):
    """--nproc inside a group (torchrun, or variables left over) is refused, not ignored (the
    run then waited for ranks that never came); a stray MASTER_ADDR does not send the workers
    to another host; a stray RANK alone does not silence a plain run's last line."""
    for k, v in dict(WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(k, v)
    assert main(["train", *TINY, "--nproc", "2"]) == 2
    assert "--nproc 2 starts its own workers, but this process is already one of a group" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("MASTER_ADDR", "192.0.2.1")
    assert distributed.worker_env(1, 2, 1234)["MASTER_ADDR"] == "127.0.0.1"
    for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("RANK", "1")
    assert not distributed.launched()


def test_a_worker_killed_by_a_signal_gets_a_shells_status(capsys):
    assert distributed._worker_status(1, -signal.SIGTERM) == 143
    assert "worker rank 1 was killed by SIGTERM" in capsys.readouterr().err
    assert distributed._worker_status(0, 3) == 3


def test_the_workers_never_see_nproc_even_abbreviated():
    """argparse takes `--npro 2` for --nproc; the workers got it and refused to start."""
    from dorefa.cli import _without_nproc

    argv = ["--npro", "2", "--out", "x", "--np=2", "--nproc", "3", "--epochs", "1"]
    assert _without_nproc(argv) == ["--out", "x", "--epochs", "1"]


def test_the_cause_outranks_a_rank_that_only_lost_its_group(tmp_path, monkeypatch):
    """Rank 1 only lost its group and exits first; rank 0, whose failure caused it, exits a
    moment later: the run's status is rank 0's (it had been rank 1's whenever it came first)."""
    (tmp_path / "fake_worker.py").write_text(
        "import os, sys, time\n"
        "if os.environ['RANK'] == '0':\n"
        "    time.sleep(0.6)\n"
        "    sys.exit(2)\n"
        f"sys.exit({distributed.LOST_GROUP})\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert distributed.launch(2, [], module="fake_worker") == 2
    monkeypatch.setattr(distributed, "LOST_GROUP_GRACE", 0.5)
    (tmp_path / "fake_worker.py").write_text(  # nobody else fails: the lost group's status
        f"import os, sys, time\nif os.environ['RANK'] == '0':\n    time.sleep(60)\n"
        f"sys.exit({distributed.LOST_GROUP})\n"
    )
    start = time.monotonic()
    assert distributed.launch(2, [], module="fake_worker") == distributed.LOST_GROUP
    assert time.monotonic() - start < 30, "the launcher did not stop the other worker"


def test_an_error_every_rank_meets_is_said_once(tmp_path):
    """A missing data folder (every rank's loading fails alike) had printed its line once per
    rank; a corrupt checkpoint to resume, a run diverging (its loss, summed over the ranks,
    NaN) and a warning on the data (every rank loads it), the same."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    diverge = ["--lr", "1e30", "--test-subset", "99999", "--out", str(tmp_path / "c")]
    for extra, said in [
        (["--data", f"idx:{tmp_path / 'none'}", "--out", str(tmp_path / "a")], "no such folder"),
        (["--resume", "--out", str(tmp_path / "b")], "checkpoint.pt"),
        (diverge, "loss became nan at epoch 1"),
    ]:
        cmd = [sys.executable, "-m", "dorefa", "train", *TINY, "--nproc", "2", *extra]
        p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("dorefa train: error") == 1 and said in p.stderr, p.stderr
    assert p.stderr.count("warning: --test-subset 99999 is more than") == 1, p.stderr


def test_a_warning_is_said_by_rank_0_alone(monkeypatch, capsys):
    """say.warning: quiet in a launched worker of rank > 0, said by rank 0 and outside a
    launcher (RANK alone, without the launcher's other variables, is not a worker)."""
    monkeypatch.setenv("RANK", "1")
    say.warning("alone")  # not launched: said
    launcher = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for k, v in launcher.items():
        monkeypatch.setenv(k, v)
    say.warning("rank 1")  # a worker of rank 1: quiet
    monkeypatch.setenv("RANK", "0")
    say.warning("rank 0")
    assert capsys.readouterr().err == "warning: alone\nwarning: rank 0\n"


_ONE_NAN_RANK = """
import torch.distributed as dist
from types import SimpleNamespace
from dorefa import distributed
from dorefa.train import _check_loss
dist.init_process_group("gloo")
rank = dist.get_rank()
info = distributed.DistInfo(rank=rank, world_size=2, backend="gloo")
run = SimpleNamespace(info=info, device="cpu")
_check_loss(run, 1.5, 0)  # finite on both: nothing raised
try:
    _check_loss(run, float("nan") if rank == 1 else 2.0, 0)
    print(f"rank {rank}: went on")
except Exception as e:
    print(f"rank {rank}: {type(e).__name__}: {e}")
dist.barrier()
dist.destroy_process_group()
"""


def test_a_nan_loss_on_one_rank_stops_every_rank_at_that_step(tmp_path):
    """The loss is checked as the sum over the ranks: a NaN in rank 1's batch alone stops both
    (rank 0 says why, rank 1 stops quietly); a rank checking only its own loss had stopped
    alone while the other waited for it in its backward."""
    script = tmp_path / "one_nan.py"
    script.write_text(_ONE_NAN_RANK)
    outs = run_two_ranks(script, _env())
    assert "rank 0: FloatingPointError: loss became nan at epoch 1" in outs[0], outs
    assert "rank 1: PeerFailed: rank 1 stops: rank 0 failed" in outs[1], outs
