"""Preparing a training run: device, data, model, optimizer, the run folder and its
configuration record; resuming it from its checkpoint (dorefa.checkpoint).

:func:`prepare_run` returns a :class:`Run`, everything the epoch loop of dorefa.train needs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch import nn

from . import checkpoint, distributed
from .data.registry import folder_read, spec_place
from .fileio import resolved_path
from .models import create_model, input_size
from .optim import amp_dtype, build_optimizer
from .run_files import RunFiles
from .seeds import derive_seed
from .train_config import TrainConfig


@dataclass
class Run:
    cfg: TrainConfig
    device: torch.device
    info: distributed.DistInfo
    model: nn.Module  # the model itself (checkpoints, evaluation)
    net: nn.Module  # what trains: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 autocast only
    autocast: torch.dtype | None
    train_set: object
    test_set: object
    augment: str
    image_size: int
    local_batch: int  # images per step on this rank
    meta: dict  # what rebuilds the model (checkpoint["meta"])
    config: dict  # config.json
    files: RunFiles


def resolve_device(name: str) -> torch.device:
    """``--device``: auto (CUDA when available, else CPU), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cpu":
        return torch.device("cpu")  # cpu:N is the one CPU device (a checkpoint maps to "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices"
        )
    return device


def load_data(cfg: TrainConfig, image_size: int):
    """(train set, test set) of ``cfg.data``, cut to ``subset`` / ``test_subset`` images."""
    from .data import check_splits, first_images, get_dataset, require_classes

    train_set = get_dataset(cfg.data, "train", data_dir=cfg.data_dir, image_size=image_size)
    require_classes(train_set, cfg.data)
    test_set = get_dataset(cfg.data, "test", data_dir=cfg.data_dir, image_size=image_size)
    check_splits(train_set, test_set, cfg.data)
    if cfg.subset is not None:
        train_set = first_images(train_set, cfg.subset, "--subset")
        check_splits(train_set, test_set, cfg.data, cfg.subset)
    return train_set, first_images(test_set, cfg.test_subset, "--test-subset")


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    return create_model(
        cfg.model,
        bits=cfg.bits,
        num_classes=num_classes,
        in_channels=in_channels,
        width=cfg.width,
        keep_first_last=cfg.keep_first_last,
    )


def model_meta(
    cfg: TrainConfig, num_classes: int, in_channels: int, image_size: int, classes=None
) -> dict:
    """checkpoint["meta"]: what rebuilds the model (dorefa.checkpoint.model_from_checkpoint),
    and the data it learnt: the class names where the data set has them (an image folder's:
    eval and run refuse other names), the folder --data-dir gave (eval's default); a folder
    named in the spec is recorded resolved too (as given, eval from another folder had read
    other data under the same relative name)."""
    extra = {"classes": [str(c) for c in classes]} if classes is not None else {}
    if cfg.data_dir:
        extra["data_dir"] = _folder(cfg.data_dir)
    return {
        "model": cfg.model,
        "bits": str(cfg.bits),
        "width": cfg.width,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "keep_first_last": cfg.keep_first_last,
        "data": spec_place(cfg.data),
    } | extra


def _read_folder(meta: dict, older: str | None) -> str | None:
    """The folder a run read its data from, as ``meta`` records it: the one its spec names
    (resolved), else its --data-dir (``older`` where the meta predates data_dir); None: the
    data set's default."""
    spec = meta.get("data")
    if isinstance(spec, str) and spec.partition(":")[2]:
        return spec_place(spec).partition(":")[2]
    return meta["data_dir"] if "data_dir" in meta else older


def _folder(given: str | None) -> str | None:
    """A --data-dir as a checkpoint records it: absolute, resolved (None: the default folder)."""
    return resolved_path(given) if given else None


def local_batch(batch_size: int, world: int, flag: str = "") -> int:
    """Images per step on each of ``world`` ranks (BatchNorm needs at least 2); ``flag`` names
    the option that set ``world`` in the errors (``--nproc``, checked before its workers start)."""
    if batch_size % world:
        procs = f"{flag} {world}" if flag else f"the {world} processes"
        raise ValueError(
            f"--batch-size {batch_size} (the global batch) must be divisible by {procs}: use "
            f"--batch-size {max(2, -(-batch_size // world)) * world}"
        )
    if batch_size < 2 * world:
        raise ValueError(
            f"--batch-size {batch_size} leaves fewer than 2 images per step and process; "
            f"BatchNorm needs 2 or more: use --batch-size {2 * world} or more"
        )
    return batch_size // world


def check_images(n: int, world: int) -> None:
    """Refuse ``n`` training images for ``world`` processes where a process would get fewer
    than 2 (BatchNorm's batch statistics need 2)."""
    if n <= world:
        raise ValueError(
            f"{n} training images for {world} processes: BatchNorm needs 2 or more per process; "
            "use a larger --subset"
        )


def _config_record(run: Run) -> dict:
    """config.json: the TrainConfig plus what this run resolved."""
    cfg, info = run.cfg, run.info
    record = dataclasses.asdict(cfg) | {
        "bits": str(cfg.bits),
        "bits_tag": cfg.bits.tag,
        "augment": run.augment,
        "image_size": run.image_size,
        "num_classes": run.meta["num_classes"],
        "in_channels": run.meta["in_channels"],
        "train_images": len(run.train_set),  # after --subset
        "test_images": len(run.test_set),  # after --test-subset
        "device": str(run.device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    record["world_size"] = info.world_size
    if info.enabled:
        record |= {
            "backend": info.backend,
            "batch_size_per_rank": run.local_batch,
        }
    return json.loads(json.dumps(record))  # plain JSON types (tuples -> lists)


def _wrap(cfg: TrainConfig, model: nn.Module, device: torch.device, info) -> nn.Module:
    """DistributedDataParallel around ``model`` when data-parallel (else the model itself)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def prepare_run(cfg: TrainConfig, device: torch.device, info: distributed.DistInfo) -> Run:
    """Data, model (seeded from (seed, "init")), optimizer and run folder of ``cfg``."""
    per_rank = local_batch(cfg.batch_size, info.world_size)
    autocast = amp_dtype(cfg.amp, device)
    files = RunFiles(cfg.out, enabled=info.is_main)
    distributed.together(files.lock, info)  # every rank's errors said once, by the lowest rank
    try:
        return distributed.together(
            lambda: _prepare(cfg, device, info, files, per_rank, autocast), info
        )
    except BaseException:
        files.close(failed=True)
        raise


def _prepare(cfg, device, info, files, per_rank, autocast) -> Run:
    """prepare_run's work once the run folder is locked."""
    from .data import default_augment

    files.check_fresh(cfg.resume)
    train_set, test_set = load_data(cfg, input_size(cfg.model))
    check_images(len(train_set), info.world_size)
    num_classes, in_channels = train_set.num_classes, train_set.in_channels
    if device.type == "cuda" and hasattr(train_set, "images"):
        train_set.images = train_set.images.pin_memory()  # non_blocking copies of batch slices
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg, num_classes, in_channels).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and info.world_size > 1:  # one process: its batch is the global batch
        model = distributed.convert_sync_batchnorm(model, device.type)
    run = Run(
        cfg=cfg,
        device=device,
        info=info,
        model=model,
        net=model,
        optimizer=build_optimizer(cfg, model),
        scaler=torch.amp.GradScaler("cuda") if autocast == torch.float16 else None,
        autocast=autocast,
        train_set=train_set,
        test_set=test_set,
        augment=cfg.augment or default_augment(train_set.name),
        image_size=model.input_size,
        local_batch=per_rank,
        meta=model_meta(
            cfg, num_classes, in_channels, model.input_size, getattr(train_set, "classes", None)
        ),
        config={},
        files=files,
    )
    run.config = _config_record(run)
    return run


def _keep_init_source(run: Run, saved: dict, log) -> None:
    """A resumed run's weights are its checkpoint's, whatever --init-from says now: config.json
    keeps the source the run started from (it had recorded the one given now, None on a plain
    --resume), and another source given is said to be left unused."""
    if "init_from" not in saved:  # an older record: nothing to keep
        return
    given, before = run.cfg.init_from, saved["init_from"]
    run.config["init_from"] = before
    if given is not None and not _same_path(given, before):
        log(
            f"note: --init-from {given} is not used: resuming {run.files.out}, whose weights "
            f"started from {before or 'random initialisation'}"
        )


def _same_path(a: str, b: str | None) -> bool:
    return b is not None and (a == b or resolved_path(a) == resolved_path(b))


def resume_or_init(run: Run, log) -> tuple[int, float]:
    """``--resume``: load the checkpoint of the run folder (every rank reads rank 0's); returns
    (the 0-based epoch to start at, the best test accuracy so far). ``--init-from``: load a
    checkpoint's weights. Then wrap the model for data-parallel training."""
    start_epoch, best_acc = distributed.together(lambda: _load_state(run, log), run.info)
    run.net = _wrap(run.cfg, run.model, run.device, run.info)
    return start_epoch, best_acc


def _load_state(run: Run, log) -> tuple[int, float]:
    """resume_or_init's loading (no collective call: every rank's errors are said once)."""
    cfg, path = run.cfg, run.files.checkpoint
    start_epoch, best_acc = 0, 0.0
    if cfg.resume and not path.exists():
        log(f"nothing to resume in {run.files.out} (no checkpoint.pt): starting a new run")
    if cfg.resume and path.exists():
        ckpt = checkpoint.load(path, map_location=run.device)
        run.files.check_resume(run.config, ckpt.get("config"))
        saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        threads = saved.get("torch_threads"), run.config.get("torch_threads")
        if None not in threads and threads[0] != threads[1]:  # float sums split otherwise
            log(
                f"note: resuming on {threads[1]} torch threads where the run used {threads[0]}: "
                "its weights will differ from an uninterrupted run's (float rounding)"
            )
        start_epoch, best_acc = checkpoint.restore(  # it refuses other data (data_identity)
            ckpt, path, meta=run.meta, model=run.model, optimizer=run.optimizer
        )
        older = _folder(checkpoint.absolute_or_none(saved.get("data_dir")))  # an older meta
        # lacks it: its config's, where absolute
        before, now = (  # None: the default folder, as it resolves now
            _read_folder(meta, old) or folder_read(meta.get("data"))
            for meta, old in ((ckpt["meta"], older), (run.meta, None))
        )
        if before != now:  # a data set's folder moved (restore took it as the same data)
            log(
                f"warning: resuming on the data in {now}; the run read {before} until now "
                "(the same data, moved?)"
            )
        _keep_init_source(run, saved, log)
    elif cfg.init_from:
        init = checkpoint.load(cfg.init_from, map_location=run.device)
        checkpoint.load_weights(run.model, init["model"], cfg.init_from)
        checkpoint.require_finite(run.model, cfg.init_from)
        log(f"initialised weights from {cfg.init_from}")
    return start_epoch, best_acc
