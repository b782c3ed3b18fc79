"""Measured ceilings: each kernel's inner-loop instruction mix, alone, on this core.

docs/kernels.md derives every kernel's ceiling from its instruction mix and the CPU's pipes.
This script measures the same mixes with nothing else around them: one iteration is one step
of the kernel's register tile (the same instructions, the same loads from an L1-resident
buffer, the same independent accumulator chains), timed in a loop, and converted to cycles
with the core clock measured beside it (benchmarks/cpu_clock.py). The result is the rate the
kernel's loop could reach if nothing but its inner step ran: the ceiling "measured" in the
table of docs/kernels.md, beside the derived one.

    .venv/bin/python benchmarks/port_rates.py            # every mix this CPU can run
    .venv/bin/python benchmarks/port_rates.py --repeat 40 # more rounds, the fastest kept

Mixes (MACs per iteration in brackets; a W-bit x A-bit MAC of a popcount kernel is W x A
binary MACs, so W1A2 runs at half the binary rate):

- ``popcount-avx512``: bitconv_avx512.cpp's 8 x 24 tile, one activation word: 3 weight
  loads, 8 broadcasts, 24 x (VPANDQ, VPOPCNTQ, VPADDQ) on zmm [24 x 512 binary];
- ``popcount-avx512 regs``: the same 72 operations without the loads;
- ``popcount-avx2``: bitconv_avx2.cpp's 3 x 8 tile, one activation word: 2 weight loads,
  3 broadcasts, per pixel and half 8 ops (VPAND x&w, VPAND, VPSRLW, VPAND, 2 VPSHUFB, 2 VPADDB)
  [3 x 2 x 256 binary]; ``popcount-avx2 regs``: the same 48 operations without the loads;
- ``int8-vnni``: int8conv_vnni.cpp's 6 x 64 tile, one group of 4 channels: 4 weight loads,
  24 VPDPBUSD with an embedded {1to16} broadcast [24 x 64];
- ``lut-avx512 W1A4`` / ``W1A2``: lut_tile.h's 2 x 4 zmm tile, k8 = 4 (21) steps of 4 index
  loads, 2 table loads, 8 x (VPSHUFB, VPADDB), then the widening, 8 x (VPADDW, VPSRLW, VPADDW)
  [k8 x 8 x 256]; ``lut-avx2 W1A4`` / ``W1A2``: the 2 x 2 ymm tile [k8 x 4 x 128];
- ``lut-vnni``: lut_vnni.cpp's 4 x 4 tile, one step: 4 index loads, 4 table loads, 16 x
  (VPERMB, VPDPBUSD) [16 x 256], whatever the activation bits; ``lut-vnni regs``: the same 32
  operations without the loads;
- ``int8-winograd-avx2``: int8conv_winograd_avx2.cpp's 6 x 8 product, one group of 4 channels:
  2 weight loads, 6 qword broadcasts, 12 x (VPMADDWD, VPADDD) [12 x 16 multiplies, 432 MACs of
  the 3x3 convolution]; ``int8-winograd-avx2 regs``: the 24 operations without the loads;
- ``float conv zmm`` / ``float conv ymm``: the float first layer, one tap of its 4-pixel run:
  6 (3) weight loads, 4 broadcasts, 24 (12) VFMADD231PS on zmm (ymm) [24 x 16 / 12 x 8];
- ``int8-amx``: int8conv_amx.cpp's 2 x 2 tiles, one 64-byte step: 4 TILELOADD (1 KB each,
  rows 64 bytes apart) and 4 TDPBUUD [4 x 16 x 16 x 64]; ``int8-amx regs``: the 4 TDPBUUD
  alone. Both ask Linux for the tile data first (arch_prctl) and load a tile configuration.

Register-only dependent chains would measure latency, not throughput: every mix keeps at least
as many independent accumulators as the kernel does.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_clock import clock_hz, compile_c  # noqa: E402


@dataclass(frozen=True)
class Mix:
    name: str
    flags: tuple[str, ...]  # /proc/cpuinfo flags the mix needs
    macs: int  # MACs (binary MACs for popcount mixes) per iteration
    binary: bool  # popcount mix: a W x A MAC is W * A of these
    body: tuple[str, ...]  # AT&T lines of one iteration; %[b] is the L1 buffer, %[s] = 64
    setup: str = ""  # C statements before the timed loop
    teardown: str = ""  # C statements after it


def _popcount_avx512(loads: bool) -> tuple[str, ...]:
    lines = []
    if loads:
        lines += [f"vmovdqu64 {64 * q}(%[b]), %%zmm{24 + q}" for q in range(3)]
    for p in range(8):
        if loads:
            lines.append(f"vpbroadcastq {256 + 8 * p}(%[b]), %%zmm27")
        for q in range(3):
            t = 28 + (3 * p + q) % 4
            lines += [
                f"vpandq %%zmm{24 + q}, %%zmm27, %%zmm{t}",
                f"vpopcntq %%zmm{t}, %%zmm{t}",
                f"vpaddq %%zmm{t}, %%zmm{3 * p + q}, %%zmm{3 * p + q}",
            ]
    return tuple(lines)


def _popcount_avx2(loads: bool) -> tuple[str, ...]:
    # ymm0-5 byte counters, 6-7 weights, 8 table, 9 mask, 10 word, 11-13 temporaries
    lines = ["vmovdqu 0(%[b]), %%ymm6", "vmovdqu 32(%[b]), %%ymm7"] if loads else []
    for p in range(3):
        if loads:
            lines.append(f"vpbroadcastq {256 + 8 * p}(%[b]), %%ymm10")
        for h in range(2):
            acc = 2 * p + h
            lines += [
                f"vpand %%ymm{6 + h}, %%ymm10, %%ymm11",
                "vpand %%ymm9, %%ymm11, %%ymm12",
                "vpsrlw $4, %%ymm11, %%ymm13",
                "vpand %%ymm9, %%ymm13, %%ymm13",
                "vpshufb %%ymm12, %%ymm8, %%ymm12",
                "vpshufb %%ymm13, %%ymm8, %%ymm13",
                "vpaddb %%ymm12, %%ymm13, %%ymm12",
                f"vpaddb %%ymm12, %%ymm{acc}, %%ymm{acc}",
            ]
    return tuple(lines)


def _vnni() -> tuple[str, ...]:
    lines = [f"vmovdqu64 {64 * q}(%[b]), %%zmm{24 + q}" for q in range(4)]
    for p in range(6):
        for q in range(4):
            lines.append(
                f"vpdpbusd {256 + 4 * p}(%[b])%{{1to16%}}, %%zmm{24 + q}, %%zmm{4 * p + q}"
            )
    return tuple(lines)


def _winograd(loads: bool) -> tuple[str, ...]:
    """int8conv_winograd_avx2.cpp's product, one group of 4 channels: 2 weight loads, 6 tile
    broadcasts (a qword each), 12 x (VPMADDWD, VPADDD) [12 x 16 multiplies = 432 MACs of the
    convolution: 2.25 a multiply]. ymm0-11 sums, 12-13 weights, 14 broadcast, 15 product."""
    lines = ["vmovdqu 0(%[b]), %%ymm12", "vmovdqu 32(%[b]), %%ymm13"] if loads else []
    for t in range(6):
        if loads:
            lines.append(f"vpbroadcastq {256 + 8 * t}(%[b]), %%ymm14")
        for h in range(2):
            lines += [
                f"vpmaddwd %%ymm{12 + h}, %%ymm14, %%ymm15",
                f"vpaddd %%ymm15, %%ymm{2 * t + h}, %%ymm{2 * t + h}",
            ]
    return tuple(lines)


def _lut(reg: str, pixels: int, blocks: int, k8: int) -> tuple[str, ...]:
    """lut_tile.h's step on zmm (2 x 4 tile) or ymm (2 x 2), k8 steps then one widening: per
    step ``blocks`` index loads, per pixel a table load, per pair VPSHUFB + VPADDB; the widening
    VPADDW, VPSRLW, VPADDW per pair, the byte counters zeroed (a zeroing idiom)."""
    pairs = pixels * blocks  # byte counters 0.., 16-bit w then odd counters, indices, table, tmp
    w, odd, idx = pairs, 2 * pairs, 3 * pairs
    table, tmp = idx + blocks, idx + blocks + 1
    lines = []
    for step in range(k8):
        lines += [
            f"vmovdqu64 {64 * (step * blocks + k)}(%[b]), %%{reg}{idx + k}" for k in range(blocks)
        ]
        for p in range(pixels):
            lines.append(f"vmovdqu64 {2048 + 64 * (step * pixels + p)}(%[b]), %%{reg}{table}")
            for k in range(blocks):
                a = p * blocks + k
                lines += [
                    f"vpshufb %%{reg}{idx + k}, %%{reg}{table}, %%{reg}{tmp}",
                    f"vpaddb %%{reg}{tmp}, %%{reg}{a}, %%{reg}{a}",
                ]
    for a in range(pairs):
        lines += [
            f"vpaddw %%{reg}{a}, %%{reg}{w + a}, %%{reg}{w + a}",
            f"vpsrlw $8, %%{reg}{a}, %%{reg}{tmp}",
            f"vpaddw %%{reg}{tmp}, %%{reg}{odd + a}, %%{reg}{odd + a}",
            f"vpxor %%xmm{a}, %%xmm{a}, %%xmm{a}",  # zeroes the whole register
        ]
    return tuple(line.replace("vmovdqu64", "vmovdqu") if reg == "ymm" else line for line in lines)


def _lut_vnni(loads: bool = True) -> tuple[str, ...]:
    """lut_vnni.cpp's step: 4 index loads, per pixel of 4 a table load, per pair VPERMB + an
    in-place VPDPBUSD against ones (zmm0-15 sums, 16-19 indices, 20 table, 21 ones, 22 tmp);
    without ``loads`` the same 32 operations on registers only."""
    lines = [f"vmovdqu64 {64 * k}(%[b]), %%zmm{16 + k}" for k in range(4)] if loads else []
    for p in range(4):
        if loads:
            lines.append(f"vmovdqu64 {2048 + 64 * p}(%[b]), %%zmm20")
        for k in range(4):
            lines += [
                f"vpermb %%zmm20, %%zmm{16 + k}, %%zmm22",
                f"vpdpbusd %%zmm21, %%zmm22, %%zmm{4 * p + k}",
            ]
    return tuple(lines)


# AMX: the process's permission for the tile data, then every tile 16 rows of 64 bytes.
AMX_SETUP = """
  static uint8_t cfg[64] __attribute__((aligned(64)));
  cfg[0] = 1;
  for (int t = 0; t < 8; ++t) cfg[16 + 2 * t] = 64, cfg[48 + t] = 16;
  syscall(158, 0x1023, 18);  /* arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) */
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
"""


AMX_TEARDOWN = '  __asm__ volatile("tilerelease");  /* the tile state back to init */'
AMX_FLAGS = ("amx_tile", "amx_int8")


def _amx(loads: bool) -> tuple[str, ...]:
    lines = [f"tileloadd {1024 * t}(%[b],%[s],1), %%tmm{4 + t}" for t in range(4)] if loads else []
    lines += [
        f"tdpbuud %%tmm{6 + b}, %%tmm{4 + a}, %%tmm{2 * a + b}" for a in (0, 1) for b in (0, 1)
    ]
    return tuple(lines)


def _fma(reg: str, blocks: int) -> tuple[str, ...]:
    """One tap of the float first layer: 4 pixels x ``blocks`` vectors of channels (zmm: 6
    blocks of 16, conv_float_avx512.cpp; ymm: 3 of 8, conv_float_avx2.cpp)."""
    w0 = 4 * blocks  # accumulators 0 .. 4 * blocks - 1, then the weights, then the word
    lines = [f"vmovups {64 * q}(%[b]), %%{reg}{w0 + q}" for q in range(blocks)]
    for p in range(4):
        x = w0 + blocks + p % 2
        lines.append(f"vbroadcastss {512 + 4 * p}(%[b]), %%{reg}{x}")
        lines += [
            f"vfmadd231ps %%{reg}{w0 + q}, %%{reg}{x}, %%{reg}{blocks * p + q}"
            for q in range(blocks)
        ]
    return tuple(lines)


MIXES = (
    Mix("popcount-avx512", ("avx512f", "avx512_vpopcntdq"), 24 * 512, True, _popcount_avx512(True)),
    Mix(
        "popcount-avx512 regs",
        ("avx512f", "avx512_vpopcntdq"),
        24 * 512,
        True,
        _popcount_avx512(False),
    ),
    Mix("popcount-avx2", ("avx2",), 3 * 2 * 256, True, _popcount_avx2(True)),
    Mix("popcount-avx2 regs", ("avx2",), 3 * 2 * 256, True, _popcount_avx2(False)),
    Mix("int8-vnni", ("avx512f", "avx512_vnni"), 24 * 64, False, _vnni()),
    Mix("lut-avx512 W1A4", ("avx512bw",), 4 * 8 * 256, False, _lut("zmm", 2, 4, 4)),
    Mix("lut-avx512 W1A2", ("avx512bw",), 21 * 8 * 256, False, _lut("zmm", 2, 4, 21)),
    Mix("lut-vnni", ("avx512vbmi", "avx512_vnni"), 16 * 256, False, _lut_vnni()),
    Mix("lut-vnni regs", ("avx512vbmi", "avx512_vnni"), 16 * 256, False, _lut_vnni(False)),
    Mix("lut-avx2 W1A4", ("avx2",), 4 * 4 * 128, False, _lut("ymm", 2, 2, 4)),
    Mix("lut-avx2 W1A2", ("avx2",), 21 * 4 * 128, False, _lut("ymm", 2, 2, 21)),
    Mix("int8-winograd-avx2", ("avx2",), 12 * 16 * 9 // 4, False, _winograd(True)),
    Mix("int8-winograd-avx2 regs", ("avx2",), 12 * 16 * 9 // 4, False, _winograd(False)),
    Mix("float conv zmm", ("avx512f", "fma"), 24 * 16, False, _fma("zmm", 6)),
    Mix("float conv ymm", ("avx2", "fma"), 12 * 8, False, _fma("ymm", 3)),
    Mix("int8-amx", AMX_FLAGS, 4 * 16384, False, _amx(True), AMX_SETUP, AMX_TEARDOWN),
    Mix("int8-amx regs", AMX_FLAGS, 4 * 16384, False, _amx(False), AMX_SETUP, AMX_TEARDOWN),
)


def _function(index: int, mix: Mix) -> str:
    zmm = any("zmm" in line for line in mix.body)
    regs = range(32) if zmm else range(16)
    clobbers = ", ".join(f'"xmm{r}"' for r in regs)
    asm = "\n".join(f'      "{line}\\n\\t"' for line in mix.body)
    target = '__attribute__((target("avx512f"))) ' if zmm else ""  # to clobber zmm16-31
    return f"""
{target}double mix{index}(int64_t iterations, const void* buf) {{
  struct timespec t0, t1;
  int64_t n = iterations;
{mix.setup}
  clock_gettime(CLOCK_MONOTONIC, &t0);
  __asm__ volatile(
      "1:\\n\\t"
{asm}
      "dec %[n]\\n\\tjnz 1b\\n\\t"
      : [n] "+r"(n)
      : [b] "r"(buf), [s] "r"((int64_t)64)
      : "cc", "memory", {clobbers});
  clock_gettime(CLOCK_MONOTONIC, &t1);
{mix.teardown}
  return (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
}}
"""


def source() -> str:
    """Every mix this CPU runs; the others as stubs (an older assembler may not know AMX)."""
    head = "#include <stdint.h>\n#include <time.h>\n#include <unistd.h>\n"
    flags = cpu_flags()

    def stub(i: int) -> str:
        return f"double mix{i}(int64_t n, const void* b) {{ (void)n; (void)b; return -1.0; }}\n"

    return head + "".join(
        _function(i, m) if set(m.flags) <= flags else stub(i) for i, m in enumerate(MIXES)
    )


@functools.cache
def _library() -> ctypes.CDLL:
    so = compile_c(source(), "ports", "the instruction mixes")
    for i in range(len(MIXES)):
        fn = getattr(so, f"mix{i}")
        fn.restype = ctypes.c_double
        fn.argtypes = [ctypes.c_int64, ctypes.c_void_p]
    return so


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cycles_per_iteration(indices: list[int], iterations: int, repeat: int) -> dict[int, float]:
    """Fewest cycles per iteration of each mix over ``repeat`` rounds; a round runs every mix
    once, each beside its own clock probe, so every mix is sampled across the whole run (on a
    shared host another guest on the core's sibling thread slows the vector pipes for seconds
    at a time, which the integer clock probe does not see)."""
    buf = (ctypes.c_uint8 * (16384 + 64))()  # zeros: no float specials, every load hits L1
    at = (ctypes.addressof(buf) + 63) // 64 * 64  # 64-byte aligned: no line-split loads
    fns = {i: getattr(_library(), f"mix{i}") for i in indices}
    for fn in fns.values():
        fn(iterations // 10, at)  # warm-up (clock ramp, page)
    best = {i: float("inf") for i in indices}
    for _ in range(repeat):
        for i, fn in fns.items():
            hz = clock_hz(probes=5, iterations=100_000)
            best[i] = min(best[i], fn(iterations, at) * hz / iterations)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=500_000)
    p.add_argument("--repeat", type=int, default=15, help="rounds; each mix's fastest is kept")
    args = p.parse_args(argv)
    if platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit("the mixes are x86-64 assembly; this machine is " + platform.machine())
    flags = cpu_flags()
    runnable = [i for i, m in enumerate(MIXES) if set(m.flags) <= flags]
    cycles = cycles_per_iteration(runnable, args.iterations, args.repeat)
    print(
        f"core clock {clock_hz() / 1e9:.3f} GHz (dependent adds); fewest cycles of "
        f"{args.repeat} rounds\n"
    )
    print("| mix | instructions / iteration | cycles / iteration | MAC/cycle | W1A2 MAC/cycle |")
    print("|---|---:|---:|---:|---:|")
    for i, mix in enumerate(MIXES):
        if i not in cycles:
            print(f"| {mix.name} | {len(mix.body)} | (needs {', '.join(mix.flags)}) | | |")
            continue
        rate = mix.macs / cycles[i]
        w1a2 = f"{rate / 2:.1f}" if mix.binary else ""
        print(f"| {mix.name} | {len(mix.body)} | {cycles[i]:.2f} | {rate:.1f} | {w1a2} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
