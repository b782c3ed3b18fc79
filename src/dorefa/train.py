"""The training loop: ``dorefa train``.

Adam with the paper's schedule (lr halves at 50% of the epochs), one checkpoint per epoch written
atomically, ``--resume`` that reproduces an uninterrupted run bit for bit (every random stream is
re-derived from (seed, epoch, rank) at the start of each epoch), metrics.jsonl, config.json and
curves.png in the run folder.

Data-parallel (see dorefa.distributed and docs/distributed.md): under torchrun (or ``--nproc``)
every rank trains a DistributedDataParallel replica on its shard of the epoch's permutation with
``batch_size / world_size`` images per step; its augmentation, dropout and gradient-quantization
noise streams are derived from (seed, epoch, rank); rank 0 alone writes the run folder. Options
for speed: ``amp`` (bf16/fp16 autocast; the quantizers themselves always run in float32) and
``channels_last``. Recipes (dorefa.recipes) set optimizer, schedule and weight decay.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import distributed
from .bits import Bits
from .checkpoint import FORMAT, VERSION, CheckpointError, load_checkpoint, load_weights, save_atomic
from .models import create_model, input_size
from .nn import set_grad_generator


@dataclass
class TrainConfig:
    model: str = "svhn"  # registered model name (dorefa.models.list_models())
    data: str = "fashion-mnist"  # dataset spec, see dorefa.data.get_dataset
    data_dir: str | None = None  # overrides the dataset's default folder
    bits: str = "1,2,6"  # W,A,G; 32 = float
    width: float = 1.0  # channel multiplier (0.5/0.25/0.125: the paper's models B/C/D)
    keep_first_last: bool = True  # float first conv and last linear (the paper's default)
    epochs: int = 5
    batch_size: int = 128  # global batch size
    lr: float = 1e-3  # Adam; halved at 50% of the epochs (the paper's schedule)
    weight_decay: float = 0.0
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None = torch's default
    subset: int | None = None  # first N training images only
    test_subset: int | None = None  # first N test images only
    augment: str | None = None  # None = the dataset's default (see dorefa.data.default_augment)
    out: str = "runs/default"
    resume: bool = False
    init_from: str | None = None  # checkpoint whose (float) weights initialise this model
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 0  # DataLoader workers (for image folders)
    eval_batch_size: int = 500
    progress: bool | None = None  # tqdm bar; None = only when stderr is a terminal
    optimizer: str = "adam"  # adam | sgd (momentum SGD)
    adam_eps: float = 1e-8  # Adam's epsilon (tensorpack's AlexNet: 1e-5)
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    lr_milestones: tuple | None = None  # ((epoch, factor), ...): lr *= factor from that 0-based
    #                                     epoch on; None = the paper's halving at 50% of epochs
    weight_decay_on: str = "all"  # all params | weights (conv+linear weights) | linear (fc weights)
    amp: str | None = None  # None | bf16 | fp16 (CUDA only): autocast of the forward pass
    channels_last: bool = False  # NHWC memory format for model and input
    sync_bn: bool = False  # data-parallel: BatchNorm statistics over the global batch
    recipe: str | None = None  # name of the recipe that filled the defaults (recorded only)
    extra: dict = field(default_factory=dict)  # free-form, recorded in config.json

    def resolved_bits(self) -> Bits:
        return Bits.parse(self.bits)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from (seed, epoch, rank, purpose): independent, reproducible
    streams."""
    words = [
        p if isinstance(p, int) else int.from_bytes(p.encode()[:8].ljust(8, b"\0"), "little")
        for p in parts
    ]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu"
        )
    return device


def grad_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the GradQuant noise generator of ``rank`` in ``epoch``: independent per rank (each
    replica quantizes its own gradients), re-derived per epoch (resume == uninterrupted run)."""
    return derive_seed(seed, epoch, rank, "gradq")


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: with ``lr_milestones``, lr times the factors of
    every milestone reached (tensorpack's ScheduledHyperParamSetter: a value set "at epoch 60"
    applies from the 61st epoch, 0-based 60, on); otherwise the paper's schedule, lr halved from
    50% of the epochs on."""
    if cfg.lr_milestones:
        lr = cfg.lr
        for start, factor in cfg.lr_milestones:
            if epoch >= int(start):
                lr *= float(factor)
        return lr
    return cfg.lr * (0.5 if epoch >= max(1, cfg.epochs // 2) and cfg.epochs > 1 else 1.0)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None: float32)."""
    if amp in (None, "", "none", "fp32"):
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs CUDA (CPU autocast supports bf16 only); use --amp bf16")
    return AMP_DTYPES[amp]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or momentum SGD; weight decay on all parameters (one group, the default) or only on
    conv+linear weights / linear weights (``weight_decay_on``; two groups, decayed first)."""
    if cfg.weight_decay_on not in ("all", "weights", "linear"):
        raise ValueError(
            f"weight_decay_on must be all, weights or linear, got {cfg.weight_decay_on!r}"
        )
    if cfg.weight_decay_on == "all":
        params: list = list(model.parameters())
        wd = cfg.weight_decay
    else:
        kinds = (nn.Linear,) if cfg.weight_decay_on == "linear" else (nn.Linear, nn.Conv2d)
        decayed = {id(m.weight) for m in model.modules() if isinstance(m, kinds)}
        params = [
            {
                "params": [p for p in model.parameters() if id(p) in decayed],
                "weight_decay": cfg.weight_decay,
            },
            {
                "params": [p for p in model.parameters() if id(p) not in decayed],
                "weight_decay": 0.0,
            },
        ]
        wd = 0.0
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd, eps=cfg.adam_eps)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd
        )
    raise ValueError(f"optimizer must be adam or sgd, got {cfg.optimizer!r}")


def iterate_batches(
    dataset,
    indices: torch.Tensor,
    batch_size: int,
    workers: int = 0,
    pin_memory: bool | None = None,
):
    """Yield (uint8 images (B,C,H,W), int64 labels) for ``indices`` in order.

    In-memory datasets are sliced directly (fast); others go through a DataLoader (``workers``
    processes; pinned memory by default when CUDA is available)."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            yield dataset.images[idx], dataset.labels[idx]
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=False,
    )
    yield from loader


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    image_size: int,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    workers: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict:
    """Accuracy (fraction) and mean cross-entropy of ``model`` (eval mode) on ``dataset``.

    With ``world_size > 1`` (inside a process group) each rank evaluates the disjoint shard
    rank, rank + W, ... and the sums are all-reduced: every rank returns the global metrics."""
    from .data import to_model_input

    was_training = model.training
    model.eval()
    device = torch.device(device)
    correct, total, loss_sum = 0, 0, 0.0
    indices = (
        distributed.shard_eval(len(dataset), rank, world_size)
        if world_size > 1
        else torch.arange(len(dataset))
    )
    for images, labels in iterate_batches(dataset, indices, batch_size, workers):
        x = to_model_input(
            images.to(device), image_size, train=False, augment="none", generator=None
        )
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device)
        with torch.autocast(
            device.type, dtype=autocast or torch.float32, enabled=autocast is not None
        ):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    if world_size > 1:
        loss_sum, correct, total = distributed.all_reduce_sum([loss_sum, correct, total], device)
        correct, total = int(correct), int(total)
    return {"acc": correct / max(total, 1), "loss": loss_sum / max(total, 1), "n": total}


def load_data(cfg: TrainConfig, image_size: int):
    from .data import get_dataset

    train_set = get_dataset(cfg.data, "train", data_dir=cfg.data_dir, image_size=image_size)
    test_set = get_dataset(cfg.data, "test", data_dir=cfg.data_dir, image_size=image_size)
    if cfg.subset is not None:
        if cfg.subset < 1:
            raise ValueError(f"--subset must be a positive number of images, got {cfg.subset}")
        train_set = train_set.subset(min(cfg.subset, len(train_set)))
    if cfg.test_subset is not None:
        test_set = test_set.subset(min(cfg.test_subset, len(test_set)))
    return train_set, test_set


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    return create_model(
        cfg.model,
        bits=cfg.resolved_bits(),
        num_classes=num_classes,
        in_channels=in_channels,
        width=cfg.width,
        keep_first_last=cfg.keep_first_last,
    )


def model_meta(cfg: TrainConfig, num_classes: int, in_channels: int, image_size: int) -> dict:
    return {
        "model": cfg.model,
        "bits": str(cfg.resolved_bits()),
        "width": cfg.width,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "keep_first_last": cfg.keep_first_last,
        "data": cfg.data,
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


class _Progress:
    """tqdm bar on a terminal; otherwise silent (a summary line per epoch is printed instead)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)

    def update(self, n: int, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) a training run; returns the last epoch's metrics plus ``best_test_acc``.

    Inside a torchrun-style environment (WORLD_SIZE > 1) this process is one data-parallel rank:
    it joins the process group, trains its shard, and only rank 0 logs and writes files."""
    cfg.resolved_bits()
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp_dtype(cfg.amp, device)  # validate before joining a process group
    info = distributed.setup(device.type)
    try:
        if info.enabled and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", info.local_rank)
        return _train(cfg, log if info.is_main else (lambda msg: None), device, info)
    finally:
        distributed.teardown(info)


def _train(cfg: TrainConfig, log, device: torch.device, info: distributed.DistInfo) -> dict:
    bits = cfg.resolved_bits()
    rank, world = info.rank, info.world_size
    if cfg.batch_size % world:
        raise ValueError(
            f"--batch-size {cfg.batch_size} (the global batch) must be divisible by "
            f"the {world} processes"
        )
    local_batch = cfg.batch_size // world
    autocast = amp_dtype(cfg.amp, device)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise ValueError(
            f"{out} already holds a run (checkpoint.pt); pass --resume to continue "
            "it or choose another --out"
        )

    from .data import default_augment

    train_set, test_set = load_data(cfg, input_size(cfg.model))
    num_classes, in_channels = train_set.num_classes, train_set.in_channels
    augment = cfg.augment or default_augment(train_set.name)
    if device.type == "cuda" and hasattr(train_set, "images"):
        train_set.images = train_set.images.pin_memory()  # non_blocking copies of batch slices
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg, num_classes, in_channels).to(device)
    image_size = model.input_size
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and info.enabled:
        model = distributed.convert_sync_batchnorm(model, device.type)
    optimizer = build_optimizer(cfg, model)
    meta = model_meta(cfg, num_classes, in_channels, image_size)

    start_epoch, best_acc, history = 0, 0.0, []
    if cfg.resume and ckpt_path.exists():
        # Every rank reads rank 0's checkpoint (one shared run folder).
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        if ckpt["meta"] != meta:
            raise CheckpointError(
                f"{ckpt_path}: was made with {ckpt['meta']}, which differs from "
                f"this run's {meta}; use the same arguments to resume"
            )
        load_weights(model, ckpt["model"], ckpt_path)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{ckpt_path}: optimizer state does not fit: {exc}") from None
        start_epoch, best_acc = int(ckpt["epoch"]) + 1, float(ckpt.get("best_acc", 0.0))
        log(f"resuming {out} from epoch {start_epoch + 1}/{cfg.epochs}")
    elif cfg.init_from:
        init = load_checkpoint(cfg.init_from, map_location=device)
        load_weights(model, init["model"], cfg.init_from)
        log(f"initialised weights from {cfg.init_from}")

    net: nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    scaler = torch.amp.GradScaler("cuda") if autocast == torch.float16 else None

    config_dict = dataclasses.asdict(cfg) | {
        "bits": str(bits),
        "bits_tag": bits.tag,
        "augment": augment,
        "image_size": image_size,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    if info.enabled:
        config_dict |= {
            "world_size": world,
            "backend": info.backend,
            "batch_size_per_rank": local_batch,
        }
    metrics_path = out / "metrics.jsonl"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
        if metrics_path.exists():  # keep only epochs that the checkpoint covers
            lines = [ln for ln in metrics_path.read_text().splitlines() if ln.strip()]
            history = [json.loads(ln) for ln in lines]
            history = [h for h in history if h["epoch"] <= start_epoch]
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)

    show = (cfg.progress if cfg.progress is not None else sys.stderr.isatty()) and info.is_main
    n_train = len(train_set)
    result: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        # Every random stream restarts from (seed, epoch[, rank]): resume == uninterrupted run.
        # The permutation is shared by all ranks; augmentation, dropout and f_g noise are per rank.
        torch.manual_seed(derive_seed(cfg.seed, epoch, rank, "torch"))
        shuffle = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, "shuffle"))
        aug_gen = torch.Generator(device).manual_seed(derive_seed(cfg.seed, epoch, rank, "augment"))
        grad_gen = torch.Generator(device).manual_seed(grad_seed(cfg.seed, epoch, rank))
        set_grad_generator(model, grad_gen)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch, cfg.seed)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)

        net.train()
        perm = torch.randperm(n_train, generator=shuffle)
        mine = distributed.shard(perm, rank, world)
        bar = _Progress(len(mine) * world, f"epoch {epoch + 1}/{cfg.epochs}", show)
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for images, labels in iterate_batches(
            train_set, mine, local_batch, cfg.workers, pin_memory=device.type == "cuda"
        ):
            x = to_input(images.to(device, non_blocking=True), image_size, augment, aug_gen)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            if labels.numel() < 2 and seen > 0:
                # BatchNorm cannot train on one sample (1x1 maps); drop the remainder. Shards
                # have equal sizes, so every rank drops the same step.
                continue
            if autocast is None:
                logits = net(x)
                loss = F.cross_entropy(logits, labels)
            else:
                with torch.autocast(device.type, dtype=autocast):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), labels)
            loss_value = loss.item()  # one device sync per step, used below too
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss became {loss_value} at epoch {epoch + 1}; lower --lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            n = labels.numel()
            loss_sum += loss_value * n
            correct += (logits.argmax(1) == labels).sum().item()
            seen += n
            bar.update(
                n * world,
                loss=f"{loss_sum / seen:.3f}",
                acc=f"{correct / seen:.3f}",
                img_s=f"{seen * world / (time.perf_counter() - t0):.0f}",
            )
        bar.close()
        if info.enabled:
            distributed.broadcast_buffers(model)  # rank 0's BN running stats everywhere
            loss_sum, correct, seen = distributed.all_reduce_sum([loss_sum, correct, seen], device)
            correct, seen = int(correct), int(seen)
        train_seconds = time.perf_counter() - t0
        ev = evaluate(
            model,
            test_set,
            image_size,
            cfg.eval_batch_size,
            device,
            cfg.workers,
            rank=rank,
            world_size=world,
            autocast=autocast,
            channels_last=cfg.channels_last,
        )
        best_acc = max(best_acc, ev["acc"])
        result = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": ev["loss"],
            "test_acc": ev["acc"],
            "best_test_acc": best_acc,
            "lr": lr_at(cfg, epoch),
            "seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds,
            "images_per_s": seen / train_seconds,
        }
        if info.is_main:
            save_atomic(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "meta": meta,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "best_acc": best_acc,
                    "rng": _rng_state(),
                    "config": json.loads(json.dumps(config_dict)),
                },
                ckpt_path,
            )
            with open(metrics_path, "a") as f:
                f.write(json.dumps(result) + "\n")
        history.append(result)
        log(
            f"epoch {epoch + 1}/{cfg.epochs}  train_loss {result['train_loss']:.4f}  "
            f"train_acc {result['train_acc']:.4f}  test_acc {result['test_acc']:.4f}  "
            f"{result['seconds']:.1f}s  {result['images_per_s']:.0f} img/s"
        )
        if info.is_main:
            plot_curves(history, out / "curves.png", title=f"{cfg.model} {bits.tag}")
    if info.enabled:
        hashes = distributed.check_replicas(model)  # raises if the replicas diverged
        log(f"replicas in sync: {world} ranks, weights sha256 {' '.join(hashes)}")
        result["replica_hashes"] = hashes
    if not result and history:
        result = dict(history[-1])
    result["best_test_acc"] = best_acc
    return result


def to_input(images, image_size, augment, generator):
    from .data import to_model_input

    return to_model_input(images, image_size, train=True, augment=augment, generator=generator)


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch (matplotlib, Agg backend)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h.get("test_loss", float("nan")) for h in history], "o-", label="test")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("cross-entropy"), ax1.legend()
    ax2.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [h["test_acc"] for h in history], "o-", label="test")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
