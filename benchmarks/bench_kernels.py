"""Bit-serial convolution (dorefa.kernels) against torch fp32 and int8 convolutions.

Layers: AlexNet conv3 and the conv layers of the SVHN model (40x40 input), for W1A2 and W1A1,
batch 1 and 32, 1 and 2 threads. Every contestant runs in the same process, interleaved
round by round; the table shows medians over rounds. The bit kernel's time includes packing
the activations into bit planes (weights are packed once, like torch's prepacked int8 weights).

MAC/cycle uses the core clock measured here, for each row and with that row's number of
threads: the best of many short chains of dependent register-register adds (one add per
cycle) run on every thread at once, before and after the row's rounds (the higher clock of
the two counts). /proc/cpuinfo only shows the nominal MHz, and the clock of one busy core is
not the clock of two: on the 2-core VM this was written on, a core ran ~10% slower while the
other was busy too, so a 2-thread row divided by the 1-core clock understates MAC/cycle.

No OMP_WAIT_POLICY is set: the bit kernels use their own thread pool (not OpenMP), and torch
runs with the default policy its users get (set it in the environment to compare).

    .venv/bin/python benchmarks/bench_kernels.py            # full run, writes nothing
    .venv/bin/python benchmarks/bench_kernels.py --quick    # a fast smoke run
    .venv/bin/python benchmarks/bench_kernels.py --out docs/kernels.md
    .venv/bin/python benchmarks/bench_kernels.py --kernel popcount-avx512/shift   # one kernel

The clock probe is built aside (benchmarks/cpu_clock.py), not part of the kernel library.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import ceilings
import cpu_clock
import numpy as np
import torch

import dorefa.kernels as K


@dataclass(frozen=True)
class Layer:
    name: str
    c: int  # input channels
    o: int  # output channels
    hw: int  # input height = width
    k: int  # kernel size
    pad: int

    @property
    def out_hw(self) -> int:
        return self.hw + 2 * self.pad - self.k + 1

    def macs(self, n: int) -> int:
        """Multiply-adds of the taps inside the image (a padding tap multiplies a zero: the
        kernels that skip it do less work, and counting it would inflate their share)."""
        inside = sum(  # taps of one output row/column position that fall inside the image
            min(p + self.k - self.pad, self.hw) - max(p - self.pad, 0) for p in range(self.out_hw)
        )
        return n * self.o * inside**2 * self.c


LAYERS = [
    Layer("alexnet conv3 256->384 13x13 3x3 p1", 256, 384, 13, 3, 1),
    Layer("svhn conv 48->64 18x18 3x3 p1", 48, 64, 18, 3, 1),
    Layer("svhn conv 64->64 18x18 3x3 p1", 64, 64, 18, 3, 1),
    Layer("svhn conv 64->128 9x9 3x3 valid", 64, 128, 9, 3, 0),
    Layer("svhn conv 128->128 7x7 3x3 p1", 128, 128, 7, 3, 1),
    Layer("svhn conv 128->128 7x7 3x3 valid", 128, 128, 7, 3, 0),
    Layer("svhn conv 128->512 5x5 5x5 valid", 128, 512, 5, 5, 0),
]


# The variables that hold each side to a smaller instruction set (a CPU of the other family
# simulated on this one): ours, ATen's kernels, oneDNN (torch fp32 and the x86 int8 engine),
# fbgemm (the other int8 engine; it picks its own code from the CPU otherwise).
ISA_VARS = (
    "DOREFA_CPU_FEATURES",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "FBGEMM_ENABLE_INSTRUCTIONS",
)


def isa_line() -> str:
    """The ISA variables set, for a table's header, and a warning where ours is held but torch's
    engines are not all (a ratio against torch's wider code is not the other CPU's ratio)."""
    held = {v: os.environ[v] for v in ISA_VARS if os.environ.get(v)}
    if not held:
        return "instruction sets: this CPU's own"
    line = "instruction sets held: " + ", ".join(f"{k}={v}" for k, v in held.items())
    if "DOREFA_CPU_FEATURES" in held and len(held) < len(ISA_VARS):
        line += (
            " (WARNING: not every torch engine held; set "
            + ", ".join(v for v in ISA_VARS if v not in held)
            + ")"
        )
    return line


def nominal_mhz() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return line.split(":")[1].strip()
    except OSError:
        pass
    return "?"


def torch_int8_saturates(engine: str) -> bool:
    """Whether torch's int8 convolution on ``engine`` loses the exact 8-bit products here: 64
    input channels of 255 (quint8, full range: no ``reduce_range``) against weights of 127 (one
    output, 2 072 640, mapped to code 200).
    Without VNNI its VPMADDUBSW pairs (2 x 255 x 127 = 64 770) saturate at 32 767 and the code
    comes out ~101; the exact kernels have no such case (docs/kernels.md)."""
    old = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine
        c, exact = 64, 255 * 127 * 64
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notice of quantized tensors
            qx = torch.quantize_per_tensor(torch.full((1, c, 2, 2), 255.0), 1.0, 0, torch.quint8)
            qw = torch.quantize_per_tensor(torch.full((8, c, 1, 1), 127.0), 1.0, 0, torch.qint8)
            conv = torch.ao.nn.quantized.Conv2d(c, 8, 1)
            conv.set_weight_bias(qw, None)
            conv.scale, conv.zero_point = exact / 200, 0
            return int(conv(qx).int_repr()[0, 0, 0, 0]) != 200
    finally:
        torch.backends.quantized.engine = old


def torch_contestants(layer: Layer, n: int, rng: np.random.Generator) -> dict:
    """torch's own convolution of the layer at its best: ``fp32 eager`` (oneDNN, weights
    re-laid out per call), ``fp32 packed`` (TorchScript frozen + optimize_for_inference:
    packed once) and ``int8 <engine>`` for each quantized engine this torch has (x86 /
    fbgemm), on channels_last input as inside a quantized network (an NCHW input is
    transposed on every call). The fastest of each kind is the competitor (:func:`best`)."""
    out = {}
    xf = torch.from_numpy(rng.random((n, layer.c, layer.hw, layer.hw), dtype=np.float32))
    wf = torch.from_numpy(rng.standard_normal((layer.o, layer.c, layer.k, layer.k), np.float32))

    def fp32():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xf, wf, padding=layer.pad)

    out["fp32 eager"] = fp32
    conv = torch.nn.Conv2d(layer.c, layer.o, layer.k, padding=layer.pad, bias=False).eval()
    with torch.no_grad():
        conv.weight.copy_(wf)
        packed_fp32 = torch.jit.optimize_for_inference(
            torch.jit.freeze(torch.jit.trace(conv, xf[:1], check_trace=False))
        )
    out["fp32 packed"] = lambda: packed_fp32(xf)
    qx = torch.quantize_per_tensor(xf, 1 / 255, 0, torch.quint8)
    qx = qx.contiguous(memory_format=torch.channels_last)
    qw = torch.quantize_per_tensor(wf, 0.02, 0, torch.qint8)
    for engine in ("x86", "fbgemm"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = engine
        packed = torch.ops.quantized.conv2d_prepack(
            qw, None, [1, 1], [layer.pad, layer.pad], [1, 1], 1
        )

        def int8(packed=packed, engine=engine):
            torch.backends.quantized.engine = engine
            return torch.ops.quantized.conv2d(qx, packed, 0.05, 0)

        out[f"int8 {engine}"] = int8
    return out


def contestants(layer: Layer, n: int, threads: int, rng: np.random.Generator) -> dict:
    """name -> zero-argument callable running one convolution."""
    out = {}
    for xb, wb in ((2, 1), (1, 1)):
        x = rng.integers(0, 1 << xb, (n, layer.c, layer.hw, layer.hw), dtype=np.uint8)
        w = rng.integers(0, 1 << wb, (layer.o, layer.c, layer.k, layer.k), dtype=np.uint8)
        conv = K.prepare_conv(K.pack_weights(w, wb), xb, 1, layer.pad)  # once, as a model does

        def bit(x=x, conv=conv):
            return conv(x, threads)

        out[f"W{wb}A{xb}"] = bit
    return out | torch_contestants(layer, n, rng)


# Pause before each round: the previous contestant's idle threads keep spinning for a while
# after its last call (torch's OpenMP threads ~5 ms here, the bit kernels' pool 0.3 ms) and
# would take a core from this one.
SETTLE_SECONDS = 0.01


def time_round(fn, min_seconds: float) -> float:
    """Seconds per call, from enough back-to-back calls to last `min_seconds`.

    First a pause (SETTLE_SECONDS), then one untimed call: the contestant before it has just
    evicted this one's weights and buffers from the caches (and its threads may be asleep),
    and the table is about steady-state speed, for every contestant alike."""
    time.sleep(SETTLE_SECONDS)
    fn()
    reps, elapsed = 0, 0.0
    t0 = time.perf_counter()
    while elapsed < min_seconds or reps == 0:
        fn()
        reps += 1
        elapsed = time.perf_counter() - t0
    return elapsed / reps


def best(t: dict, kind: str) -> float:
    """The fastest time among the contestants named ``kind ...`` (torch at its best)."""
    return min(v for k, v in t.items() if isinstance(k, str) and k.startswith(kind))


def table_row(
    layer: Layer, n: int, threads: int, t: dict[str, float], clock: float, ran: dict[str, str]
) -> str:
    """One markdown row from seconds per call of each contestant; ``ran``: the kernel each
    bit contestant ran (its share is of that kernel's ceiling)."""
    macs = layer.macs(n)
    int8_best, fp32_best = best(t, "int8"), best(t, "fp32")
    row = [layer.name, str(n), str(threads), f"{macs / 1e6:.1f}", f"{clock / 1e9:.2f}"]
    for key in ("W1A2", "W1A1"):
        per_cycle = macs / t[key] / clock
        wb, xb = (int(v) for v in key[1:].split("A"))
        row += [ran[key], f"{t[key] * 1e6:.0f}", f"{macs / t[key] / 1e9:.1f}", f"{per_cycle:.1f}"]
        row += [f"{per_cycle / threads / ceilings.ceiling(ran[key], wb, xb):.0%}"]
    row += [f"{fp32_best * 1e6:.0f}"]
    row += [f"{t[k] * 1e6:.0f}" if k in t else "-" for k in ("int8 x86", "int8 fbgemm")]
    for key in ("W1A2", "W1A1"):
        row += [f"{fp32_best / t[key]:.1f}x", f"{int8_best / t[key]:.1f}x"]
    return "| " + " | ".join(row) + " |"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few rounds, short timings")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--layers", default="", help="only the layers whose name contains this")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    ap.add_argument("--kernel", default="", help="kernel, family or backend (default: fastest)")
    args = ap.parse_args(argv)
    if args.kernel:
        K.set_backend(args.kernel)
    rounds = args.rounds or (3 if args.quick else 9)
    min_seconds = 0.005 if args.quick else 0.03
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)

    header = (
        f"backend {K.backend()} ({K.kernel_name()}), torch {torch.__version__}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"clock measured per row on all its threads (dependent-add chains; /proc/cpuinfo "
        f"nominal {nominal_mhz()} MHz), {rounds} interleaved rounds"
    )
    print(header + "; " + isa_line(), flush=True)
    cols = [
        "layer", "N", "thr", "MMAC", "GHz",
        "W1A2 kernel", "W1A2 us", "W1A2 GMAC/s", "W1A2 MAC/cyc", "W1A2 % ceil/core",
        "W1A1 kernel", "W1A1 us", "W1A1 GMAC/s", "W1A1 MAC/cyc", "W1A1 % ceil/core",
        "fp32 us", "int8 x86 us", "int8 fbgemm us",
        "W1A2 vs fp32", "W1A2 vs int8", "W1A1 vs fp32", "W1A1 vs int8",
    ]  # fmt: skip
    head = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    tables: dict[str, list[str]] = {"median": list(head), "min": list(head)}
    print(*head, sep="\n", flush=True)
    for layer in (lay for lay in LAYERS if args.layers in lay.name):
        for n in batches:
            for threads in thread_counts:
                torch.set_num_threads(threads)
                fns = contestants(layer, n, threads, rng)
                clock = cpu_clock.clock_hz(threads)
                ran = {}
                for name, fn in fns.items():  # warm-up (allocations, first touch)
                    fn()
                    ran[name] = K.last_kernel()
                samples: dict[str, list[float]] = {k: [] for k in fns}
                names = list(fns)
                for r in range(rounds):  # rotate the order: no contestant always goes first
                    for name in names[r % len(names) :] + names[: r % len(names)]:
                        samples[name].append(time_round(fns[name], min_seconds))
                clock = max(clock, cpu_clock.clock_hz(threads))
                for stat, reduce in (("median", statistics.median), ("min", min)):
                    row = table_row(layer, n, threads, {k: reduce(v) for k, v in samples.items()},
                                    clock, ran)  # fmt: skip
                    tables[stat].append(row)
                print(tables["median"][-1], flush=True)

    if args.out:
        cmd = "python " + " ".join(["benchmarks/bench_kernels.py", *(argv or sys.argv[1:])])
        cpu = cpu_name()
        block = (
            f"{BEGIN}\n"
            f"Measured {datetime.date.today()} on {cpu} (2 cores, shared), with\n\n"
            f"    {cmd}\n\n{header}.\n\n"
            "Times are per call (microseconds). The bit kernels' times include packing "
            "the activations into bit planes; weights are packed once, as torch's int8 "
            "weights are prepacked. Ratios are speed-ups: torch time / bit-kernel time "
            "(int8 = the faster of the two torch int8 engines). MACs count the taps inside the "
            "image (padding taps excluded). MAC/cyc = "
            "(MACs / time) / the row's clock (GHz column: measured on all of the row's "
            "threads at once); % ceil/core = MAC/cyc / threads / the ceiling of the kernel "
            "that ran (benchmarks/ceilings.py). "
            "The machine is shared (other jobs run on its "
            "2 cores), so medians include time lost to them; the second table, minimum "
            "over rounds, is the closer estimate of an unloaded core.\n\n"
            "### Medians over rounds\n\n" + "\n".join(tables["median"]) + "\n\n"
            "### Minimum over rounds\n\n" + "\n".join(tables["min"]) + f"\n{END}\n"
        )
        write_block(args.out, block)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo; platform.processor() is empty on Linux)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


BEGIN, END = "<!-- bench_kernels:begin -->", "<!-- bench_kernels:end -->"


def write_block(path: str, block: str) -> None:
    """Replaces the text between the BEGIN/END markers of `path` (the whole file if absent),
    so that hand-written notes around the table survive a re-run."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block.rstrip("\n") + old[old.index(END) + len(END) :]
    else:
        new = "# Bit-serial convolution kernels: speed\n\n" + block
    with open(path, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
