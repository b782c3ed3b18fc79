"""Int8 dot-product and lut kernels against the popcount kernel and torch (fp32, int8), same
process.

For each layer (AlexNet conv3 and the 3x3 layers of the SVHN model), batch and bit pair (W1A2,
W2A2, W1A4, W8A8), every contestant runs interleaved round by round (bench_kernels.py's
time_round: a settle pause and an untimed call first); the table shows medians. Kernel times
include packing the activations; weights are packed once (torch's int8 weights are prepacked
too). Torch runs one conv of the same shape: its time does not depend on the bit pair.

Rows: each kernel forced, and "pick: <kernel>", the engine's own per-layer choice
(kernels/choose.py) with nothing forced. MAC/cyc is per core: it divides by the clock measured
on the row's threads (dependent-add chains, cpu_clock.clock_hz) and by the thread
count; "of ceiling" is its share of the kernel's derived ceiling at that bit pair. With 1
thread (the default) times are the calling thread's CPU time (time.thread_time: every
contestant, torch included, runs on the calling thread), so time lost to other processes on a
shared machine is not counted; with more, wall time.

    .venv/bin/python benchmarks/bench_int8.py                 # batch 1 and 32, 1 thread
    .venv/bin/python benchmarks/bench_int8.py --threads 2 --batches 1 --rounds 3
    .venv/bin/python benchmarks/bench_int8.py --output requant --batches 32 --layers svhn
    .venv/bin/python benchmarks/bench_int8.py --bits "8,8" --layers svhn   # W8A8 rows only
"""

from __future__ import annotations

import argparse
import statistics
import time

import bench_kernels
import ceilings
import cpu_clock
import numpy as np
import torch
from bench_kernels import LAYERS, SETTLE_SECONDS

import dorefa.kernels as K

BIT_PAIRS = ((1, 2), (2, 2), (1, 4), (8, 8))  # (w_bits, x_bits)
KERNELS = (
    "popcount",
    "int8-amx",
    "int8-vnni",
    "int8-avx2",
    "int8-winograd-avx2",
    "lut-vnni",
    "lut-avx512",
    "lut-avx2",
)
PICK = "pick"  # the engine's per-layer choice (kernels/choose.py), nothing forced


def torch_contestants(layer, n: int, rng: np.random.Generator) -> dict:
    """fp32 and the torch int8 engines of bench_kernels.py, named ``torch ...``."""
    return {
        f"torch {name}": fn for name, fn in bench_kernels.torch_contestants(layer, n, rng).items()
    }


def prepared(pw, xb: int, x: np.ndarray, pad: int, output: str):
    """A prepared convolution with the output mode: 'signed', or 'requant' to 2-bit codes (a
    (1,2,6) layer's next activations: uint8 codes, torch int8's quint8 output is their like).
    Its 3 thresholds per channel are evenly spaced, as a trained layer's (BatchNorm's affine
    map of the quantizer's even steps), from the median of the signed outputs, half their
    interquartile range apart."""
    signed = K.prepare_conv(pw, xb, 1, pad, "signed")
    if output == "signed":
        return signed
    q1, q2, q3 = np.quantile(signed(x, 1), [0.25, 0.5, 0.75])
    step = max(1, int((q3 - q1) / 2))
    thresholds = np.tile(int(q2) + step * np.arange(-1, 2, dtype=np.int32), (pw.shape[0], 1))
    direction = np.ones(pw.shape[0], dtype=np.int8)
    return K.prepare_conv(pw, xb, 1, pad, "requant", thresholds, direction)


def kernel_contestants(
    layer, n: int, threads: int, rng: np.random.Generator, output: str = "signed",
    bit_pairs=BIT_PAIRS,
) -> dict:  # fmt: skip
    """(kernel, 'W?A?') -> one prepared convolution on that kernel (output mode `output`)."""
    out = {}
    available = K.available_kernels()
    for wb, xb in bit_pairs:
        x = rng.integers(0, 1 << xb, (n, layer.c, layer.hw, layer.hw), dtype=np.uint8)
        w = rng.integers(0, 1 << wb, (layer.o, layer.c, layer.k, layer.k), dtype=np.uint8)
        pw = K.pack_weights(w, wb)
        conv = prepared(pw, xb, x, layer.pad, output)
        for kernel in (*KERNELS, PICK):
            name = K.kernel_name("") if kernel == "popcount" else kernel
            if kernel != PICK and name not in available:
                continue

            def run(conv=conv, x=x, name=name, pick=kernel == PICK):
                if pick:
                    return conv(x, threads)
                with K.use_kernel(name):
                    return conv(x, threads)

            run()  # packs the int8 layout once (and makes the pick), outside the timing
            label = f"pick: {K.last_kernel()}" if kernel == PICK else name
            out[label, f"W{wb}A{xb}"] = run
    return out


def _share(key, per_cycle: float) -> str:
    """The share of the kernel's ceiling (per core), or '-' for torch."""
    if not isinstance(key, tuple):
        return "-"
    kernel, bits = key
    wb, xb = (int(v) for v in bits[1:].split("A"))
    return f"{per_cycle / ceilings.ceiling(kernel.removeprefix('pick: '), wb, xb):.0%}"


def time_round(fn, min_seconds: float, clock) -> float:
    """Seconds per call on `clock`, after a pause and one untimed call (bench_kernels.py)."""
    time.sleep(SETTLE_SECONDS)
    fn()
    reps, t0 = 0, clock()
    while clock() - t0 < min_seconds or reps == 0:
        fn()
        reps += 1
    return (clock() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", default="", help="only the layers whose name contains this")
    ap.add_argument(
        "--output",
        choices=("signed", "requant"),
        default="requant",
        help="our output: 2-bit codes (requant: the work torch's quint8 output does), or int32 "
        "signed sums",
    )
    ap.add_argument("--bits", default="", help="only these W,A pairs, e.g. '8,8 1,2'")
    args = ap.parse_args()
    pairs = [tuple(int(b) for b in p.split(",")) for p in args.bits.split()] or BIT_PAIRS
    rng = np.random.default_rng(0)
    torch.set_num_threads(args.threads)
    timer = time.thread_time if args.threads == 1 else time.perf_counter
    cols = ["layer", "N", "GHz", "bits", "kernel", "us", "GMAC/s", "MAC/cyc", "of ceiling"]
    cols += ["vs int8", "vs fp32"]
    print(
        f"threads {args.threads}, popcount = {K.kernel_name()}, medians of {args.rounds}, "
        f"our output {args.output}; {bench_kernels.isa_line()}"
    )
    engines = [e for e in ("x86", "fbgemm") if e in torch.backends.quantized.supported_engines]
    lossy = [e for e in engines if bench_kernels.torch_int8_saturates(e)]
    if lossy:
        print(
            f"torch int8 ({', '.join(lossy)}) saturates 8-bit products on this instruction set "
            "(no VNNI): its times are not those of an exact W8A8 convolution"
        )
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), flush=True)
    layers = [la for la in LAYERS if la.k == 3 and args.layers in la.name]
    for layer in layers:
        for n in (int(b) for b in args.batches.split(",")):
            fns = {
                **torch_contestants(layer, n, rng),
                **kernel_contestants(layer, n, args.threads, rng, args.output, pairs),
            }
            clock = cpu_clock.clock_hz(args.threads)
            samples: dict = {k: [] for k in fns}
            names = list(fns)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    samples[name].append(time_round(fns[name], 0.02, timer))
            clock = max(clock, cpu_clock.clock_hz(args.threads))
            t = {k: statistics.median(v) for k, v in samples.items()}
            macs = layer.macs(n)
            int8, fp32 = bench_kernels.best(t, "torch int8"), bench_kernels.best(t, "torch fp32")
            for key in names:
                kernel, bits = key if isinstance(key, tuple) else (key, "-")
                row = [layer.name, n, f"{clock / 1e9:.2f}", bits, kernel, f"{t[key] * 1e6:.0f}"]
                per_cycle = macs / t[key] / clock / args.threads
                row += [f"{macs / t[key] / 1e9:.1f}", f"{per_cycle:.1f}", _share(key, per_cycle)]
                row += [f"{int8 / t[key]:.2f}x", f"{fp32 / t[key]:.1f}x"]
                print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
