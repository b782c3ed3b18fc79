"""A/B of two builds of the kernel extension (or two kernels of one) on one layer, in one process.

Loads both `_kernels*.so` files side by side (each under its own package name), checks that
they give the same result, then times them round by round: the order rotates every round, each
timed round follows an untimed call, and the table shows medians and the best round. On a
shared machine this is the only comparison worth making: the same binary reads a few percent
apart from one run to the next, while the two builds here see the same conditions.

    # the extension of an older commit, built aside; SO = this tree's installed build
    OLD=$(mktemp -d) && git worktree add $OLD/src <commit> && cmake -S $OLD/src -B $OLD/build \\
        -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=$PWD/.venv/bin/python \\
        && cmake --build $OLD/build -j2
    SO=$(ls .venv/lib/python3*/site-packages/dorefa/_kernels*.so)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ab.py $OLD/build/_kernels*.so $SO

A variant (another register tile: kTileP / kTileQ in csrc/bitconv_avx512.cpp; another macro
tile, ...) is a copy of the tree with the change, built aside the same way. Two kernels of one
build (the two AVX-512 packers) compare with the same file twice:

    .venv/bin/python benchmarks/bench_ab.py $SO $SO --kernel-a popcount-avx512/gfni \\
        --kernel-b popcount-avx512/shift

Default layer: AlexNet conv3 (256->384, 13x13, 3x3, pad 1), W1A2, batch 1 and 32, 1 thread,
backend avx512 (a name every build knows). Each side packs the weights with its own
`pack_weights` (as a user of that build would).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import statistics
import time

import ceilings
import cpu_clock
import numpy as np


def load(path: str, package: str):
    """The extension at `path` as module `<package>._kernels` (its init symbol stays valid), or
    dorefa's own extension module where `path` is that file (the ceilings import dorefa, and a
    second initialisation of one loaded file fails: pybind11 registers its types once)."""
    from dorefa.kernels.extension import native

    if native is not None and os.path.samefile(path, native.__file__):
        return native
    spec = importlib.util.spec_from_file_location(f"{package}._kernels", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load an extension from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pack(module, kernel: str, w: np.ndarray, w_bits: int) -> np.ndarray:
    """Packed weights from `module`, with `kernel`'s packer where the build has a kernel table
    (older builds: `pack_weights(w, w_bits)` only)."""
    if hasattr(module, "kernel_table"):
        return module.pack_weights(w, w_bits, module.resolve_kernel(kernel))
    return module.pack_weights(w, w_bits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="first _kernels*.so (e.g. an older build)")
    ap.add_argument("b", help="second _kernels*.so")
    ap.add_argument("--layer", default="256,384,13,3,1", help="C,O,HW,K,PAD")
    ap.add_argument("--bits", default="2,1", help="x_bits,w_bits")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--macs-per-round", type=float, default=1e8)
    ap.add_argument("--kernel-a", default="avx512", help="kernel, family or backend of A")
    ap.add_argument("--kernel-b", default="avx512", help="kernel, family or backend of B")
    ap.add_argument(
        "--mode",
        default="acc",
        choices=("acc", "signed", "requant"),
        help="output: int32 sums, the signed transform, or 2-bit codes on evenly spaced "
        "thresholds (as a trained layer's)",
    )
    args = ap.parse_args()

    mod_a = load(args.a, "dorefa_ab_a")  # one file given twice is loaded once
    mod_b = mod_a if os.path.samefile(args.a, args.b) else load(args.b, "dorefa_ab_b")
    mods = {"A": mod_a, "B": mod_b}
    kernels = {"A": args.kernel_a, "B": args.kernel_b}
    c, o, hw, k, pad = (int(v) for v in args.layer.split(","))
    xb, wb = (int(v) for v in args.bits.split(","))
    clock = cpu_clock.clock_hz()
    # each side's MAC/cycle ceiling on this CPU family (a backend name: its popcount kernel)
    ceiling = {
        name: ceilings.ceiling(kernels[name].replace("avx", "popcount-avx", 1)
                               if kernels[name].startswith("avx") else kernels[name], wb, xb)
        for name in mods
    }  # fmt: skip
    print(f"A = {args.a} ({args.kernel_a})\nB = {args.b} ({args.kernel_b})")
    print(
        f"layer C={c} O={o} {hw}x{hw} k{k} p{pad}, W{wb}A{xb}, {args.threads} thread(s), "
        f"clock {clock / 1e9:.2f} GHz, ceiling A {ceiling['A']:.0f} B {ceiling['B']:.0f} "
        f"MAC/cycle ({ceilings.FAMILY}), {args.rounds} rounds"
    )
    rng = np.random.default_rng(0)
    for n in (int(v) for v in args.batches.split(",")):
        x = rng.integers(0, 1 << xb, (n, c, hw, hw), dtype=np.uint8)
        w = rng.integers(0, 1 << wb, (o, c, k, k), dtype=np.uint8)
        words = {name: pack(mods[name], kernels[name], w, wb) for name in mods}

        def call(name, x=x, words=words, mode=args.mode, t=None, d=None, tables=None):
            args_tail = (t, d) if tables is None else (None, None, tables[name])
            return mods[name].bitconv(
                kernels[name], x, words[name], o, c, k, k, xb, wb, 1, pad, args.threads, mode,
                *args_tail,
            )  # fmt: skip

        if args.mode == "requant":  # 3 thresholds a channel over the middle of the signed sums
            lo, hi = np.quantile(call("A", mode="signed"), [0.05, 0.95])
            # t_j = ceil(r_0 + j step), the exporter's form, which the requant tables fit
            # with a line (truncated linspace values could miss it: a search per output)
            steps = np.ceil(lo + np.arange(3) * (hi - lo) / 2)
            t = np.tile(steps.astype(np.int32), (o, 1))
            d = np.ones(o, dtype=np.int8)
            # each build's table built once, as a loaded model's layer keeps it (built per call,
            # its line fitting weighed on every requant time); older builds take the arrays
            tables = {
                n: m.RequantTable(t, d) for n, m in mods.items() if hasattr(m, "RequantTable")
            }
            if len(tables) == len(mods):
                call = functools.partial(call, tables=tables)
            else:
                call = functools.partial(call, t=t, d=d)

        if not np.array_equal(call("A"), call("B")):
            raise SystemExit("the two builds disagree")
        oh = hw + 2 * pad - k + 1
        macs = n * o * oh * oh * c * k * k
        reps = max(1, int(args.macs_per_round / macs))
        times: dict[str, list[float]] = {name: [] for name in mods}
        names = list(mods)
        for r in range(args.rounds):
            for name in names[r % 2 :] + names[: r % 2]:
                call(name)
                t0 = time.perf_counter()
                for _ in range(reps):
                    call(name)
                times[name].append((time.perf_counter() - t0) / reps)
        for name in names:
            med, best = statistics.median(times[name]), min(times[name])
            top = clock * ceiling[name]  # MAC/s at the ceiling
            print(
                f"N={n:3d} {name}: median {med * 1e6:9.1f} us "
                f"{macs / med / clock:6.1f} MAC/cycle ({macs / med / top:6.1%})   "
                f"best {best * 1e6:9.1f} us ({macs / best / top:6.1%})"
            )


if __name__ == "__main__":
    main()
