"""The training loop: ``dorefa train``.

Adam with the paper's schedule (lr halves at 50% of the epochs), one checkpoint per epoch written
atomically, ``--resume`` that reproduces an uninterrupted run bit for bit (every random stream is
re-derived from (seed, epoch, rank) at the start of each epoch), metrics.jsonl, config.json and
curves.png in the run folder.
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

from .bits import Bits
from .checkpoint import (FORMAT, VERSION, CheckpointError, load_checkpoint, load_weights,
                         save_atomic)
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
    extra: dict = field(default_factory=dict)  # free-form, recorded in config.json

    def resolved_bits(self) -> Bits:
        return Bits.parse(self.bits)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from (seed, epoch, rank, purpose): independent, reproducible streams."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode()[:8].ljust(8, b"\0"), "little")
             for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The paper's schedule: lr, halved from 50% of the epochs on."""
    return cfg.lr * (0.5 if epoch >= max(1, cfg.epochs // 2) and cfg.epochs > 1 else 1.0)


def iterate_batches(dataset, indices: torch.Tensor, batch_size: int, workers: int = 0):
    """Yield (uint8 images (B,C,H,W), int64 labels) for ``indices`` in order.

    In-memory datasets are sliced directly (fast); others go through a DataLoader."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            yield dataset.images[idx], dataset.labels[idx]
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
        num_workers=workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=False)
    yield from loader


@torch.no_grad()
def evaluate(model: nn.Module, dataset, image_size: int, batch_size: int = 500,
             device: torch.device | str = "cpu", workers: int = 0) -> dict:
    """Accuracy (fraction) and mean cross-entropy of ``model`` (eval mode) on ``dataset``."""
    from .data import to_model_input

    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    indices = torch.arange(len(dataset))
    for images, labels in iterate_batches(dataset, indices, batch_size, workers):
        x = to_model_input(images.to(device), image_size, train=False, augment="none",
                           generator=None)
        labels = labels.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
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
    return create_model(cfg.model, bits=cfg.resolved_bits(), num_classes=num_classes,
                        in_channels=in_channels, width=cfg.width,
                        keep_first_last=cfg.keep_first_last)


def model_meta(cfg: TrainConfig, num_classes: int, in_channels: int, image_size: int) -> dict:
    return {"model": cfg.model, "bits": str(cfg.resolved_bits()), "width": cfg.width,
            "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
            "keep_first_last": cfg.keep_first_last, "data": cfg.data}


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
    """Run (or resume) a training run; returns the last epoch's metrics plus ``best_test_acc``."""
    bits = cfg.resolved_bits()
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise ValueError(f"{out} already holds a run (checkpoint.pt); pass --resume to continue "
                         "it or choose another --out")

    from .data import default_augment

    train_set, test_set = load_data(cfg, input_size(cfg.model))
    num_classes, in_channels = train_set.num_classes, train_set.in_channels
    augment = cfg.augment or default_augment(train_set.name)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg, num_classes, in_channels).to(device)
    image_size = model.input_size
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = model_meta(cfg, num_classes, in_channels, image_size)

    start_epoch, best_acc, history = 0, 0.0, []
    if cfg.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        if ckpt["meta"] != meta:
            raise CheckpointError(f"{ckpt_path}: was made with {ckpt['meta']}, which differs from "
                                  f"this run's {meta}; use the same arguments to resume")
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

    out.mkdir(parents=True, exist_ok=True)
    config_dict = dataclasses.asdict(cfg) | {"bits": str(bits), "bits_tag": bits.tag,
                                             "augment": augment, "image_size": image_size,
                                             "num_classes": num_classes,
                                             "in_channels": in_channels,
                                             "device": str(device),
                                             "torch_threads": torch.get_num_threads(),
                                             "torch_version": torch.__version__}
    (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    metrics_path = out / "metrics.jsonl"
    if metrics_path.exists():  # keep only epochs that the checkpoint covers
        lines = [ln for ln in metrics_path.read_text().splitlines() if ln.strip()]
        history = [json.loads(ln) for ln in lines]
        history = [h for h in history if h["epoch"] <= start_epoch]
    with open(metrics_path, "w") as f:
        f.writelines(json.dumps(h) + "\n" for h in history)

    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    n_train = len(train_set)
    result: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        # Every random stream restarts from (seed, epoch): resume == uninterrupted run.
        torch.manual_seed(derive_seed(cfg.seed, epoch, 0, "torch"))
        shuffle = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, "shuffle"))
        aug_gen = torch.Generator(device).manual_seed(derive_seed(cfg.seed, epoch, 0, "augment"))
        grad_gen = torch.Generator(device).manual_seed(derive_seed(cfg.seed, epoch, 0, "gradq"))
        set_grad_generator(model, grad_gen)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch, cfg.seed)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)

        model.train()
        perm = torch.randperm(n_train, generator=shuffle)
        bar = _Progress(n_train, f"epoch {epoch + 1}/{cfg.epochs}", show)
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for images, labels in iterate_batches(train_set, perm, cfg.batch_size, cfg.workers):
            x = to_input(images.to(device, non_blocking=True), image_size, augment, aug_gen)
            labels = labels.to(device, non_blocking=True)
            if labels.numel() < 2 and seen > 0:
                continue  # BatchNorm cannot train on one sample (1x1 maps); drop the remainder
            logits = model(x)
            loss = F.cross_entropy(logits, labels)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; "
                                         "lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = labels.numel()
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == labels).sum().item()
            seen += n
            bar.update(n, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                       img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        train_seconds = time.perf_counter() - t0
        ev = evaluate(model, test_set, image_size, cfg.eval_batch_size, device, cfg.workers)
        best_acc = max(best_acc, ev["acc"])
        result = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                  "test_loss": ev["loss"], "test_acc": ev["acc"], "best_test_acc": best_acc,
                  "lr": lr_at(cfg, epoch), "seconds": time.perf_counter() - t0,
                  "train_seconds": train_seconds, "images_per_s": seen / train_seconds}
        save_atomic({"format": FORMAT, "version": VERSION, "meta": meta,
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "epoch": epoch, "best_acc": best_acc, "rng": _rng_state(),
                     "config": json.loads(json.dumps(config_dict))}, ckpt_path)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(result) + "\n")
        history.append(result)
        log(f"epoch {epoch + 1}/{cfg.epochs}  train_loss {result['train_loss']:.4f}  "
            f"train_acc {result['train_acc']:.4f}  test_acc {result['test_acc']:.4f}  "
            f"{result['seconds']:.1f}s  {result['images_per_s']:.0f} img/s")
        plot_curves(history, out / "curves.png", title=f"{cfg.model} {bits.tag}")
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
