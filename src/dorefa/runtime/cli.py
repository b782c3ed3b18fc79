"""``dorefa run model.dorefa --data fashion-mnist [--compare CKPT]``: test accuracy on the bit
runtime, and with ``--compare`` its agreement with the torch model (eval mode) on the same inputs.

The work is :func:`dorefa.runtime.compare.run_test_set` (which may import torch; the runtime
itself, :func:`dorefa.runtime.load`, does not); this module only prints its result.
"""

from __future__ import annotations

import argparse
import sys

from ..argtypes import POSITIVE_INT
from ..cpuinfo import pick_threads
from .compare import DEFAULT_DATA, compare_logits, run_test_set

__all__ = ["cmd_run", "compare_logits", "register_cli"]

BATCH_SIZE = 256  # --batch-size's default


def cmd_run(args: argparse.Namespace) -> int:
    """Print :func:`dorefa.runtime.compare.run_test_set`'s result (``--explain``: the kernel
    plan, :meth:`dorefa.runtime.Model.plan`, and nothing else)."""
    if args.compare is not None and not args.compare.strip():  # an empty $CKPT in a script
        raise ValueError("--compare is empty: give the checkpoint to compare with, or leave it out")
    threads, why = pick_threads(args.threads)  # capped at the CPUs, as `dorefa train` does
    if threads != args.threads:
        print(why, file=sys.stderr)
        args.threads = threads
    if args.explain:
        from .. import runtime

        unused = [
            flag
            for flag, value, default in (
                ("--compare", args.compare, None),
                ("--data", args.data, None),
                ("--data-dir", args.data_dir, None),
                ("--test-subset", args.test_subset, None),
                ("--batch-size", args.batch_size, BATCH_SIZE),
                ("--threads", args.threads, 1),  # the plan times each layer at 1 thread
            )
            if value != default
        ]
        if unused:
            unused_flags = ", ".join(unused)
            print(f"note: --explain runs no test set: {unused_flags} not used", file=sys.stderr)

        model = runtime.load(args.model, threads=args.threads)
        print(f"{model.path}: bits {model.bits}, kernel plan (batch 1, 1 thread)")
        print(model.plan())
        return 0
    r = run_test_set(
        args.model,
        args.data,  # None: the model's own
        data_dir=args.data_dir,
        test_subset=args.test_subset,
        compare=args.compare,
        threads=args.threads,
        batch_size=args.batch_size,
    )
    n = r["n"]
    print(
        f"{r['path']}: bits {r['bits']}, {r['model_bytes']} bytes, kernel backend "
        f"{r['kernel_backend']}, threads {r['threads']}"
    )
    print(
        f"test accuracy: {100 * r['accuracy']:.2f}%  ({n} images of {r['data']}, "
        f"{r['images_per_s']:.0f} img/s at batch {args.batch_size})"
    )
    if args.compare:
        print(f"torch accuracy: {100 * r['torch_accuracy']:.2f}%  ({args.compare}, eval mode)")
        print(
            f"agreement: {100 * r['agreement']:.2f}%  "
            f"({int(round(r['agreement'] * n))}/{n} same predicted class)"
        )
        print(
            f"max logit difference: {r['max_abs_diff']:.3g} absolute, "
            f"{r['max_rel_diff']:.3g} relative (to the image's largest |logit|); "
            f"{100 * r['within_1e-3']:.2f}% of images within 1e-3 relative"
        )
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("run", help="test accuracy of a .dorefa file on the bit runtime")
    p.add_argument("model", help=".dorefa file from `dorefa export`")
    p.add_argument(
        "--data",
        default=None,
        help=f"dataset spec (default: the one the model was trained on, else {DEFAULT_DATA})",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder overriding the dataset's default (and the one the model was trained on)",
    )
    p.add_argument(
        "--compare",
        default=None,
        metavar="CKPT",
        help="also run this checkpoint in torch (eval) and report agreement",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="print the kernel each layer runs and its time, then exit (no test set)",
    )
    p.add_argument("--threads", type=POSITIVE_INT, default=1, help="kernel threads (and torch's)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=BATCH_SIZE)
    p.add_argument(
        "--test-subset", type=POSITIVE_INT, default=None, help="first N test images only"
    )
    p.set_defaults(func=cmd_run)
