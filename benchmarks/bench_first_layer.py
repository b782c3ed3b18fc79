"""The float first layer of each model on every vector kernel, beside torch's fp32 convolution of
the same shape, in one process, interleaved rounds, medians, one thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_first_layer.py              # batch 1 and 8/32
    OMP_NUM_THREADS=1 python benchmarks/bench_first_layer.py --rounds 15

Rows: svhn's 1->48 5x5 + max-pool 2 + quantize (batch 1 and 32), AlexNet's 3->96 12x12 /4 +
quantize, ResNet-18's 3->64 7x7 /2 pad 3 with a float output (batch 1 and 8). Our time is the
whole fused step (conv, pool, bias, codes); torch's is `F.conv2d` alone (its first conv, the
issue's yardstick: "within 1.5x of torch fp32's own first conv"). MAC/cycle = conv MACs / time
/ the core clock (cpu_clock.py); the vector paths' ceiling is 16 float32 MAC/cycle on two
256-bit FMA pipes (Zen 2-4) and 32 on Sapphire Rapids' two 512-bit ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cpu_clock
import numpy as np
import torch
from torch.nn import functional as F

import dorefa.kernels as K

# name: (input shape without batch, weight shape, stride, padding, pool, bits or None, batches)
LAYERS = {
    "svhn 1->48 5x5 pool 2": ((1, 40, 40), (48, 1, 5, 5), 1, 0, 2, 2, (1, 32)),
    "alexnet 3->96 12x12 /4": ((3, 224, 224), (96, 3, 12, 12), 4, 0, 1, 2, (1, 8)),
    "resnet18 3->64 7x7 /2 (float out)": ((3, 224, 224), (64, 3, 7, 7), 2, 3, 1, None, (1, 8)),
}


def vector_kernels() -> list[str]:
    return [k for k in K.available_kernels() if k not in ("reference",) and "scalar" not in k]


def contestants(layer, batch: int, rng) -> tuple[dict, int]:
    shape, wshape, s, p, pool, bits, _ = layer
    x = rng.random((batch, *shape), dtype=np.float32)
    w = (rng.standard_normal(wshape) * np.sqrt(2 / np.prod(wshape[1:]))).astype(np.float32)
    b = (rng.standard_normal(wshape[0]) * 0.1).astype(np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    out: dict = {"torch fp32 conv": lambda: F.conv2d(xt, wt, stride=s, padding=p)}
    for kernel in vector_kernels():

        def ours(kernel=kernel):
            with K.use_kernel(kernel):
                if bits is None:
                    return K.conv_float(x, w, b, s, p, 1)
                return K.conv_float_quantize(x, w, b, s, p, pool, bits, 1)

        out[kernel] = ours
    oh = (shape[1] + 2 * p - wshape[2]) // s + 1
    ow = (shape[2] + 2 * p - wshape[3]) // s + 1
    return out, batch * oh * ow * int(np.prod(wshape))


def medians(fns: dict, rounds: int, seconds: float) -> dict:
    reps = {}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    times: dict = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            fns[name]()
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fns[name]()
            times[name].append((time.perf_counter() - t0) / reps[name])
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.05, help="per contestant per round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hz = cpu_clock.clock_hz()
    rng = np.random.default_rng(0)
    print(f"clock {hz / 1e9:.2f} GHz, torch {torch.__version__}, {args.rounds} rounds, medians\n")
    print("| layer | batch | contestant | ms | MAC/cycle | torch conv / this |")
    print("|---|---:|---|---:|---:|---:|")
    for name, layer in LAYERS.items():
        for batch in layer[-1]:
            fns, macs = contestants(layer, batch, rng)
            med = medians(fns, args.rounds, args.seconds)
            ref = med["torch fp32 conv"]
            for who, t in med.items():
                print(
                    f"| {name} | {batch} | {who} | {t * 1e3:.3f} | {macs / t / hz:.1f} "
                    f"| {ref / t:.2f}x |"
                )


if __name__ == "__main__":
    main()
