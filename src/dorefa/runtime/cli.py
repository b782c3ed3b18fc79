"""``dorefa run model.dorefa --data fashion-mnist [--compare CKPT]``: test accuracy on the bit
runtime, and with ``--compare`` its agreement with the torch model (eval mode) on the same inputs.

This command may import torch (the data pipeline and the comparison use it); the runtime itself
(:func:`dorefa.runtime.load`) does not. Inputs are made by :func:`dorefa.data.to_model_input`
exactly as ``dorefa eval`` makes them, then handed to the runtime as numpy float32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _batches(test_set, batch_size: int, size: int):
    import torch

    from ..data import to_model_input
    from ..train import iterate_batches

    for images, labels in iterate_batches(test_set, torch.arange(len(test_set)), batch_size):
        x = to_model_input(images, size, train=False, augment="none", generator=None)
        yield x, labels.numpy()


def compare_logits(rt_logits: np.ndarray, torch_logits: np.ndarray) -> dict:
    """Agreement of the argmax and the largest logit difference (absolute; relative to the
    largest |torch logit| of the same image)."""
    diff = np.abs(rt_logits.astype(np.float64) - torch_logits)
    scale = np.maximum(np.abs(torch_logits).max(axis=1), 1e-12)
    return {
        "agreement": float((rt_logits.argmax(1) == torch_logits.argmax(1)).mean()),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float((diff.max(axis=1) / scale).max()) if diff.size else 0.0,
        "within_1e-3": float((diff.max(axis=1) / scale <= 1e-3).mean()) if diff.size else 1.0,
    }


def cmd_run(args: argparse.Namespace) -> int:
    from .. import runtime
    from ..data import get_dataset

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = runtime.load(args.model, threads=args.threads)
    c, size, _ = model.input_shape
    test_set = get_dataset(args.data, "test", data_dir=args.data_dir, image_size=size)
    if args.test_subset:
        test_set = test_set.subset(min(args.test_subset, len(test_set)))
    if test_set.in_channels != c or test_set.num_classes != model.num_classes:
        raise ValueError(
            f"{args.data} has {test_set.in_channels} channels and "
            f"{test_set.num_classes} classes; {args.model} expects {c} and "
            f"{model.num_classes}"
        )
    torch_model = None
    if args.compare:
        import torch

        from ..checkpoint import load_checkpoint, model_from_checkpoint

        torch.set_num_threads(args.threads)
        torch_model = model_from_checkpoint(load_checkpoint(args.compare), args.compare).eval()
    rt_all, torch_all, labels_all, seconds = [], [], [], 0.0
    for x, labels in _batches(test_set, args.batch_size, size):
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
    acc = float((logits.argmax(1) == labels).mean()) if n else 0.0
    print(
        f"{model.path}: bits {model.bits}, {model.size} bytes, kernel backend "
        f"{_backend()}, threads {args.threads}"
    )
    print(
        f"test accuracy: {100 * acc:.2f}%  ({n} images of {args.data}, "
        f"{n / max(seconds, 1e-9):.0f} img/s at batch {args.batch_size})"
    )
    if torch_model is not None:
        t_logits = np.concatenate(torch_all)
        cmp = compare_logits(logits, t_logits)
        t_acc = float((t_logits.argmax(1) == labels).mean()) if n else 0.0
        print(f"torch accuracy: {100 * t_acc:.2f}%  ({args.compare}, eval mode)")
        print(
            f"agreement: {100 * cmp['agreement']:.2f}%  "
            f"({int(round(cmp['agreement'] * n))}/{n} same predicted class)"
        )
        print(
            f"max logit difference: {cmp['max_abs_diff']:.3g} absolute, "
            f"{cmp['max_rel_diff']:.3g} relative (to the image's largest |logit|); "
            f"{100 * cmp['within_1e-3']:.2f}% of images within 1e-3 relative"
        )
    return 0


def _backend() -> str:
    from .. import kernels

    return kernels.backend()


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("run", help="test accuracy of a .dorefa file on the bit runtime")
    p.add_argument("model", help=".dorefa file from `dorefa export`")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (default fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="folder overriding the dataset's default")
    p.add_argument(
        "--compare",
        default=None,
        metavar="CKPT",
        help="also run this checkpoint in torch (eval) and report agreement",
    )
    p.add_argument("--threads", type=int, default=1, help="kernel threads (and torch's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--test-subset", type=int, default=None, help="first N test images only")
    p.set_defaults(func=cmd_run)
