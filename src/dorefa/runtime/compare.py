"""The bit runtime on a test set, and its agreement with the torch model it was exported from.

:func:`run_test_set` is what ``dorefa run`` and the sweep's runtime columns compute; ``dorefa
run`` only prints its result. Inputs are made by :func:`dorefa.data.to_model_input` exactly as
``dorefa eval`` makes them, then handed to the runtime as numpy float32.

This module may import torch (the data pipeline and the comparison use it), but only inside its
functions: importing :mod:`dorefa.runtime` never maps torch.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

DEFAULT_DATA = "fashion-mnist"  # a model whose file records no data (the Python API's export)


def compare_logits(rt_logits: np.ndarray, torch_logits: np.ndarray) -> dict:
    """Agreement of the argmax and the largest logit difference.

    For image i: ``d_i = max_k |rt[i,k] - torch[i,k]|`` and ``s_i = max_k |torch[i,k]|``;
    ``max_abs_diff = max_i d_i``, ``max_rel_diff = max_i d_i / s_i``, ``within_1e-3`` the share
    of images with ``d_i / s_i <= 1e-3``, ``agreement`` the share with the same argmax."""
    diff = np.abs(rt_logits.astype(np.float64) - torch_logits)
    scale = np.maximum(np.abs(torch_logits).max(axis=1), 1e-12)
    return {
        "agreement": float((rt_logits.argmax(1) == torch_logits.argmax(1)).mean()),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float((diff.max(axis=1) / scale).max()) if diff.size else 0.0,
        "within_1e-3": float((diff.max(axis=1) / scale <= 1e-3).mean()) if diff.size else 1.0,
    }


def model_input_batches(test_set, batch_size: int, size: int):
    """Yield (model input (B,C,size,size) float32 torch tensor, int64 numpy labels) in order."""
    import torch

    from ..data import to_model_input
    from ..data.batches import iterate_batches

    for images, labels in iterate_batches(test_set, torch.arange(len(test_set)), batch_size):
        x = to_model_input(images, size, train=False, augment="none", generator=None)
        yield x, labels.numpy()


def load_test_set(data: str, data_dir, test_subset: int | None, model, recorded: bool = False):
    """The test split of ``data`` at the model's input size (its first ``test_subset`` images
    if given), checked against the model's channels and classes. ``recorded``: ``data`` and
    ``data_dir`` are the ones the model's file records (a failure to load says so)."""
    from ..data import first_images, get_dataset, require_model_shape

    c, size, _ = model.input_shape
    try:
        test_set = get_dataset(data, "test", data_dir=data_dir, image_size=size)
    except ValueError as exc:
        if not recorded:
            raise
        raise ValueError(  # a model moved to another machine: its data is not here
            f"{exc} (the data the model was trained on, as its file records it; give --data "
            "or --data-dir for this machine)"
        ) from None
    test_set = first_images(test_set, test_subset, "--test-subset")
    names = model.meta.get("classes")
    require_model_shape(test_set, data, c, model.num_classes, str(model.path), names)
    return test_set


def _torch_model(checkpoint: str | os.PathLike, threads: int, model):
    """The checkpoint's torch model (eval mode), after checking that it takes the runtime
    model's input and gives its classes (else the comparison would fail inside torch)."""
    import torch

    from ..checkpoint import export_meta, load_checkpoint, model_from_checkpoint
    from ..model_summary import summary

    ckpt = load_checkpoint(checkpoint)
    meta = ckpt["meta"]
    c, size, _ = model.input_shape
    theirs = (int(meta["in_channels"]), int(meta["image_size"]), int(meta["num_classes"]))
    exported = model.meta.get("model", meta["model"])  # files written by export() name it
    if theirs != (c, size, model.num_classes) or exported != meta["model"]:
        raise ValueError(
            f"--compare {checkpoint} is a {meta['model']} for {theirs[0]}x{theirs[1]}x{theirs[1]} "
            f"inputs and {theirs[2]} classes, but {model.path} takes {c}x{size}x{size} and "
            f"gives {model.num_classes} ({exported}): compare with the checkpoint it was "
            "exported from"
        )
    # the same network with other bits or width: refused (the header's own bits where the
    # meta has none: a file exported by the Python API)
    header = {"bits": model.bits} if model.bits != "?" else {}
    for key in ("bits", "width"):
        ours = model.meta.get(key, header.get(key))
        if ours is not None and str(ours) != str(meta[key]):
            raise ValueError(
                f"--compare {checkpoint} has {key} {meta[key]} but {model.path} was exported "
                f"with {key} {ours}: compare with the checkpoint it was exported from"
            )
    source = export_meta(ckpt, checkpoint)
    epoch, digest = source["epoch"], source.get("checkpoint_digest")
    exported_from = model.meta.get("checkpoint", "its checkpoint")
    if "epoch" in model.meta and model.meta["epoch"] != epoch:  # the same run, another epoch
        print(
            f"warning: {model.path} was exported after epoch {model.meta['epoch']} "
            f"({exported_from}), {checkpoint} holds epoch {epoch}: the agreement below "
            "compares two different weights",
            file=sys.stderr,
        )
    elif digest and model.meta.get("checkpoint_digest", digest) != digest:  # another run
        print(
            f"warning: {model.path} was exported from another checkpoint ({exported_from}) "
            f"than {checkpoint}, of the same epoch: the agreement below compares two "
            "different weights",
            file=sys.stderr,
        )
    torch.set_num_threads(threads)
    net = model_from_checkpoint(ckpt, checkpoint).eval()
    macs = summary(net, size).totals["macs"]  # a file of the Python API names no width
    if macs != model.macs:
        raise ValueError(
            f"--compare {checkpoint}'s network makes {macs:,} multiply-adds an image, "
            f"{model.path}'s {model.macs:,}: other layer sizes (another --width?); compare with "
            "the checkpoint it was exported from"
        )
    return net


def run_test_set(
    model_path: str | os.PathLike,
    data: str | None = None,
    data_dir: str | os.PathLike | None = None,
    test_subset: int | None = None,
    compare: str | os.PathLike | None = None,
    threads: int = 1,
    batch_size: int = 256,
) -> dict:
    """Run the ``.dorefa`` file on the test set of ``data`` (and, with ``compare`` = a checkpoint
    path, that torch model in eval mode on the same inputs). ``data`` None: the data the model
    was trained on, as its file records it (and its folder, unless ``data_dir`` is given), else
    Fashion-MNIST.

    Returns ``n``, ``accuracy``, ``seconds`` (the runtime calls only), ``images_per_s``,
    ``model_bytes``, ``bits``, ``path``, ``kernel_backend``, ``threads``, ``batch_size``, ``data``,
    and with ``compare``: ``torch_accuracy`` and :func:`compare_logits`'s ``agreement``,
    ``max_abs_diff``, ``max_rel_diff``, ``within_1e-3`` (else these are None)."""
    from .. import kernels, runtime

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    model = runtime.load(model_path, threads=threads)
    from ..data import learnt_data

    recorded = data is None and data_dir is None and isinstance(model.meta.get("data"), str)
    data, data_dir = learnt_data(model.meta, data, data_dir, DEFAULT_DATA)
    test_set = load_test_set(data, data_dir, test_subset, model, recorded)
    torch_model = _torch_model(compare, threads, model) if compare else None
    rt_all, torch_all, labels_all, seconds = [], [], [], 0.0
    for x, labels in model_input_batches(test_set, batch_size, model.input_shape[1]):
        xn = x.numpy()
        t0 = time.perf_counter()
        rt_all.append(model(xn))
        seconds += time.perf_counter() - t0
        labels_all.append(labels)
        if torch_model is not None:
            import torch

            with torch.no_grad():
                torch_all.append(torch_model(x).numpy())
    logits, labels = np.concatenate(rt_all), np.concatenate(labels_all)
    n = len(labels)
    res = {
        "path": str(model.path),
        "bits": model.bits,
        "model_bytes": model.size,
        "kernel_backend": kernels.backend(),
        "threads": threads,
        "batch_size": batch_size,
        "data": data,
        "n": n,
        "accuracy": float((logits.argmax(1) == labels).mean()) if n else 0.0,
        "seconds": seconds,
        "images_per_s": n / max(seconds, 1e-9),
        "torch_accuracy": None,
    }
    res |= dict.fromkeys(("agreement", "max_abs_diff", "max_rel_diff", "within_1e-3"))
    if torch_model is not None:
        t_logits = np.concatenate(torch_all)
        res["torch_accuracy"] = float((t_logits.argmax(1) == labels).mean()) if n else 0.0
        res |= compare_logits(logits, t_logits)
    return res
