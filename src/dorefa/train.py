"""The training loop: ``dorefa train``.

Adam with the paper's schedule (lr halves at 50% of the epochs; dorefa.optim), one checkpoint
per epoch written atomically (dorefa.checkpoint), ``--resume`` that reproduces an uninterrupted
run bit for bit (every random stream is re-derived from (seed, epoch, rank) at the start of each
epoch; dorefa.seeds), metrics.jsonl, config.json and curves.png in the run folder
(dorefa.run_files). Preparing a run (data, model, optimizer, resume) is dorefa.run.

Data-parallel (see dorefa.distributed and docs/distributed.md): under torchrun (or ``--nproc``)
every rank trains a DistributedDataParallel replica on its shard of the epoch's permutation with
``batch_size / world_size`` images per step; its augmentation, dropout and gradient-quantization
noise streams are derived from (seed, epoch, rank); rank 0 alone writes the run folder. Options
for speed: ``amp`` (bf16/fp16 autocast; the quantizers themselves always run in float32) and
``channels_last``. Recipes (dorefa.recipes) set optimizer, schedule and weight decay.
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from . import checkpoint, distributed
from .cpuinfo import bf16_warning, native_bf16, pick_threads
from .data.batches import iterate_batches
from .nn import set_grad_generator
from .optim import amp_dtype, build_optimizer, lr_at, set_lr, training_done
from .process import keep_freed_memory
from .run import (
    Run,
    build_model,
    load_data,
    model_meta,
    prepare_run,
    resolve_device,
    resume_or_init,
)
from .run_files import plot_curves
from .seeds import EpochStreams, derive_seed, epoch_streams, grad_seed
from .train_config import TrainConfig
from .train_flags import check_config

__all__ = [  # the names other modules and the tests use (some defined in the modules above)
    "TrainConfig",
    "train",
    "fit",
    "train_one_epoch",
    "train_step",
    "evaluate",
    "amp_dtype",
    "build_optimizer",
    "lr_at",
    "derive_seed",
    "grad_seed",
    "resolve_device",
    "load_data",
    "build_model",
    "model_meta",
    "iterate_batches",
    "plot_curves",
]


def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) a training run; returns the last epoch's metrics plus ``best_test_acc``.

    Inside a torchrun-style environment (:func:`dorefa.distributed.setup`) this process is one
    data-parallel rank: it joins the process group, trains its shard, and only rank 0 logs and
    writes files."""
    check_config(cfg)
    keep_freed_memory()  # large tensors reused from the heap, not page-faulted in every step
    threads, threads_line = pick_threads(cfg.threads)
    torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    autocast = amp_dtype(cfg.amp, device)  # validate before joining a process group
    info = distributed.setup(device.type)
    try:
        if info.enabled and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", info.local_rank)
        log = log if info.is_main else _silent
        log(threads_line)
        if autocast == torch.bfloat16 and device.type == "cpu":
            warning = bf16_warning(native_bf16())
            if warning:
                log(warning)
        late = sorted(int(e) for e, _ in cfg.lr_milestones or () if int(e) >= cfg.epochs)
        if late and len(late) == len(cfg.lr_milestones):
            log(
                f"note: --epochs {cfg.epochs} ends before every step of the learning-rate "
                f"schedule (from epoch {', '.join(str(e + 1) for e in late)}): the rate stays "
                f"{cfg.lr:g} unless until-flat epochs reach them"
            )
        run = prepare_run(cfg, device, info)
        with run.files:  # the folder's lock, released at the end (a failed run tidies)
            result = fit(run, log)
    except BaseException:
        try:
            distributed.teardown(info, failed=True)
        except Exception:  # noqa: S110 - the error in flight is the one to report
            pass
        raise
    distributed.teardown(info)
    return result


def _silent(msg: str) -> None:
    pass


def fit(run: Run, log=print) -> dict:
    """The epoch loop: resume, then per epoch re-seed, train, evaluate, record, checkpoint."""
    cfg, info = run.cfg, run.info
    start_epoch, best_acc = resume_or_init(run, log)
    run.files.read_history(start_epoch)
    if training_done(cfg.epochs, cfg.until_flat, _test_accs(run, start_epoch)):
        log(
            f"{run.files.out} has already trained to epoch {start_epoch}: nothing to train "
            f"(give --epochs {start_epoch + 1} or more to extend it)"
        )
        return _end_of_run(run, {}, best_acc, log)
    if start_epoch:
        log(f"resuming {run.files.out} from epoch {start_epoch + 1}/{cfg.epochs}")
        kept = _epoch_lr(run, start_epoch)
        if kept < lr_at(cfg, start_epoch):
            log(
                f"note: --epochs {cfg.epochs} puts the halving of the learning rate at epoch "
                f"{max(1, cfg.epochs // 2) + 1}, but this run has trained at {kept:g} already: "
                "it stays there"
            )
    if cfg.engine == "int":
        from .engine import use_int_engine

        log(use_int_engine(run.model, run.device))
    run.files.start(run.config)
    show = (cfg.progress if cfg.progress is not None else sys.stderr.isatty()) and info.is_main
    result: dict = {}
    epoch = start_epoch
    while not training_done(cfg.epochs, cfg.until_flat, _test_accs(run, epoch)):
        # Every random stream restarts from (seed, epoch[, rank]): resume == uninterrupted run.
        streams = epoch_streams(cfg.seed, epoch, info.rank, run.device)
        set_grad_generator(run.model, streams.grad)
        if hasattr(run.train_set, "set_epoch"):
            run.train_set.set_epoch(epoch, cfg.seed)
        set_lr(run.optimizer, _epoch_lr(run, epoch))
        t0 = time.perf_counter()
        loss_sum, correct, seen = train_one_epoch(run, epoch, streams, show)
        train_seconds = time.perf_counter() - t0
        distributed.together(partial(_check_finite, run.model, epoch), run.info)  # said once
        ev = evaluate_run(run)
        best_acc = max(best_acc, ev["acc"])
        result = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": ev["loss"],
            "test_acc": ev["acc"],
            "best_test_acc": best_acc,
            "lr": _epoch_lr(run, epoch),
            "seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds,
            "images_per_s": seen / train_seconds,
        }
        run.files.add_epoch(result)  # before the checkpoint: a resume drops rows after it
        _save_checkpoint(run, epoch, best_acc)
        log(_epoch_line(cfg, result))
        run.files.plot(title=f"{cfg.model} {cfg.bits.tag}")
        epoch += 1
    return _end_of_run(run, result, best_acc, log)


def _check_loss(run: Run, loss_value: float, epoch: int) -> None:
    """FloatingPointError when the loss is NaN or inf. With several ranks, on the sum of their
    losses (one scalar all-reduce a step, beside DDP's gradients): every rank stops at the same
    step, rank 0 saying why (a NaN in one rank's batch had stopped that rank alone, and the
    others had waited for it in their backward)."""
    world = run.info.world_size
    if run.info.enabled:
        loss_value = distributed.all_reduce_sum([loss_value], run.device)[0] / world
    if not math.isfinite(loss_value):
        error = FloatingPointError(
            f"loss became {loss_value} at epoch {epoch + 1}; lower --lr or check the data"
        )
        raise distributed.raised_once(error, run.info)


def _check_finite(model: nn.Module, epoch: int) -> None:
    """FloatingPointError when a weight or statistic is NaN or inf after an epoch: the run
    diverged with a finite loss (lr 1e30: loss 8e31, BN variance inf), and its checkpoint,
    reported as a success, could not be evaluated. The last epoch's checkpoint is kept."""
    name = checkpoint.nonfinite_entry(model)
    if name is not None:
        raise FloatingPointError(
            f"{name} became NaN or inf in epoch {epoch + 1}: the run diverged; lower --lr "
            "(the checkpoint of the epoch before, if any, is kept)"
        )


def _epoch_lr(run: Run, epoch: int) -> float:
    """``lr_at``, except that the paper's schedule (lr halved from half of the epochs on) stays
    halved once the run has trained at half: an --epochs extended on --resume moves the halving
    later, and the rate had gone back up, unsaid. Milestones do not depend on --epochs."""
    cfg = run.cfg
    if cfg.lr_milestones:
        return lr_at(cfg, epoch)
    halved = any(float(h.get("lr", cfg.lr)) < cfg.lr for h in run.files.history[:epoch])
    return cfg.lr * 0.5 if halved else lr_at(cfg, epoch)


def _test_accs(run: Run, epochs_run: int) -> list[float]:
    """The test accuracies of the first ``epochs_run`` epochs (every rank reads the same
    metrics rows, so every rank decides alike whether to continue)."""
    accs = [h["test_acc"] for h in run.files.history[:epochs_run]]
    return accs if len(accs) == epochs_run else [float("nan")] * epochs_run


def _save_checkpoint(run: Run, epoch: int, best_acc: float) -> None:
    if run.info.is_main:
        checkpoint.save(
            run.files.checkpoint,
            meta=run.meta,
            model=run.model,
            optimizer=run.optimizer,
            epoch=epoch,
            best_acc=best_acc,
            config=run.config,
        )


def _end_of_run(run: Run, result: dict, best_acc: float, log) -> dict:
    """Check that data-parallel replicas agree; the result of a run with nothing left to train
    is its last recorded epoch."""
    if run.info.enabled:
        hashes = distributed.check_replicas(run.model)  # raises if the replicas diverged
        ranks = f"{run.info.world_size} rank{'s' if run.info.world_size > 1 else ''}"
        log(f"replicas in sync: {ranks}, weights sha256 {' '.join(hashes)}")
        result["replica_hashes"] = hashes
    if not result and run.files.history:
        result = dict(run.files.history[-1])
    if "test_acc" not in result and not run.info.enabled:  # nothing trained, no metrics.jsonl
        ev = evaluate_run(run)
        result |= {"test_acc": ev["acc"], "test_loss": ev["loss"]}
    result["best_test_acc"] = best_acc
    return result


def _epoch_line(cfg: TrainConfig, r: dict) -> str:
    more = " (until flat)" if r["epoch"] > cfg.epochs else ""
    return (
        f"epoch {r['epoch']}/{cfg.epochs}{more}  train_loss {r['train_loss']:.4f}  "
        f"train_acc {r['train_acc']:.4f}  test_acc {r['test_acc']:.4f}  "
        f"{r['seconds']:.1f}s  {r['images_per_s']:.0f} img/s"
    )


def train_one_epoch(
    run: Run, epoch: int, streams: EpochStreams, show: bool = False
) -> tuple[float, int, int]:
    """One pass over this rank's shard of the epoch's permutation; returns (summed loss,
    correct, images) over all ranks."""
    world = run.info.world_size
    run.net.train()
    perm = torch.randperm(len(run.train_set), generator=streams.shuffle)
    mine = distributed.shard(perm, run.info.rank, world)
    bar = _Progress(len(mine) * world, f"epoch {epoch + 1}/{run.cfg.epochs}", show)
    t0 = time.perf_counter()
    loss_sum, correct, seen = 0.0, 0, 0
    on_cuda = run.device.type == "cuda"
    for images, labels in iterate_batches(
        run.train_set, mine, run.local_batch, run.cfg.workers, pin_memory=on_cuda
    ):
        x = to_input(images.to(run.device, non_blocking=True), run, streams.augment)
        labels = labels.to(run.device, non_blocking=True)
        if labels.numel() < 2 and seen > 0:
            # BatchNorm cannot train on one sample (1x1 maps); drop the remainder. Shards
            # have equal sizes, so every rank drops the same step.
            continue
        loss_value, logits = train_step(run, x, labels, epoch)
        n = labels.numel()
        loss_sum += loss_value * n
        correct += (logits.argmax(1) == labels).sum().item()
        seen += n
        img_s = f"{seen * world / (time.perf_counter() - t0):.0f}"
        bar.update(
            n * world, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=img_s
        )
    bar.close()
    if run.info.enabled:
        distributed.broadcast_buffers(run.model)  # rank 0's BN running stats everywhere
        loss_sum, correct, seen = distributed.all_reduce_sum([loss_sum, correct, seen], run.device)
    return loss_sum, int(correct), int(seen)


def train_step(run: Run, x: torch.Tensor, labels: torch.Tensor, epoch: int):
    """Forward (autocast if asked), cross-entropy, backward, optimizer step; returns (the loss as
    a float, the logits). Raises FloatingPointError if the loss is not finite."""
    if run.autocast is None:
        logits = run.net(x)
        loss = F.cross_entropy(logits, labels)
    else:
        with torch.autocast(run.device.type, dtype=run.autocast):
            logits = run.net(x)
        loss = F.cross_entropy(logits.float(), labels)
    loss_value = loss.item()  # one device sync per step, used by the caller too
    _check_loss(run, loss_value, epoch)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is None:
        loss.backward()
        run.optimizer.step()
    else:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    return loss_value, logits


def to_input(images: torch.Tensor, run: Run, generator: torch.Generator) -> torch.Tensor:
    """uint8 batch -> the model's float input, augmented (and NHWC with ``channels_last``)."""
    from .data import to_model_input

    x = to_model_input(images, run.image_size, train=True, augment=run.augment, generator=generator)
    if run.cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def evaluate_run(run: Run) -> dict:
    """:func:`evaluate` of the run's model on its test set (all ranks together)."""
    return evaluate(
        run.model,
        run.test_set,
        run.image_size,
        run.cfg.eval_batch_size,
        run.device,
        run.cfg.workers,
        rank=run.info.rank,
        world_size=run.info.world_size,
        autocast=None,  # float32: the checkpoint's accuracy, as `dorefa eval` and export see it
        channels_last=run.cfg.channels_last,
    )


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
    indices = distributed.shard_eval(len(dataset), rank, world_size)
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
