"""Data-parallel training (2 gloo processes on CPU), SyncBatchNorm on CPU, autocast-exact
quantizers, the ImageNet recipes end to end on a tiny image folder."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dorefa
from dorefa import distributed, say
from dorefa.bits import Bits
from dorefa.checkpoint import load_checkpoint, model_from_checkpoint
from dorefa.cli import build_parser, config_from_args, explicit_train_options, main
from dorefa.nn import ActQuant, GradQuant, QConv2d, QLinear
from dorefa.quantizers import quantize_activation, quantize_weight
from dorefa.recipes import apply_recipe, config_with_recipe, list_recipes
from dorefa.train import TrainConfig, derive_seed, grad_seed, lr_at, train
from two_ranks import run_two_ranks

SRC = str(Path(dorefa.__file__).resolve().parent.parent)
# 512 real Fashion-MNIST images, width 0.25 (the paper's model C), one thread per process
TINY = [
    "--model",
    "svhn",
    "--width",
    "0.25",
    "--subset",
    "512",
    "--test-subset",
    "200",
    "--batch-size",
    "64",
    "--threads",
    "1",
    "--seed",
    "0",
]


def _env(**extra):
    env = dict(
        os.environ,
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )
    for k in say.LAUNCHER_VARS:
        env.pop(k, None)
    env.update(extra)
    return env


def _run_dorefa(args, timeout=240):
    p = subprocess.run(
        [sys.executable, "-m", "dorefa", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _replica_hashes(stdout):
    m = re.search(r"replicas in sync: (\d+) ranks?, weights sha256 ([0-9a-f ]+)", stdout)
    assert m, stdout
    return m.group(2).split()


# ---------------------------------------------------------------- sharding, seeds, schedules


def test_shard_is_distributed_sampler_semantics():
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shards = [distributed.shard(perm, r, 3) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded 10 -> 12
    padded = torch.cat([perm, perm[:2]])
    assert all(torch.equal(s, padded[r::3]) for r, s in enumerate(shards))
    # step k of the 3 ranks (batch B/3 each) == step k of one process with batch B
    b = 6
    step0 = torch.cat([s[: b // 3] for s in shards])
    assert sorted(step0.tolist()) == sorted(padded[:b].tolist())
    sampler = torch.utils.data.DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=False)
    assert list(sampler) == distributed.shard(torch.arange(10), 1, 3).tolist()
    assert torch.equal(distributed.shard(perm, 0, 1), perm)
    ev = [distributed.shard_eval(10, r, 3) for r in range(3)]
    assert sorted(torch.cat(ev).tolist()) == list(range(10))  # eval: disjoint, no padding


def test_seeds_per_rank_and_lr_milestones():
    # rank 0's streams are the single-process ones (old runs resume identically)
    assert grad_seed(5, 3, 0) == derive_seed(5, 3, 0, "gradq")
    assert len({grad_seed(5, 3, r) for r in range(4)}) == 4
    assert grad_seed(5, 3, 1) != grad_seed(5, 4, 1)
    cfg = TrainConfig(lr=2e-4, epochs=90, lr_milestones=((60, 0.2), (75, 0.2)))
    assert [lr_at(cfg, e) for e in (0, 59, 60, 74, 75, 89)] == pytest.approx(
        [2e-4, 2e-4, 4e-5, 4e-5, 8e-6, 8e-6]
    )
    assert lr_at(TrainConfig(lr=1e-3, epochs=4), 2) == pytest.approx(5e-4)  # paper's default


# ---------------------------------------------------------------- recipes and the CLI


def test_recipe_fills_only_what_was_not_given():
    argv = [
        "train",
        "--model",
        "alexnet",
        "--data",
        "imagefolder:/x",
        "--bits",
        "1,2,6",
        "--recipe",
        "alexnet-imagenet",
        "--batch-size",
        "4",
    ]
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args, explicit_train_options(argv[1:]))
    assert cfg.batch_size == 4 and cfg.lr == 2e-4 and cfg.adam_eps == 1e-5
    assert cfg.optimizer == "adam" and cfg.epochs == 90 and cfg.recipe == "alexnet-imagenet"
    assert cfg.weight_decay == 5e-6 and cfg.weight_decay_on == "linear"
    argv = ["train", "--data", "imagefolder:/x", "--recipe", "resnet18-imagenet", "--lr", "0.05"]
    cfg = config_from_args(build_parser().parse_args(argv), explicit_train_options(argv[1:]))
    assert cfg.model == "resnet18" and cfg.optimizer == "sgd" and cfg.nesterov
    assert cfg.lr == 0.05 and cfg.batch_size == 256
    with pytest.raises(ValueError, match="recipe alexnet-imagenet is for --model alexnet"):
        apply_recipe({"model": "svhn"}, {"model"}, "alexnet-imagenet")
    assert set(list_recipes()) == {"alexnet-imagenet", "resnet18-imagenet", "svhn-fashion-mnist"}
    # without --recipe the defaults are the old ones (single group Adam, paper schedule)
    argv = ["train", "--epochs", "2"]
    cfg = config_from_args(build_parser().parse_args(argv), explicit_train_options(argv[1:]))
    assert (cfg.optimizer, cfg.lr_milestones, cfg.weight_decay_on) == ("adam", None, "all")


@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory):
    """3 classes x 2 JPEGs (train) and x 1 (val), odd sizes, written here."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        for c, name in enumerate(("n01", "n02", "n03")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = 60 + 7 * i + c, 80 - 5 * i
                arr = (rng.random((h, w, 3)) * 80 + 60 * c).astype(np.uint8)
                Image.fromarray(arr).save(root / split / name / f"img{i}.JPEG", quality=90)
    return root


@pytest.mark.parametrize(
    "recipe,model", [("alexnet-imagenet", "alexnet"), ("resnet18-imagenet", "resnet18")]
)
def test_imagenet_recipes_end_to_end(recipe, model, tiny_imagefolder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--model",
        model,
        "--data",
        f"imagefolder:{tiny_imagefolder}",
        "--bits",
        "1,2,6",
        "--recipe",
        recipe,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--subset",
        "6",
        "--width",
        "0.125",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == recipe and config["batch_size"] == 4 and config["epochs"] == 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])
    assert rows[0]["lr"] == pytest.approx(2e-4 if model == "alexnet" else 0.1)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == (
        [5e-6, 0.0] if model == "alexnet" else [1e-4, 0.0]
    )
    assert "momentum_buffer" in str(ckpt["optimizer"]["state"]) or model == "alexnet"


def test_weight_decay_on_float_layers_only():
    """weight_decay_on="float": the first conv and last linear of a quantized model (w_bits 32),
    every conv/linear weight of a float one; never BN or the quantized layers' latent weights."""
    from dorefa.models import create_model
    from dorefa.optim import build_optimizer

    for bits, n_decayed in (((1, 2, 6), 2), ((32, 32, 32), 8)):
        cfg = config_with_recipe("svhn-fashion-mnist", bits=Bits(*bits), width=0.125)
        model = create_model("svhn", bits=Bits(*bits), width=0.125)
        decayed, rest = build_optimizer(cfg, model).param_groups
        assert decayed["weight_decay"] == 1e-4 and rest["weight_decay"] == 0.0
        assert len(decayed["params"]) == n_decayed
        assert all(p.dim() in (2, 4) for p in decayed["params"])


def test_recipe_from_python():
    cfg = config_with_recipe("alexnet-imagenet", epochs=1, data="imagefolder:/x")
    assert cfg.model == "alexnet" and cfg.epochs == 1 and cfg.batch_size == 256


# ---------------------------------------------------------------- autocast keeps quantizers exact


def test_quantizers_exact_under_autocast():
    torch.manual_seed(0)
    conv = QConv2d(3, 8, 3, padding=1, w_bits=2)
    lin = QLinear(8, 4, w_bits=1)
    act, gq = ActQuant(2), GradQuant(4, torch.Generator().manual_seed(1))
    bn = torch.nn.BatchNorm2d(8)
    x = torch.rand(4, 3, 6, 6)
    seen = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv.quantized_weight().dtype == torch.float32
        assert torch.equal(conv.quantized_weight(), quantize_weight(conv.weight, 2))
        assert torch.equal(lin.quantized_weight(), quantize_weight(lin.weight, 1))
        h = gq(conv(x.requires_grad_()))
        h.register_hook(lambda g: seen.update(grad_dtype=g.dtype))
        assert h.dtype == torch.float32  # conv product in bf16, handed back in float32
        y = act(bn(h))
        z = torch.randn(5, 7).to(torch.bfloat16)
        q = act(z)
    assert y.dtype == torch.float32
    levels = torch.tensor([0.0, 1.0, 2.0, 3.0]) / 3  # the float32 levels, exactly
    assert torch.isin(y, levels).all()
    assert q.dtype == torch.float32 and torch.equal(q, quantize_activation(z.float(), 2))
    y.sum().backward()
    assert seen["grad_dtype"] == torch.float32  # f_g quantizes a float32 gradient


# ---------------------------------------------------------------- SyncBatchNorm on CPU (gloo)

_SYNC_BN_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from dorefa.distributed import convert_sync_batchnorm
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    x = torch.randn(8, 5, 3, 3)
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5); bn.bias.uniform_(-1, 1)
    ref = torch.nn.BatchNorm2d(5); ref.load_state_dict(bn.state_dict())
    sync = convert_sync_batchnorm(torch.nn.Sequential(bn), "cpu")
    xr = x[4 * rank:4 * rank + 4].clone().requires_grad_()
    w = torch.arange(8 * 5 * 9, dtype=torch.float32).view(8, 5, 3, 3).sin()
    (sync(xr) * w[4 * rank:4 * rank + 4]).sum().backward()
    xf = x.clone().requires_grad_()
    yf = ref(xf); (yf * w).sum().backward()
    err = (xr.grad - xf.grad[4 * rank:4 * rank + 4]).abs().max().item()
    dw = torch.zeros(5); dw.copy_(sync[0].weight.grad); dist.all_reduce(dw)
    dstat = max((sync[0].running_mean - ref.running_mean).abs().max().item(),
                (sync[0].running_var - ref.running_var).abs().max().item())
    print(f"rank {rank} dx {err:.2e} dweight {(dw - ref.weight.grad).abs().max().item():.2e} "
          f"stats {dstat:.2e}")
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
""")


def test_cpu_sync_batchnorm_equals_full_batch(tmp_path):
    """Two ranks with 4 samples each, SyncBN, give the gradients and running statistics of one
    BatchNorm over all 8 samples (to float32 rounding)."""
    script = tmp_path / "sync_bn.py"
    script.write_text(_SYNC_BN_SCRIPT)
    for text in run_two_ranks(script, _env()):
        m = re.search(r"dx (\S+) dweight (\S+) stats (\S+)", text)
        assert m, text
        assert max(float(v) for v in m.groups()) < 1e-5, text


# ---------------------------------------------------------------- 2-process training


def test_two_processes_match_one_process(tmp_path, fashion_dir):
    """Bits 32,32,32 (no f_g noise, whose stream is per rank), no augmentation, --sync-bn (BN
    statistics of the global 64-image batch, as in one process): the 2-process run sees the same
    images per step and the same normalisation; what still differs is the dropout mask (the svhn
    model's dropout 0.5 draws from each rank's own stream) and float summation order. Measured:
    |train-loss difference| ~0.03 with --sync-bn (~0.05 without); the tolerance is 0.1, far
    below what a wrong shard/batch split gives (loss of an untrained model ~2.3, it moves by
    ~0.45 in this epoch)."""
    common = TINY + ["--bits", "32,32,32", "--augment", "none", "--epochs", "1"]
    out = _run_dorefa(
        ["train", "--nproc", "2", "--sync-bn", *common, "--out", str(tmp_path / "ddp")]
    )
    hashes = _replica_hashes(out)
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    cfg = TrainConfig(
        model="svhn",
        width=0.25,
        subset=512,
        test_subset=200,
        batch_size=64,
        threads=1,
        bits="32,32,32",
        augment="none",
        epochs=1,
        out=str(tmp_path / "single"),
        progress=False,
    )
    single = train(cfg, log=lambda m: None)
    ddp = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size_per_rank"] == 32
    assert config["backend"] == "gloo"
    assert abs(ddp["train_loss"] - single["train_loss"]) < 0.1
    assert abs(ddp["train_loss"] - 2.3) > 0.2  # it trained
    # rank 0 alone wrote the run folder; its checkpoint holds the replicas' weights
    assert {"metrics.jsonl", "config.json", "checkpoint.pt", "curves.png"} <= set(
        os.listdir(tmp_path / "ddp")
    )
    model = model_from_checkpoint(load_checkpoint(tmp_path / "ddp" / "checkpoint.pt"))
    assert distributed.state_hash(model.train()) == hashes[0]


def test_two_process_resume_continues(tmp_path, fashion_dir):
    """(1,2,6): per-rank f_g noise, yet the replicas stay identical (gradients are all-reduced);
    a second 2-process run with --resume loads rank 0's checkpoint on both ranks and continues."""
    out = tmp_path / "run"
    common = TINY + ["--bits", "1,2,6", "--nproc", "2", "--out", str(out)]
    first = _run_dorefa(["train", *common, "--epochs", "1"])
    h1 = _replica_hashes(first)
    assert h1[0] == h1[1]
    second = _run_dorefa(["train", *common, "--epochs", "2", "--resume"])
    assert "resuming" in second and "from epoch 2/2" in second
    assert "epoch 1/2" not in second  # epoch 1 was not trained again
    h2 = _replica_hashes(second)
    assert h2[0] == h2[1] != h1[0]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_only_a_launched_worker_joins_a_process_group(monkeypatch):
    """setup() joins a group only when a launcher set WORLD_SIZE, RANK, MASTER_ADDR and
    MASTER_PORT; a stray rendezvous variable (a cluster's environment, WORLD_SIZE unset) leaves
    a plain run, and a sweep's cells do not inherit a launcher's variables."""
    from dorefa.sweep.children import child_env

    for k in say.LAUNCHER_VARS:
        monkeypatch.delenv(k, raising=False)
    partial = [
        {"MASTER_PORT": "29500"},
        {"RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},  # no WORLD_SIZE
        {"WORLD_SIZE": "2", "RANK": "0"},  # no rendezvous
    ]
    for env in partial:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert not distributed.launched()
            assert distributed.setup("cpu") == distributed.DistInfo()  # no group, no init
    full = {"WORLD_SIZE": "1", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for k, v in full.items():
        monkeypatch.setenv(k, v)
    assert distributed.launched()
    assert not set(say.LAUNCHER_VARS) & set(child_env())


def test_torchrun_group_of_one_equals_a_plain_run(tmp_path, fashion_dir):
    """``torchrun --nproc_per_node 1`` (WORLD_SIZE=1 with a rendezvous) joins a process group of
    one and trains through DDP; with one rank the all-reduced gradients are the rank's own, so
    the weights equal a plain run's bit for bit (1,2,6: f_g noise from rank 0's stream)."""
    common = TINY + ["--bits", "1,2,6", "--epochs", "1"]
    env = _env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    env["MASTER_PORT"] = str(distributed._free_port())
    args = [sys.executable, "-m", "dorefa", "train", *common, "--out", str(tmp_path / "one")]
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(_replica_hashes(p.stdout)) == 1
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    assert config["world_size"] == 1 and config["backend"] == "gloo"
    _run_dorefa(["train", *common, "--out", str(tmp_path / "plain")])
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert plain["world_size"] == 1 and "backend" not in plain  # the plain run joined no group
    hashes = [
        distributed.state_hash(
            model_from_checkpoint(load_checkpoint(tmp_path / d / "checkpoint.pt"))
        )
        for d in ("one", "plain")
    ]
    assert hashes[0] == hashes[1]


def test_a_locked_run_folder_stops_every_rank(tmp_path, fashion_dir):
    """Rank 0 alone takes the folder's lock; had the others not learnt that it failed, they would
    have waited in their first collective (gloo's 30-minute timeout) and the lock's message
    would have been lost to the barrier's error."""
    from dorefa.fileio import FolderLock

    out = tmp_path / "held"
    lock = FolderLock(out, "`dorefa train`")
    lock.acquire()  # a run training in the folder
    try:
        p = subprocess.run(
            [sys.executable, "-m", "dorefa", "train", *TINY, "--nproc", "2", "--out", str(out)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        lock.release()
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.count(f"being written by `dorefa train` (process {os.getpid()})") == 1
    assert p.stderr.count("dorefa train: error") == 1, p.stderr  # rank 1's not repeated
    assert sorted(os.listdir(out)) == [".lock"]  # nothing else read or written
