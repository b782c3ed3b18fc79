"""A user's mistakes that once slipped through: each now ends in an error that names what was
wrong and what to do (exit code 2 from the command line), or in a log line saying what happens.

(The wider hostile-input list, each case in a process of its own: test_hostile.py.)
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from dorefa import checkpoint, fileio
from dorefa.checkpoint import CheckpointError, load_checkpoint
from dorefa.cli import main
from dorefa.train import TrainConfig, train
from tiny_run import TINY


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, fashion_dir):
    out = tmp_path_factory.mktemp("runs") / "one"
    train(TrainConfig(bits="1,2,6", epochs=1, out=str(out), **TINY), log=lambda m: None)
    return out


def _resume(out, **changes):
    return TrainConfig(bits="1,2,6", epochs=2, out=str(out), resume=True, **(TINY | changes))


@pytest.mark.parametrize(
    "changes, flag",
    [(dict(optimizer="sgd"), "--optimizer"), (dict(lr=0.5), "--lr"), (dict(seed=3), "--seed")],
)
def test_resume_refuses_other_training_settings(one_epoch, tmp_path, changes, flag):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    before = (out / "config.json").read_text()
    with pytest.raises(ValueError, match=f"{flag} .* then, .* now"):
        train(_resume(out, **changes), log=lambda m: None)
    assert (out / "config.json").read_text() == before  # the record still says how it was made


@pytest.mark.parametrize("record", ["missing", "corrupt"])
def test_resume_checks_the_settings_the_checkpoint_holds(one_epoch, tmp_path, record):
    """config.json gone or damaged: the checkpoint's own record still refuses another optimizer
    (which had crashed in the first step, after config.json was rewritten with it)."""
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    if record == "missing":
        (out / "config.json").unlink()
    else:
        (out / "config.json").write_text('{"lr":')
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match="--optimizer 'adam' then, 'sgd' now"):
        train(_resume(out, optimizer="sgd"), log=lambda m: None)
    assert sorted(os.listdir(out)) == before


def test_resume_names_the_flag_or_the_recipe_that_sets_a_setting(tmp_path):
    from dorefa.run_files import RunFiles

    files = RunFiles(tmp_path)
    run = {"recipe": "svhn-fashion-mnist", "lr_milestones": [6, 9], "lr": 0.01, "world_size": 2}
    now = {"recipe": None, "lr_milestones": None, "lr": 0.01, "world_size": 1}
    with pytest.raises(ValueError) as err:
        files.check_resume(now, run)
    msg = str(err.value)
    assert "lr_milestones (a recipe's setting) [6, 9] then, None now" in msg
    assert "--nproc (processes) 2 then, 1 now" in msg and "add --recipe svhn-fashion-mnist" in msg
    assert "--lr-milestones" not in msg and "--lr " not in msg
    files.check_resume(run, run)  # the same settings: nothing to say


def test_resume_may_extend_the_epochs(one_epoch, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    logs = []
    train(_resume(out), log=logs.append)
    assert any("resuming" in m for m in logs)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_resume_of_a_finished_run_says_there_is_nothing_to_train(one_epoch, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    logs = []
    before = {n: (out / n).read_bytes() for n in ("config.json", "metrics.jsonl")}
    cfg = TrainConfig(
        bits="1,2,6", epochs=1, out=str(out), resume=True, **TINY | {"test_subset": 16}
    )
    train(cfg, log=logs.append)
    assert any("already trained to epoch 1: nothing to train" in m for m in logs)
    assert not any("resuming" in m for m in logs)
    assert {n: (out / n).read_bytes() for n in before} == before  # its record is not rewritten


def test_a_run_that_stops_before_writing_leaves_no_folder(tmp_path, fashion_dir):
    """The lock is taken before the folder is read (it makes the folder); a run refused after
    that takes the folder away again if it holds nothing else."""
    out = tmp_path / "new"
    with pytest.raises(ValueError, match="no such folder"):
        train(TrainConfig(bits="1,2,6", out=str(out), **TINY | {"data": f"idx:{tmp_path}/none"}))
    assert not out.exists()


def test_a_new_run_keeps_files_it_did_not_write(tmp_path, fashion_dir):
    out = tmp_path / "notes"
    out.mkdir()
    for name, text in (("config.json", '{"important": 1}'), ("metrics.jsonl", "my notes\n")):
        (out / name).write_text(text)
        with pytest.raises(ValueError, match=f"{name} was not written by `dorefa train`"):
            train(TrainConfig(bits="1,2,6", epochs=1, out=str(out), **TINY), log=lambda m: None)
        assert (out / name).read_text() == text
        (out / name).unlink()
    with pytest.raises(ValueError, match="--out is empty"):
        TrainConfig(bits="1,2,6", out=" ")


def test_numbers_a_float32_step_cannot_hold_and_unicode_digits_are_refused():
    import argparse

    from dorefa.argtypes import NON_NEGATIVE_FLOAT, POSITIVE_FLOAT
    from dorefa.bits import Bits, BitsError

    for kind in (POSITIVE_FLOAT, NON_NEGATIVE_FLOAT):
        with pytest.raises(argparse.ArgumentTypeError, match="<= 3.40282e"):
            kind("1e39")
        assert kind("1e30") == 1e30
    with pytest.raises(BitsError, match="three comma-separated integers"):
        Bits.parse("\u00b9,2,6")


def test_resume_without_a_checkpoint_says_it_starts_anew(tmp_path, fashion_dir):
    logs = []
    cfg = TrainConfig(bits="1,2,6", epochs=1, out=str(tmp_path / "new"), resume=True, **TINY)
    train(cfg, log=logs.append)
    assert any("nothing to resume" in m and "starting a new run" in m for m in logs)


def test_nproc_is_checked_before_any_worker_starts(capsys):
    cpus = len(os.sched_getaffinity(0))
    args = ["train", "--model", "svhn", "--out", "/nonexistent/never-written"]
    assert main([*args, "--nproc", str(4 * cpus + 1)]) == 2
    assert "more than 4 workers a CPU" in capsys.readouterr().err
    if cpus >= 2:
        assert main([*args, "--nproc", "2", "--batch-size", "33"]) == 2
        err = capsys.readouterr().err
        assert "divisible by --nproc 2" in err and "--batch-size 34" in err
        assert main([*args, "--nproc", "2", "--subset", "2"]) == 2
        err = capsys.readouterr().err  # once, from this process: no worker started
        assert err.count("2 training images for 2 processes") == 1


def test_atomic_write_never_replaces_a_special_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        fileio.atomic_write_text(fifo, "x")
    assert fifo.is_fifo()
    link = tmp_path / "null-link"
    link.symlink_to(os.devnull)
    with pytest.raises(ValueError, match="not a regular file"):
        fileio.atomic_write_text(link, "x")


def test_atomic_write_over_a_folder_made_while_it_wrote(tmp_path, monkeypatch):
    target, replace = tmp_path / "checkpoint.pt", os.replace

    def folder_first(src, dst):  # a folder lands between the check and the rename
        target.mkdir()
        replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", folder_first)
    with pytest.raises(ValueError, match="checkpoint.pt exists and is not a regular file"):
        fileio.atomic_write_text(target, "x")
    assert target.is_dir() and os.listdir(tmp_path) == ["checkpoint.pt"]  # no temp file left


def test_atomic_write_names_the_file_it_cannot_write(tmp_path):
    (tmp_path / "afile").write_text("")  # a file where the folder should be (even root fails)
    for target in (tmp_path / "afile" / "m.dorefa", tmp_path / "afile" / "sub" / "m.dorefa"):
        with pytest.raises(fileio.WriteError, match=f"cannot write {target}: .*afile is a file"):
            fileio.atomic_write_bytes(target, b"x")


def test_export_never_writes_over_its_checkpoint(one_epoch, tmp_path, capsys):
    ckpt = tmp_path / "run.pt"
    shutil.copy(one_epoch / "checkpoint.pt", ckpt)
    named = tmp_path / "model.dorefa"  # a checkpoint whose default output is itself
    shutil.copy(ckpt, named)
    before = ckpt.read_bytes()
    (tmp_path / "link.pt").symlink_to(ckpt)
    for argv in (
        [str(ckpt), "-o", str(ckpt)],
        [str(tmp_path / "link.pt"), "-o", str(ckpt)],
        [str(ckpt), "--format", "qonnx", "-o", str(ckpt)],
        [str(named)],
    ):
        assert main(["export", *argv]) == 2
        assert "is the checkpoint being exported" in capsys.readouterr().err
    assert ckpt.read_bytes() == before and named.read_bytes() == before
    assert main(["export", str(ckpt), "-o", ""]) == 2  # an unset shell variable after -o
    assert "-o is empty" in capsys.readouterr().err
    assert not (tmp_path / "run.dorefa").exists()
    # another file that is not an export: kept (another run's checkpoint had been replaced)
    other = tmp_path / "other.pt"
    shutil.copy(ckpt, other)
    for argv in ([str(ckpt), "-o", str(other)], [str(ckpt), "--format", "qonnx", "-o", str(other)]):
        assert main(["export", *argv]) == 2
        assert "exists and is not a" in capsys.readouterr().err
    assert other.read_bytes() == before
    out = tmp_path / "again.dorefa"  # an earlier export is replaced, as before
    assert main(["export", str(ckpt), "-o", str(out)]) == 0
    assert main(["export", str(ckpt), "-o", str(out)]) == 0
    (tmp_path / "empty.dorefa").touch()  # a name made for it (mktemp): written
    assert main(["export", str(ckpt), "-o", str(tmp_path / "empty.dorefa")]) == 0


def test_an_exported_model_is_not_taken_for_a_checkpoint(one_epoch, tmp_path, capsys):
    model = tmp_path / "m.dorefa"
    assert main(["export", str(one_epoch / "checkpoint.pt"), "-o", str(model)]) == 0
    capsys.readouterr()
    assert main(["export", str(model), "-o", str(tmp_path / "again.dorefa")]) == 2
    assert f"{model} is an exported .dorefa model, not a training checkpoint" in (
        capsys.readouterr().err
    )
    folder = tmp_path / "afile"
    folder.write_text("")
    assert main(["export", str(one_epoch / "checkpoint.pt"), "-o", str(folder / "m.dorefa")]) == 2
    err = capsys.readouterr().err
    assert f"{folder} is a file, not a folder" in err and err.count("cannot write") == 1


def test_checkpoint_errors_say_what_the_file_is(one_epoch, tmp_path):
    with pytest.raises(CheckpointError, match="is a folder; give the checkpoint file"):
        load_checkpoint(one_epoch)
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module: unpickling would run code
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(pickled)
    assert "weights_only" not in str(err.value) and "Python objects" in str(err.value)


def test_a_diverged_checkpoint_is_refused_by_name(one_epoch, tmp_path, capsys):
    ckpt = torch.load(one_epoch / "checkpoint.pt", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name][0] = float("nan")
    path = tmp_path / "nan.pt"
    checkpoint.save_atomic(ckpt, path)  # an edit saved as the docs say
    assert main(["eval", str(path), "--test-subset", "32", "--threads", "1"]) == 2
    assert f"{name} holds NaN or inf values" in capsys.readouterr().err


def test_a_damaged_or_hand_edited_checkpoint_is_refused(one_epoch, tmp_path, capsys):
    good = one_epoch / "checkpoint.pt"
    ckpt = torch.load(good, weights_only=True)
    weight = next(v for v in ckpt["model"].values() if v.is_floating_point() and v.numel() > 8)
    raw = bytearray(good.read_bytes())
    at = bytes(raw).find(weight.numpy().tobytes())  # torch.save stores tensor bytes as they are
    assert at > 0
    raw[at + 5] ^= 0x10  # one bit of one weight: still a valid zip, a valid float
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(raw))
    assert main(["eval", str(flipped), "--test-subset", "32", "--threads", "1"]) == 2
    assert "do not match the checksum" in capsys.readouterr().err
    edited = tmp_path / "edited.pt"
    torch.save(ckpt | {"epoch": 7}, edited)  # the digest of epoch 0 kept
    with pytest.raises(CheckpointError, match="edited after it was written"):
        load_checkpoint(edited)
    assert load_checkpoint(good)["digest"] == checkpoint.entries_digest(ckpt)
    older = tmp_path / "older.pt"  # written before digests: loads unchecked
    torch.save({k: v for k, v in ckpt.items() if k != "digest"}, older)
    assert load_checkpoint(older)["epoch"] == ckpt["epoch"]
    odd = tmp_path / "odd.pt"  # a digest that is not a string: refused, not a traceback
    torch.save(ckpt | {"digest": torch.zeros(3)}, odd)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(odd)


def test_an_altered_image_size_is_refused(one_epoch, tmp_path, capsys):
    ckpt = torch.load(one_epoch / "checkpoint.pt", weights_only=True)
    ckpt["meta"]["image_size"] = 8
    path = tmp_path / "size8.pt"
    checkpoint.save_atomic(ckpt, path)  # an edit saved as the docs say
    assert main(["eval", str(path), "--test-subset", "32", "--threads", "1"]) == 2
    assert "meta image_size 8" in capsys.readouterr().err


def test_runtime_refuses_integer_pixels_and_bad_threads(one_epoch, tmp_path):
    from dorefa import runtime

    path = tmp_path / "m.dorefa"
    assert main(["export", str(one_epoch / "checkpoint.pt"), "-o", str(path)]) == 0
    model = runtime.load(path)
    x = np.zeros((2, *model.input_shape), np.uint8)
    with pytest.raises(ValueError, match="divide uint8 images by 255"):
        model.run(x)
    with pytest.raises(ValueError, match="beyond float32's range"):  # not 'NaN or inf'
        model.run(np.full(x.shape, 1e300))
    for threads in (2.5, "2", 0, runtime.MAX_THREADS + 1):
        with pytest.raises(ValueError, match=r"threads must be an int in 1\.\.1024"):
            model.run(x.astype(np.float32), threads=threads)
    with pytest.raises(ValueError, match="threads must be"):  # at load, not at every call
        runtime.load(path, threads=runtime.MAX_THREADS + 1)
    x = np.zeros((2, *model.input_shape), np.float32)
    with pytest.warns(RuntimeWarning, match="threads=1024 is more than this process's"):
        capped = model.run(x, threads=1024)  # had started 1024 pool threads on 2 CPUs
    assert np.array_equal(capped, model.run(x, threads=1))
    from dorefa.kernels.extension import native

    if native is not None:  # the kernels' own bound
        assert native.MAX_THREADS == runtime.MAX_THREADS


def test_report_keeps_its_page_on_an_empty_results_file(tmp_path, capsys):
    (tmp_path / "results.csv").write_text("")
    (tmp_path / "results.md").write_text("the report\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no cells" in capsys.readouterr().err
    assert (tmp_path / "results.md").read_text() == "the report\n"


def test_summary_refuses_sizes_the_model_cannot_take(capsys):
    assert main(["summary", "svhn", "--input-size", "4"]) == 2
    assert "cannot run on a (3, 4, 4) input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["summary", "svhn", "--input-size", "100000"])
    assert "at most 4096" in capsys.readouterr().err


def test_use_kernel_takes_names_as_the_environment_variable_does():
    from dorefa import kernels as K
    from dorefa.kernels.selection import backend_of

    for bad in (None, 3, "", "  "):
        with pytest.raises(ValueError, match="use_kernel takes a kernel, family or backend"):
            with K.use_kernel(bad):
                pass
    if "avx2" in {backend_of(k) for k in K.available_kernels()}:
        with K.use_kernel("AVX2") as upper, K.use_kernel("avx2") as lower:
            assert upper == lower
        assert K.kernel_name(" AVX2 ") == K.kernel_name("avx2") == lower  # every name taker
        previous = K.set_backend("AVX2")
        try:
            assert K.backend() == "avx2"
        finally:
            K.set_backend(None)
        assert previous == K.backend()


def test_a_binary_grid_file_is_named(tmp_path):
    from dorefa.sweep.grid import load_grid

    path = tmp_path / "grid.yaml"
    path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match=f"--grid {path}: not a text file"):
        load_grid(str(path))


def test_labels_of_one_value_are_one_class(tmp_path):
    from data_files import write_idx
    from dorefa.data import DataError, get_dataset, require_classes

    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (8, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.full(8, 255))
    data = get_dataset(f"idx:{tmp_path}", "train")
    with pytest.raises(DataError, match="1 class only"):
        require_classes(data, f"idx:{tmp_path}")


def test_a_stray_label_that_makes_many_classes_is_reported(tmp_path, capsys, fashion_dir):
    from data_files import write_idx
    from dorefa.data import get_dataset, require_classes

    rng = np.random.default_rng(0)
    labels = np.arange(40) % 10
    labels[7] = 255  # one corrupt byte: 256 classes inferred
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (40, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    data = get_dataset(f"idx:{tmp_path}", "train")
    require_classes(data, f"idx:{tmp_path}")
    err = capsys.readouterr().err
    assert "labels span 0..255 but only 11 values occur" in err
    ok = get_dataset("fashion-mnist", "test")
    require_classes(ok, "fashion-mnist")
    assert "labels span" not in capsys.readouterr().err


def test_compare_names_a_checkpoint_that_is_not_the_exported_one(one_epoch, tmp_path, capsys):
    from dorefa.runtime.compare import run_test_set

    path = tmp_path / "m.dorefa"
    assert main(["export", str(one_epoch / "checkpoint.pt"), "-o", str(path)]) == 0
    ckpt = torch.load(one_epoch / "checkpoint.pt", weights_only=True)
    other_bits = tmp_path / "bits.pt"
    checkpoint.save_atomic(ckpt | {"meta": ckpt["meta"] | {"bits": "2,2,6"}}, other_bits)
    with pytest.raises(ValueError, match="has bits 2,2,6 but .* was exported with bits 1,2,6"):
        run_test_set(path, "fashion-mnist", test_subset=8, compare=other_bits)
    later = tmp_path / "later.pt"
    checkpoint.save_atomic(ckpt | {"epoch": 4}, later)
    capsys.readouterr()
    run_test_set(path, "fashion-mnist", test_subset=8, compare=later)
    assert "exported after epoch 1" in capsys.readouterr().err
    # another run's checkpoint at the same epoch (other weights): named, by its digest
    other = tmp_path / "other.pt"
    model = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    checkpoint.save_atomic(ckpt | {"model": model}, other)
    run_test_set(path, "fashion-mnist", test_subset=8, compare=other)
    assert "exported from another checkpoint" in capsys.readouterr().err
    run_test_set(path, "fashion-mnist", test_subset=8, compare=one_epoch / "checkpoint.pt")
    assert "warning" not in capsys.readouterr().err
    # a file of the Python API (no width in its meta) from a wider network: refused (a hostile
    # review found it compared, 0% agreement, no word why)
    from dorefa.exporter import export
    from dorefa.models import create_model

    wide = create_model("svhn", bits="1,2,6", num_classes=10, in_channels=1, width=0.25)
    export(wide.eval(), tmp_path / "wide.dorefa", input_size=40)
    with pytest.raises(ValueError, match="other layer sizes .another --width"):
        run_test_set(tmp_path / "wide.dorefa", "fashion-mnist", test_subset=8, compare=later)


def test_eval_and_run_take_only_data_of_the_models_classes(one_epoch, tmp_path, capsys):
    """eval took a dataset of fewer classes than the model's (labels of other classes), run
    refused it: one rule, refused by both."""
    from data_files import write_idx

    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(12) % 3)
    data = f"idx:{tmp_path}"
    path = tmp_path / "m.dorefa"
    assert main(["export", str(one_epoch / "checkpoint.pt"), "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["eval", str(one_epoch / "checkpoint.pt"), "--data", data]) == 2
    assert "has 1 channels and 3 classes; the checkpoint's model expects 1 and 10" in (
        capsys.readouterr().err
    )
    assert main(["run", str(path), "--data", data]) == 2
    assert "has 1 channels and 3 classes" in capsys.readouterr().err


def test_eval_takes_a_cpu_index_and_caps_threads_at_the_cpus(one_epoch, capsys):
    """--device cpu:0 was reported as a corrupt checkpoint (torch.load cannot map to it);
    --threads 60000 crashed (threads created for each)."""
    args = ["eval", str(one_epoch / "checkpoint.pt"), "--test-subset", "8"]
    assert main([*args, "--device", "cpu:0", "--threads", "60000"]) == 0
    out = capsys.readouterr()
    assert "accuracy" in out.out and "--threads 60000 is more than the" in out.err


def test_negative_bits_get_the_bits_message_not_argparse_s(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--bits", "-1,2,6", "--epochs", "1"])
    err = capsys.readouterr().err
    assert "each in 1..8 or 32" in err and "weight bits -1" in err


def test_a_subset_larger_than_the_data_says_it_takes_all(fashion_dir, capsys):
    from dorefa.train import load_data

    cfg = TrainConfig(bits="1,2,6", epochs=1, **(TINY | {"subset": 10**7, "test_subset": 10**6}))
    train_set, test_set = load_data(cfg, 32)
    err = capsys.readouterr().err
    assert len(train_set) == 60000 and len(test_set) == 10000
    assert "--subset 10000000 is more than the 60000 images" in err
    assert "--test-subset 1000000 is more than the 10000 images" in err


def test_a_data_loader_workers_error_is_its_own_line():
    """torch re-raises a worker's error with the worker's traceback in the message."""
    from dorefa.cli import _one_line

    exc = ValueError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1, in f\n    raise DataError(m)\n'
        "dorefa.data.errors.DataError: /d/a/bad.png: cannot decode image (OSError: truncated)\n"
    )
    assert _one_line(exc) == "/d/a/bad.png: cannot decode image (OSError: truncated)"
    assert _one_line(ValueError("two\nlines")) == "two lines"


def test_a_device_file_and_a_negative_variance_are_named(one_epoch, tmp_path, capsys):
    assert main(["eval", "/dev/zero"]) == 2
    assert "/dev/zero: is not a regular file" in capsys.readouterr().err
    ckpt = torch.load(one_epoch / "checkpoint.pt", weights_only=True)
    key = next(k for k in ckpt["model"] if k.endswith("running_var"))
    model = dict(ckpt["model"]) | {key: -torch.ones_like(ckpt["model"][key])}
    checkpoint.save_atomic(ckpt | {"model": model}, tmp_path / "neg.pt")
    for cmd in (["export", "-o", str(tmp_path / "m.dorefa")], ["eval", "--test-subset", "8"]):
        assert main([cmd[0], str(tmp_path / "neg.pt"), *cmd[1:]]) == 2  # eval's logits: NaN
        assert f"{key} holds a negative BatchNorm variance (-1)" in capsys.readouterr().err
    from dorefa.exporter.folding import ExportError, bn_affine

    bn = torch.nn.BatchNorm2d(2).eval()
    bn.running_var[1] = -1.0  # a user's own model, exported from memory
    with pytest.raises(ExportError, match="BatchNorm running variance -1.0 is negative"):
        bn_affine(bn)


def test_a_model_summary_builds_no_weights(capsys):
    """`dorefa summary alexnet --in-channels 100000` had built 5.5 GB of weights (48 GB for
    svhn at 10**7 channels): the model is made on the meta device."""
    import resource

    from dorefa.summary_cli import load_summary

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = load_summary("alexnet", in_channels=100000)
    assert s.totals["params"] > 1.4e9
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 2**20  # KiB: < 1 GiB
    with pytest.raises(SystemExit):  # 10**20 had crashed in torch (storage size overflowed)
        main(["summary", "resnet18", "--in-channels", str(10**20)])
    assert "--in-channels: must be at most 1000000" in capsys.readouterr().err


def test_found_by_a_hostile_review_of_train_options(one_epoch, tmp_path, monkeypatch, capsys):
    """The accuracy printed under --amp bf16 is the checkpoint's (evaluation had run under
    autocast: 0.566 printed, 0.556 by eval); a run diverging with a finite loss stops (it had
    'succeeded' with an unusable checkpoint); a resume with nothing to train and no
    metrics.jsonl prints its accuracy (KeyError); a full disk under torch.save is one line; an
    lr Adam overflows on is refused."""
    from dorefa.train import _check_finite

    run = tmp_path / "bf16"
    cfg = TrainConfig(bits="1,2,6", epochs=1, out=str(run), amp="bf16", **TINY)
    printed = train(cfg, log=lambda m: None)["test_acc"]
    assert main(["eval", str(run / "checkpoint.pt"), "--test-subset", "32", "--threads", "1"]) == 0
    assert f"accuracy {printed:.4f}" in capsys.readouterr().out
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    model[0].running_var[1] = float("inf")
    with pytest.raises(FloatingPointError, match="0.running_var became NaN or inf in epoch 3"):
        _check_finite(model, 2)
    out = tmp_path / "nohistory"
    shutil.copytree(one_epoch, out)
    (out / "metrics.jsonl").unlink()
    argv = ["train", "--width", "0.125", "--batch-size", "32", "--subset", "64"]
    argv += [
        "--test-subset",
        "32",
        "--threads",
        "1",
        "--epochs",
        "1",
        "--resume",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "final test accuracy 0." in capsys.readouterr().out

    def full_disk(obj, f):
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") from None

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(fileio.WriteError, match="cannot write .*c.pt: No space left on device"):
        checkpoint.save_atomic({"model": {}}, tmp_path / "c.pt")
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        main(["train", "--lr", "4e37", "--out", str(tmp_path / "x")])
    assert "--lr: must be a number > 0 and <= 1e+37, got '4e37'" in capsys.readouterr().err


def test_a_json_file_given_as_a_checkpoint_and_a_resume_on_other_threads(one_epoch, tmp_path):
    with pytest.raises(CheckpointError, match="config.json is a JSON file, not a training"):
        load_checkpoint(one_epoch / "config.json")  # it had said 'Python objects'
    (tmp_path / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))  # said so too
    with pytest.raises(CheckpointError, match=r"not a file torch.save wrote \(Unsupported op"):
        load_checkpoint(tmp_path / "curves.png")
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["config"]["torch_threads"] = 7  # as if trained on 7 threads
    checkpoint.save_atomic(ckpt, out / "checkpoint.pt")
    lines = []
    train(_resume(out), log=lines.append)
    assert any("resuming on 1 torch threads where the run used 7" in m for m in lines), lines
