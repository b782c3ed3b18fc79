"""What a training run records (the data it learnt, its learning rates) and refuses (weights
that are not finite, bad TrainConfig fields), and how eval, run and resume use its records."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from dorefa import checkpoint
from dorefa.checkpoint import CheckpointError, load_checkpoint
from dorefa.cli import main
from dorefa.data.registry import folder_read
from dorefa.train import TrainConfig, train
from tiny_run import TINY


def test_eval_and_resume_know_the_data_a_run_learnt(tmp_path, fashion_dir, capsys):
    """An image folder's class names are recorded: another folder with as many classes but
    other names (label i another class) is refused by eval and run (it scored 0.33). The folder
    --data-dir gave is eval's default (eval had read the system's copy), and a resume on
    another folder says so."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("ant", "bee"):
            for k in range(4):
                path = tmp_path / "a" / split / name / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for split in ("train", "val"):
        (tmp_path / "b" / split / "bee").rename(tmp_path / "b" / split / "cat")  # ant, cat
    run = tmp_path / "run"
    cfg = TINY | dict(data=f"imagefolder:{tmp_path / 'a'}", batch_size=4, subset=None)
    train(TrainConfig(bits="1,2,6", epochs=1, out=str(run), **cfg), log=lambda m: None)
    assert load_checkpoint(run / "checkpoint.pt")["meta"]["classes"] == ["ant", "bee"]
    assert main(["eval", str(run / "checkpoint.pt")]) == 0
    other = ["--data", f"imagefolder:{tmp_path / 'b'}"]
    assert main(["eval", str(run / "checkpoint.pt"), *other]) == 2
    assert "class 1 is 'cat' but the checkpoint's model learnt 'bee'" in capsys.readouterr().err
    assert main(["export", str(run / "checkpoint.pt"), "-o", str(tmp_path / "m.dorefa")]) == 0
    assert main(["run", str(tmp_path / "m.dorefa"), *other]) == 2
    assert "learnt 'bee' as class 1" in capsys.readouterr().err
    shutil.copytree(fashion_dir, tmp_path / "fm")
    run = tmp_path / "moved"
    cfg = TINY | dict(data="fashion-mnist", data_dir=str(tmp_path / "fm"))
    train(TrainConfig(bits="1,2,6", epochs=1, out=str(run), **cfg), log=lambda m: None)
    capsys.readouterr()
    assert main(["eval", str(run / "checkpoint.pt"), "--test-subset", "8"]) == 0
    assert str(tmp_path / "fm") in capsys.readouterr().out  # the folder it trained on
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["meta"]["data_dir"]  # as the version before wrote it: its config has the folder
    checkpoint.save_atomic(ckpt, run / "checkpoint.pt")
    lines = []
    train(TrainConfig(bits="1,2,6", epochs=2, out=str(run), resume=True, **cfg), log=lines.append)
    assert not any("resuming on the data in" in m for m in lines), lines  # the same folder
    lines = []
    train(TrainConfig(bits="1,2,6", epochs=3, out=str(run), resume=True, **TINY), log=lines.append)
    default = folder_read("fashion-mnist")  # named, not "the default folder"
    want = f"resuming on the data in {default}; the run read {(tmp_path / 'fm').resolve()}"
    assert any(want in m for m in lines), lines
    lines = []  # the default folder named is the default folder: no warning (it had warned)
    cfg = TINY | dict(data_dir=default)
    train(TrainConfig(bits="1,2,6", epochs=4, out=str(run), resume=True, **cfg), log=lines.append)
    assert not any("resuming on the data in" in m for m in lines), lines
    from dorefa.data import require_model_shape
    from dorefa.data.imagefolder import ImageFolderDataset

    nfd = ImageFolderDataset([], ["cafe\u0301"], train=False)  # a folder copied through macOS
    nfd.in_channels = 3
    require_model_shape(nfd, "x", 3, 1, "m", ["caf\u00e9"])  # the same class: no refusal


def test_a_folder_in_the_spec_is_recorded_where_it_is(tmp_path, fashion_dir, monkeypatch, capsys):
    """Found by a hostile review: `--data idx:fm` was recorded as typed, so eval and run from
    another working folder read whatever `fm` was there (other data, no warning)."""
    shutil.copytree(fashion_dir, tmp_path / "fm")
    monkeypatch.chdir(tmp_path)
    cfg = TINY | dict(data="fashion-mnist:fm")
    train(TrainConfig(bits="1,2,6", epochs=1, out=str(tmp_path / "run"), **cfg), log=print)
    meta = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["meta"]
    assert meta["data"] == f"fashion-mnist:{(tmp_path / 'fm').resolve()}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no fm here
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "checkpoint.pt"), "--test-subset", "8"]) == 0
    assert str((tmp_path / "fm").resolve()) in capsys.readouterr().out


def test_a_run_extended_on_resume_keeps_its_halved_rate(tmp_path, fashion_dir):
    """Found by a review: 2 epochs (1e-3, 5e-4) resumed with --epochs 6 put the halving at
    epoch 4, so epoch 3 trained at 1e-3 again, unsaid. The rate stays halved, with a note."""
    import json

    run = tmp_path / "run"
    train(TrainConfig(bits="1,2,6", epochs=2, out=str(run), **TINY), log=lambda m: None)
    lines: list[str] = []
    train(TrainConfig(bits="1,2,6", epochs=6, out=str(run), resume=True, **TINY), log=lines.append)
    rates = [json.loads(row)["lr"] for row in (run / "metrics.jsonl").read_text().splitlines()]
    assert rates == [1e-3] + [5e-4] * 5
    assert any("trained at 0.0005 already: it stays there" in m for m in lines), lines


def test_resume_compares_the_data_spec_by_place(tmp_path, fashion_dir, monkeypatch):
    """A checkpoint of an older version recorded `fashion-mnist:fm` as typed; this one records
    the folder resolved. A resume compares the data set's name, and says where the folder
    moved, as for --data-dir."""
    shutil.copytree(fashion_dir, tmp_path / "fm")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    cfg = TINY | dict(data="fashion-mnist:fm")
    train(TrainConfig(bits="1,2,6", epochs=1, out=str(run), **cfg), log=lambda m: None)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["meta"]["data"] = "fashion-mnist:fm"  # as the older version wrote it
    checkpoint.save_atomic(ckpt, run / "checkpoint.pt")
    lines: list[str] = []
    train(TrainConfig(bits="1,2,6", epochs=2, out=str(run), resume=True, **cfg), log=lines.append)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1  # 0-based: the second
    assert not any("resuming on the data in" in m for m in lines), lines  # the same place
    shutil.move(tmp_path / "fm", tmp_path / "moved")  # a copy elsewhere: warned, not refused
    # (a review found the first version refusing it, with no argument to get past)
    cfg = TINY | dict(data=f"fashion-mnist:{tmp_path / 'moved'}")
    train(TrainConfig(bits="1,2,6", epochs=3, out=str(run), resume=True, **cfg), log=lines.append)
    want = f"resuming on the data in {(tmp_path / 'moved').resolve()}; the run read"
    assert any(want in m for m in lines), lines
    cfg = TINY | dict(data=f"mnist:{tmp_path / 'moved'}", augment="flip")  # other data: refused
    other = "made with --data 'fashion-mnist'; this run has --data 'mnist'; use the same "
    with pytest.raises(CheckpointError, match=other + "arguments to resume$"):  # no idx hint
        train(TrainConfig(bits="1,2,6", epochs=4, out=str(run), resume=True, **cfg))
    run = tmp_path / "idx-run"  # an idx folder is its data: another folder is refused
    cfg = TINY | dict(data=f"idx:{tmp_path / 'moved'}")
    train(TrainConfig(bits="1,2,6", epochs=1, out=str(run), **cfg), log=lambda m: None)
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    cfg = TINY | dict(data=f"idx:{tmp_path / 'copy'}")
    with pytest.raises(CheckpointError, match="an idx or image folder is its data"):
        train(TrainConfig(bits="1,2,6", epochs=2, out=str(run), resume=True, **cfg))
    run = tmp_path / "idx-dir"  # --data idx --data-dir D, meta as the previous version wrote it
    cfg = TINY | dict(data="idx", data_dir=str(tmp_path / "moved"))
    train(TrainConfig(bits="1,2,6", epochs=1, out=str(run), **cfg), log=lambda m: None)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["meta"]["data_dir"]
    checkpoint.save_atomic(ckpt, run / "checkpoint.pt")
    train(TrainConfig(bits="1,2,6", epochs=2, out=str(run), resume=True, **cfg), log=print)
    cfg = TINY | dict(data="idx", data_dir=str(tmp_path / "copy"))  # shown as its folders
    with pytest.raises(CheckpointError, match=r"--data 'idx:.*moved'; this run has --data 'idx:"):
        train(TrainConfig(bits="1,2,6", epochs=3, out=str(run), resume=True, **cfg))


def test_init_from_refuses_weights_that_are_not_finite(tmp_path, fashion_dir, capsys):
    """--init-from had taken a checkpoint holding a NaN, then stopped with "loss became nan;
    lower --lr"; it is refused up front, naming the tensor, as eval refuses it."""
    run = tmp_path / "run"
    train(TrainConfig(bits="1,2,6", epochs=1, out=str(run), **TINY), log=lambda m: None)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(k for k in ckpt["model"] if k.endswith("weight"))
    ckpt["model"][name].view(-1)[0] = float("nan")
    checkpoint.save_atomic(ckpt, tmp_path / "nan.pt")
    args = ["train", "--model", "svhn", "--width", "0.125", "--subset", "64", "--epochs", "1"]
    out = ["--out", str(tmp_path / "new"), "--init-from", str(tmp_path / "nan.pt")]
    assert main([*args, *out]) == 2
    assert f"{name} holds NaN or inf values" in capsys.readouterr().err


def test_train_config_fields_without_a_flag_are_checked_up_front(tmp_path):
    """eval_batch_size 0 had failed after a whole epoch, -5 recorded accuracy 0 on no images,
    until_flat=(0.1,) raised IndexError at the end of the schedule."""
    import pytest

    bad = {
        "eval_batch_size": (0, "TrainConfig.eval_batch_size must be an integer >= 1"),
        "until_flat": ((0.1,), "TrainConfig.until_flat must be"),
        "lr_milestones": (((3, -0.1),), "TrainConfig.lr_milestones must be"),
        "momentum": (-1.0, "TrainConfig.momentum must be a number >= 0"),
        "nesterov": ("yes", "TrainConfig.nesterov must be True or False"),
    }
    for field, (value, message) in bad.items():
        cfg = TrainConfig(bits="1,2,6", epochs=1, out=str(tmp_path / field), **TINY)
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match=message):
            train(cfg, log=lambda m: None)
        assert not (tmp_path / field).exists()  # refused before the run began


def test_resume_compares_older_records_of_the_data_without_guessing(tmp_path, monkeypatch):
    """An older checkpoint's config stores --data-dir as typed: a relative one is not read
    against the resuming folder (the right data had been refused, other data taken), and an
    idx spec with no folder recorded compares by name. The idx hint is shown only where both
    runs name idx or an image folder."""
    from dorefa.checkpoint import absolute_or_none, restore

    monkeypatch.chdir(tmp_path)
    assert absolute_or_none("d") is None and absolute_or_none("/x/d") == "/x/d"
    refused = {"meta": {"data": "fashion-mnist"}, "config": {}}
    with pytest.raises(CheckpointError) as err:
        restore(refused, "c.pt", meta={"data": "idx:/x/d"}, model=None, optimizer=None)
    assert "'fashion-mnist'; this run has --data 'idx:/x/d'" in str(err.value)
    assert "an idx or image folder" not in str(err.value)
    older = {"meta": {"data": "idx"}, "config": {"data_dir": "d"}}  # no epoch: refused later
    with pytest.raises(CheckpointError, match="checkpoint has no .*entries"):  # the data passed
        restore(older, "c.pt", meta={"data": "idx", "data_dir": "/x/d"}, model=None,
                optimizer=None)  # fmt: skip
    bits_only = {"meta": {"bits": "1,2,6"}, "config": {}}  # an older meta without data: the
    with pytest.raises(CheckpointError, match="made with --bits '1,2,6'"):  # bits, no KeyError
        restore(bits_only, "c.pt", meta={"bits": "1,1,4", "data": "idx:/x/d"}, model=None,
                optimizer=None)  # fmt: skip
    older["config"]["data_dir"] = "/y/d"
    with pytest.raises(CheckpointError, match="an idx or image folder is its data"):
        restore(older, "c.pt", meta={"data": "idx", "data_dir": "/x/d"}, model=None,
                optimizer=None)  # fmt: skip
