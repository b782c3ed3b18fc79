"""Training on real Fashion-MNIST subsets: outputs, learning, resume, init, eval, bad files."""

import json
import os
import pickle

import pytest
import torch

from dorefa.checkpoint import CheckpointError, load_checkpoint
from dorefa.cli import main
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
