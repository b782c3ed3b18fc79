"""Training overhead of the DoReFa quantizers: step time of a (W,A,G) svhn model relative to the
same model with bits 32,32,32, in the same process, interleaved, 1 thread, medians.

    python benchmarks/bench_quant_overhead.py                 # (1,2,6) vs (32,32,32), batch 128
    python benchmarks/bench_quant_overhead.py --bits 1,2,6 2,2,6 --rounds 15

A "step" is forward + cross-entropy + backward + Adam step on a fixed random batch of
Fashion-MNIST-shaped inputs (1 x 40 x 40). The goal of the training issue is <= 1.2x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from dorefa.models import create_model
from dorefa.nn import set_grad_generator


def make_step(bits: str, batch: int, width: float):
    torch.manual_seed(0)
    model = create_model("svhn", bits=bits, in_channels=1, width=width)
    set_grad_generator(model, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, 40, 40)
    y = torch.randint(0, 10, (batch,))

    def step(phase: str = "train") -> float:
        t0 = time.perf_counter()
        if phase == "forward":
            with torch.no_grad():
                model(x)
        else:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bits", nargs="+", default=["1,2,6"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    configs = ["32,32,32"] + args.bits
    steps = {b: make_step(b, args.batch, args.width) for b in configs}
    for phase in ("train", "forward"):
        for s in steps.values():  # warm-up
            s(phase)
        times = {b: [] for b in configs}
        for _ in range(args.rounds):  # interleaved rounds
            for b in configs:
                times[b].append(steps[b](phase))
        base = statistics.median(times["32,32,32"])
        print(
            f"\n{phase} step, svhn width {args.width}, batch {args.batch}, "
            f"{args.threads} thread(s), median of {args.rounds} interleaved rounds"
        )
        print("| bits | median ms | vs 32,32,32 |")
        print("|---|---:|---:|")
        for b in configs:
            med = statistics.median(times[b])
            print(f"| {b} | {med * 1e3:.1f} | {med / base:.3f}x |")


if __name__ == "__main__":
    main()
