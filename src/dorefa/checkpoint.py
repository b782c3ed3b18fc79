"""Checkpoints: the one place that defines their keys and format version; atomic writes
(dorefa.fileio: temp file, fsync, rename), safe reads (``weights_only=True``), clear one-line
errors.

A training checkpoint (``checkpoint.pt`` in a run folder, written after every epoch) is a dict:

    format     "dorefa-checkpoint"
    version    VERSION (1)
    meta       what rebuilds the model: model, bits "W,A,G", width, num_classes, in_channels,
               image_size, keep_first_last, data
    model      the model's state_dict
    optimizer  the optimizer's state_dict
    epoch      the last finished epoch, 0-based (``--resume`` continues at epoch + 1)
    best_acc   the best test accuracy so far
    rng        torch's global RNG state(s) (recorded only: resume re-derives every stream)
    config     the run's config.json as a dict (its settings, which --resume keeps)
    digest     sha256 of every entry above (content_digest), written by save_atomic and checked
               on load: a checkpoint damaged on disk, or edited without save_atomic, is refused
               (files without one, from before it, load unchecked)

``eval``, ``export`` and ``--init-from`` need only ``meta`` and ``model``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from .fileio import WriteError, atomic_write
from .runtime.format import MAGIC as DOREFA_MAGIC

FORMAT = "dorefa-checkpoint"
VERSION = 1
KEYS = ("format", "version", "meta", "model", "optimizer", "epoch", "best_acc", "rng", "config")
DIGEST = "digest"  # after KEYS, over all of them
REQUIRED_KEYS = ("model", "meta")  # what a model can be rebuilt from
RESUME_KEYS = ("optimizer", "epoch")  # what --resume needs besides


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or does not fit the model."""


def content_digest(obj: Any) -> str:
    """sha256 of a checkpoint's entries: dict keys and values in order, lists, each tensor's
    dtype, shape and bytes, other values by repr (what a torch.save / torch.load round trip
    keeps exactly)."""
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, dict):
            h.update(f"D{len(v)}".encode())
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, (list, tuple)):
            h.update(f"L{len(v)}".encode())
            for x in v:
                walk(x)
        else:
            h.update(f"V{type(v).__name__}:{v!r};".encode())

    walk(obj)
    return h.hexdigest()


def entries_digest(ckpt: dict[str, Any]) -> str:
    """The ``digest`` entry a checkpoint should hold: content_digest of its other entries."""
    return content_digest({k: v for k, v in ckpt.items() if k != DIGEST})


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save ``obj`` with its ``digest`` (entries_digest) through dorefa.fileio.atomic_write
    (temp file in the same folder, fsync, rename): a crash mid-write leaves the previous
    checkpoint intact."""
    whole = {k: v for k, v in obj.items() if k != DIGEST} | {DIGEST: entries_digest(obj)}

    def write(f) -> None:
        try:
            torch.save(whole, f)
        except RuntimeError as exc:  # torch's zip writer wraps the OSError (a full disk)
            if isinstance(exc.__context__, OSError):
                cause = exc.__context__
                raise WriteError(f"cannot write {path}: {cause.strerror or cause}") from exc
            raise

    return atomic_write(path, write)


def save(
    path: str | os.PathLike,
    *,
    meta: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    best_acc: float,
    config: dict,
) -> Path:
    """Write a training checkpoint (the keys above) atomically."""
    values = {
        "format": FORMAT,
        "version": VERSION,
        "meta": meta,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "best_acc": float(best_acc),
        "rng": _rng_state(),
        "config": config,
    }
    assert tuple(values) == KEYS
    return save_atomic(values, path)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(
    ckpt: dict,
    path: str | os.PathLike,
    *,
    meta: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[int, float]:
    """Load a training checkpoint into ``model`` and ``optimizer`` for ``--resume``; returns
    (the epoch to start at, 0-based; the best test accuracy so far). Raises CheckpointError if
    the checkpoint was made with another model/bits/width/data (``meta`` differs)."""
    saved = dict(ckpt["meta"])  # a dict holding META_KEYS: load_checkpoint checked
    if "data_dir" not in saved and isinstance(ckpt.get("config"), dict):  # an older meta: its
        saved["data_dir"] = absolute_or_none(ckpt["config"].get("data_dir"))  # config's folder
    changed = [  # a key an older checkpoint lacks is not checked; the data's folder may move
        k for k in meta if k in saved and k not in LOCAL_META and not _same_meta(k, saved, meta)
    ]
    if changed:
        theirs = ", ".join(f"{META_SETTINGS.get(k, k)} {_shown(k, saved)!r}" for k in changed)
        ours = ", ".join(f"{META_SETTINGS.get(k, k)} {_shown(k, meta)!r}" for k in changed)
        from .data.registry import GENERIC_DATA

        generic = False
        if "data" in changed:  # (only then: an older meta may have no data entry at all)
            names = {str(_shown("data", m)).partition(":")[0] for m in (saved, meta)}
            generic = len(names) == 1 and names <= set(GENERIC_DATA)
        hint = " (an idx or image folder is its data: give the folder it was trained on)"
        raise CheckpointError(
            f"{path}: was made with {theirs}; this run has {ours}; use the same arguments to "
            f"resume{hint if generic else ''}"
        )
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint has no {missing} entries to resume from")
    load_weights(model, ckpt["model"], path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not fit: {exc}") from None
    try:
        return int(ckpt["epoch"]) + 1, float(ckpt.get("best_acc", 0.0))
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: epoch/best_acc entries are not numbers") from None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Alias of :func:`load_checkpoint`."""
    return load_checkpoint(path, map_location)


def absolute_or_none(folder: object) -> str | None:
    """An older run's config.json folder where it is absolute: it was stored as typed, so a
    relative one would be read against the resuming command's working folder."""
    return folder if isinstance(folder, str) and os.path.isabs(os.path.expanduser(folder)) else None


def _same_meta(key: str, saved: dict, meta: dict) -> bool:
    """Whether a meta entry is unchanged; the data by ``data.registry.data_identity``: a data
    set's folder may move, as --data-dir's may (dorefa.run warns where it has; the first
    version of this check refused a resume on a copy of Fashion-MNIST elsewhere), but an idx
    or image folder is its folder (where the checkpoint records none, the name alone)."""
    if key == "data" and isinstance(saved[key], str) and isinstance(meta[key], str):
        then, now = _shown(key, saved), _shown(key, meta)
        return then == now or (":" not in then and then == now.partition(":")[0])
    return saved[key] == meta[key]


def _shown(key: str, meta: dict):
    """A meta entry as compared and shown: the data as its ``data_identity``."""
    if key == "data" and isinstance(meta.get(key), str):
        from .data.registry import data_identity

        return data_identity(meta[key], meta.get("data_dir"))
    return meta[key]


# How a user sets each meta entry (a resume refused names it so).
META_SETTINGS = {
    "model": "--model",
    "bits": "--bits",
    "width": "--width",
    "data": "--data",
    "keep_first_last": "keep_first_last (--quantize-first-last: False)",
    "num_classes": "the data's number of classes",
    "in_channels": "the data's channels",
    "classes": "the data's class names",
}

# Meta a resume may change: the folder the data was read from (a run moved to another machine).
LOCAL_META = ("data_dir",)

# What rebuilds the model (written by dorefa.run.model_meta; read by model_from_checkpoint,
# `dorefa eval` and `dorefa summary`).
META_KEYS = ("model", "bits", "width", "num_classes", "in_channels", "image_size")


def _load_failure(exc: Exception) -> str:
    """torch.load's reason in a few words: not its advice to turn weights_only off (dorefa never
    unpickles code from a file), no terminal escapes, no message cut mid-sentence."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        why = found.group(1).strip() if found else ""
        if why.startswith("Unsupported operand"):  # a PNG, say: not a pickle of torch's
            return f"not a file torch.save wrote ({why})"
        why = why.split(" was not an allowed global")[0][:120]  # not torch's advice
        return "it holds Python objects other than tensors and plain containers" + (
            f" ({why})" if why else ""
        )
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 160 else first[:160].rsplit(" ", 1)[0] + " ..."


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a dorefa checkpoint with ``weights_only=True`` (an untrusted file cannot run code).

    Raises CheckpointError naming the file for anything that is not a readable dorefa checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; give the checkpoint file in it (e.g. {path / 'checkpoint.pt'})"
        )
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "checkpoint file not found"
        raise CheckpointError(f"{path}: {what}")
    _refuse_exported_model(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/truncated/hostile files
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, truncated or not made by torch.save "
            f"of plain tensors): {_load_failure(exc)}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dorefa checkpoint (no '{FORMAT}' header)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ckpt.get('version')!r} is not supported (expected "
            f"{VERSION}); re-train or export with this dorefa version"
        )
    _check_digest(ckpt, path)
    for key in REQUIRED_KEYS:
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry")
    meta = ckpt["meta"]
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(
            f"{path}: checkpoint meta lacks {', '.join(missing)}; it was not written by "
            "`dorefa train`: re-train, or save it with dorefa.checkpoint.save"
        )
    return ckpt


def _refuse_exported_model(path: Path) -> None:
    """A ``.dorefa`` file or a JSON file (a run's config.json) given where a checkpoint belongs
    is named as what it is (torch.load would only call it unreadable, or full of objects)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(DOREFA_MAGIC))
    except OSError:
        return  # torch.load reports it
    if head.lstrip()[:1] in (b"{", b"["):
        raise CheckpointError(
            f"{path} is a JSON file, not a training checkpoint: give the checkpoint.pt that "
            "`dorefa train` wrote"
        )
    if head == DOREFA_MAGIC:
        raise CheckpointError(
            f"{path} is an exported .dorefa model, not a training checkpoint: run it with "
            f"`dorefa run {path}`; give the checkpoint.pt that `dorefa train` wrote instead"
        )


def _check_digest(ckpt: dict, path: Path) -> None:
    """Raise CheckpointError where ``ckpt`` has a digest its entries no longer match."""
    if DIGEST not in ckpt:
        return
    try:
        digest = entries_digest(ckpt)
    except (RuntimeError, TypeError, ValueError) as exc:  # tensors of a kind never saved here
        raise CheckpointError(f"{path}: its entries cannot be checked ({exc})") from None
    if not isinstance(ckpt[DIGEST], str) or ckpt[DIGEST] != digest:
        raise CheckpointError(
            f"{path}: its contents do not match the checksum saved with them (damaged on disk, "
            "or edited after it was written): use another copy or re-train; a deliberate edit "
            "is saved with dorefa.checkpoint.save_atomic"
        )


def export_meta(ckpt: dict, path: str | os.PathLike) -> dict:
    """The header meta of a file exported from checkpoint ``ckpt`` (read from ``path``): its
    meta, that path, the epochs it had finished and its digest (what `dorefa run --compare`
    checks)."""
    epoch = ckpt.get("epoch", -1)
    if isinstance(epoch, bool) or not isinstance(epoch, int):  # 'x' had ended in int()'s words
        raise CheckpointError(
            f"{path}: its epoch {epoch!r} is not a whole number (the checkpoint was altered); "
            "use the file `dorefa train` wrote"
        )
    source = {"checkpoint": str(path), "epoch": epoch + 1}
    if isinstance(ckpt.get(DIGEST), str):
        source["checkpoint_digest"] = ckpt[DIGEST]
    return dict(ckpt["meta"]) | source


def model_from_checkpoint(ckpt: dict, path: str | os.PathLike = "checkpoint"):
    """Rebuild the model recorded in ``ckpt['meta']`` and load its weights (eval mode)."""
    from .bits import Bits
    from .models import create_model

    meta = ckpt["meta"]

    def build():
        return create_model(
            meta["model"],
            bits=Bits.parse(meta["bits"]),
            num_classes=_meta_int(meta, "num_classes"),
            in_channels=_meta_int(meta, "in_channels"),
            width=float(meta["width"]),
            keep_first_last=_meta_bool(meta, "keep_first_last"),
        )

    try:
        # first without memory (torch's meta device): the weights must fit the meta before the
        # model is made (a 1.6 KB file whose meta said alexnet at width 4 took 3.8 GB, one with
        # 10**9 classes asked for 256 GB)
        with torch.device("meta"):
            check_fit(build().state_dict(), ckpt["model"], path)
        model = build()
    except (KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"{path}: checkpoint metadata is incomplete or invalid: {exc}"
        ) from None
    size = getattr(model, "input_size", None)
    if size is not None and meta.get("image_size") != size:  # train records model.input_size
        raise CheckpointError(
            f"{path}: meta image_size {meta.get('image_size')!r} but {meta['model']} takes "
            f"{size} x {size} images: the checkpoint was altered; use the file `dorefa train` wrote"
        )
    load_weights(model, ckpt["model"], path)
    require_finite(model, path)
    for name, value in model.state_dict().items():
        if name.endswith("running_var") and (value < 0).any():  # every output would be NaN
            raise CheckpointError(
                f"{path}: {name} holds a negative BatchNorm variance ({value.min().item():g}), "
                "which training never writes: the checkpoint was altered; use the file "
                "`dorefa train` wrote"
            )
    return model.eval()


def require_finite(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """CheckpointError naming the first entry of the weights loaded from ``path`` that holds
    NaN or inf: a diverged run's weights give no model, and start no run (--init-from had
    taken them, then blamed the learning rate)."""
    diverged = nonfinite_entry(model)
    if diverged is not None:
        raise CheckpointError(
            f"{path}: {diverged} holds NaN or inf values (the run diverged); use a checkpoint "
            "from before, or re-train with a lower --lr"
        )


def nonfinite_entry(model: torch.nn.Module) -> str | None:
    """The first state-dict entry of ``model`` holding NaN or inf (a diverged run), else None."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def _meta_int(meta: dict, key: str) -> int:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int):  # 10.7 classes had become 10
        raise ValueError(f"meta {key} must be an int, got {value!r}")
    return value


def _meta_bool(meta: dict, key: str) -> bool:
    value = meta.get(key, True)
    if not isinstance(value, bool):  # "false" had been read as True
        raise ValueError(f"meta {key} must be true or false, got {value!r}")
    return value


def load_weights(
    model: torch.nn.Module, state: dict, path: str | os.PathLike = "checkpoint", strict: bool = True
) -> None:
    """load_state_dict with a one-line error naming the file and the first mismatch."""
    check_fit(model.state_dict(), state, path, strict)
    model.load_state_dict(state, strict=strict)


def check_fit(own: dict, state: dict, path: str | os.PathLike, strict: bool = True) -> None:
    """CheckpointError unless ``state`` has the keys (``strict``) and shapes of ``own``."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: model weights are not a state dict")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path}: weights do not fit this model ({what})")
    for key, value in state.items():
        if key in own and (not torch.is_tensor(value) or value.shape != own[key].shape):
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise CheckpointError(
                f"{path}: weights do not fit this model ({key}: checkpoint {shape} vs model "
                f"{tuple(own[key].shape)}); check --model, --width and the data's channels and "
                "classes"
            )
