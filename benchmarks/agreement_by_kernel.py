"""The bit runtime against torch on a trained checkpoint, under every kernel this CPU runs.

Exports the checkpoint to a temporary ``.dorefa`` file, computes the torch model's logits on
the test set once, then runs the runtime with each kernel of ``available_kernels()`` forced
(``use_kernel``) and reports, per kernel: images, agreement of the argmax with torch, the
largest logit difference relative to the image's largest |logit|, whether the logits equal the
first kernel's bit for bit (the integer layers are exact on every kernel), and images/s.
The slow ones run the first images only when asked: ``--scalar-subset`` (the portable
popcount kernel, whose cost grows with the bit planes: W8A8 is 64 plane pairs) and
``--reference-subset`` (the NumPy spec, default 1000); the table says how many ran.

    .venv/bin/python benchmarks/agreement_by_kernel.py runs/x/checkpoint.pt --threads 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import dorefa.kernels as K
from dorefa import runtime
from dorefa.runtime.compare import (
    _torch_model,
    compare_logits,
    load_test_set,
    model_input_batches,
)


def _inputs(path: Path, data: str, threads: int, batch: int, ckpt: str):
    model = runtime.load(path, threads=threads)
    test_set = load_test_set(data, None, None, model)
    net = _torch_model(ckpt, threads, model)
    xs, want = [], []
    with torch.no_grad():
        for x, _ in model_input_batches(test_set, batch, model.input_shape[1]):
            xs.append(x.numpy())
            want.append(net(x).numpy())
    return xs, np.concatenate(want)


def _run(path: Path, kernel: str, xs, limit: int, threads: int):
    with K.use_kernel(kernel):
        model = runtime.load(path, threads=threads)
        out, seen, t0 = [], 0, time.perf_counter()
        for x in xs:
            if seen >= limit:
                break
            x = x[: limit - seen]
            out.append(model(x))
            seen += len(x)
        return np.concatenate(out), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--scalar-subset", type=int, default=None, help="images for popcount-scalar")
    ap.add_argument("--reference-subset", type=int, default=1000, help="images for reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.dorefa"
        cmd = [sys.executable, "-m", "dorefa", "export", args.checkpoint, "-o", str(path)]
        subprocess.run(cmd, check=True, capture_output=True)
        xs, want = _inputs(path, args.data, args.threads, args.batch_size, args.checkpoint)
        rows, first = [], None
        for kernel in K.available_kernels():
            limit = {"reference": args.reference_subset}.get(kernel, len(want))
            if "scalar" in kernel and args.scalar_subset:
                limit = args.scalar_subset
            got, seconds = _run(path, kernel, xs, limit, args.threads)
            cmp = compare_logits(got, want[: len(got)])
            if first is None:
                first = got
            same = np.array_equal(got, first[: len(got)])
            rows.append(
                f"| {kernel} | {len(got)} | {cmp['agreement']:.4f} | {cmp['max_rel_diff']:.1e} "
                f"| {'yes' if same else 'no'} | {len(got) / seconds:.0f} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    print(
        f"{args.checkpoint}: runtime vs torch on the {args.data} test set, {args.threads} "
        f"thread(s)\n\n| kernel | images | agreement | max rel. logit diff | logits = "
        f"{K.available_kernels()[0]}'s | images/s |\n|---|---:|---:|---:|---|---:|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
