"""Checkpoints: atomic writes, safe reads (``weights_only=True``), clear one-line errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "dorefa-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or does not fit the model."""


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` with torch.save to a temp file in the same folder, fsync, then rename:
    a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a dorefa checkpoint with ``weights_only=True`` (an untrusted file cannot run code).

    Raises CheckpointError naming the file for anything that is not a readable dorefa checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/truncated/hostile files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, truncated or not made by torch.save "
            f"of plain tensors): {reason[:200]}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dorefa checkpoint (no '{FORMAT}' header)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ckpt.get('version')!r} is not supported (expected "
            f"{VERSION}); re-train or export with this dorefa version"
        )
    for key in ("model", "meta"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str | os.PathLike = "checkpoint"):
    """Rebuild the model recorded in ``ckpt['meta']`` and load its weights (eval mode)."""
    from .bits import Bits
    from .models import create_model

    meta = ckpt["meta"]
    try:
        model = create_model(
            meta["model"],
            bits=Bits.parse(meta["bits"]),
            num_classes=int(meta["num_classes"]),
            in_channels=int(meta["in_channels"]),
            width=float(meta["width"]),
            keep_first_last=bool(meta.get("keep_first_last", True)),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: checkpoint metadata is incomplete or invalid: {exc}"
        ) from None
    load_weights(model, ckpt["model"], path)
    return model.eval()


def load_weights(
    model: torch.nn.Module, state: dict, path: str | os.PathLike = "checkpoint", strict: bool = True
) -> None:
    """load_state_dict with a one-line error naming the file and the first mismatch."""
    own = model.state_dict()
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
                f"{tuple(own[key].shape)}); check --model, --width and the data's channels"
            )
    model.load_state_dict(state, strict=strict)
