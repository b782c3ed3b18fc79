"""MAC/cycle ceilings per core of the kernels, by CPU family: the one table the benchmarks read
for "share of ceiling" (the derivations: docs/kernels.md, "Ceilings"; port_rates.py measures
each kernel's inner step alone against them).

Two families of x86 cores run this project, with different vector pipes:

* ``zen`` (AMD Zen 2, 3, 4): four 256-bit vector pipes, a 512-bit operation two halves on
  them; VPSHUFB and shifts on two of the pipes; a broadcast from memory takes a pipe slot.
* ``golden-cove`` (Intel Sapphire / Emerald Rapids): three 256-bit vector ports (p0, p1, p5),
  two 512-bit ones (p0 with p1, and p5), each with a 512-bit FMA and VPDPBUSD; VPSHUFB and
  VPERMB on zmm on p5 only, VPSHUFB on ymm on p1 and p5; VPMADDUBSW / VPMADDWD on p0 and p1; a
  broadcast from memory is a load alone; AMX (one TDPBUUD of 16 x 16 x 64 per 16 cycles).
"""

from __future__ import annotations

from pathlib import Path

from dorefa.kernels import choose

ZEN, GOLDEN_COVE = "zen", "golden-cove"

# Popcount kernels, binary (plane-pair) MAC/cycle: a W-bit x A-bit MAC is W x A of them.
# avx512: 3 uops (VPAND, VPOPCNTQ, VPADDQ) per 512, two 512-bit ports or four 256-bit pipes.
# avx2: 16 vector ops per 512 (the nibble-table count); zen: 51 ops per 1536 on 4 pipes with
# the broadcasts; golden-cove: 48 ops per 1536 on 3 ports.
BINARY = {
    ZEN: {"avx512": 341.33, "avx2": 120.47},
    GOLDEN_COVE: {"avx512": 341.33, "avx2": 96.0},
}
# int8 kernels, flat in the bits. vnni: one (zen) or two (golden-cove) VPDPBUSD zmm a cycle.
# avx2: VPMADDUBSW + VPADDW per 32 MACs (zen measured 50; golden-cove 2 ops on 3 ports, 48);
# W8A8's nibble path, per 128 MACs (4 pixels x 8 channels x 4 bytes): 8 VPMADDUBSW + 8 VPADDW,
# the weights' nibble split (3) and the int16 sums' fold every 8 groups (16 / 8): 21 ops on
# golden-cove's 3 ports (18.3); zen adds its 4 broadcasts, 25 ops on 4 pipes (20.5; a Zen 2's
# one multiply pipe holds it to 14.2: 9 multiplies). Derived.
# int8-winograd-avx2 at W8A8 (3x3 stride 1: Winograd F(2x2, 3x3), 16 multiplies for 36 MACs;
# F(2x4, 3x3) below):
# per 4 channels of 6 tiles x 8 output channels (192 multiplies) 12 VPMADDWD + 12 VPADDD and 8
# loads; zen: the multiplies on its two multiply pipes, the adds on the other two, 6 cycles:
# 32 multiplies, 72 MAC/cycle (Zen 2's one multiply pipe: 36); golden-cove: 24 ops on 3 ports,
# 8 cycles, 54. Tiles of 2 x 4 outputs (F(2x4, 3x3), the wide layers: 18, 13, 9 or 7 columns)
# take 3 MACs a multiply: 4/3 of these (96, 48, 72); the table keeps the 2 x 2 tiles' figure, so
# the share on those layers reads 4/3 too high. Its other bit pairs run int8-avx2's tiles. Derived.
INT8 = {
    ZEN: {
        "int8-vnni": 64.0,
        "int8-avx2": 50.0,
        "int8-avx2 W8A8": 20.5,
        "int8-winograd-avx2": 50.0,
        "int8-winograd-avx2 W8A8": 72.0,
    },
    GOLDEN_COVE: {
        "int8-amx": 1024.0,
        "int8-vnni": 128.0,
        "int8-avx2": 48.0,
        "int8-avx2 W8A8": 18.3,
        "int8-winograd-avx2": 48.0,
        "int8-winograd-avx2 W8A8": 54.0,
    },
}
# lut kernels, per weight plane and activation slice. lut-vnni: VPERMB + VPDPBUSD per 256 MACs,
# four halves on three pipes (zen, 192) or one each on p5 and p0 (golden-cove, 256). The byte
# counters (VPSHUFB + VPADDB per lookup vector, the widening every k8): per 256 MACs
# 2 x lookups zmm ops, 2 a cycle on both families (zen's four pipes, golden-cove's two ports),
# at most one VPSHUFB zmm a cycle; on ymm, 128 MACs a pair: zen the same rate, golden-cove
# 3 ports (192 / lookups), VPSHUFB on two.
LUT_VNNI = {ZEN: 192.0, GOLDEN_COVE: 256.0}
LUT_BYTES = {ZEN: {"lut-avx512": 256.0, "lut-avx2": 256.0},
             GOLDEN_COVE: {"lut-avx512": 256.0, "lut-avx2": 192.0}}  # fmt: skip
# The float first layer's FMA taps, float32 MAC/cycle: two 256-bit FMA pipes (zen: a zmm FMA
# takes both); golden-cove two 512-bit FMA ports.
FLOAT = {ZEN: {"ymm": 16.0, "zmm": 16.0}, GOLDEN_COVE: {"ymm": 16.0, "zmm": 32.0}}


def cpu_family(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """``zen`` (AuthenticAMD), ``golden-cove`` (GenuineIntel: the Sapphire Rapids class machines
    this project runs on), or None (unknown: no shares)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    if "AuthenticAMD" in text:
        return ZEN
    if "GenuineIntel" in text:
        return GOLDEN_COVE
    return None


FAMILY = cpu_family()


def binary(backend: str, family: str | None = FAMILY) -> float:
    """Binary MAC/cycle ceiling of a popcount backend (``avx512``, ``avx2``; NaN otherwise)."""
    return BINARY.get(family, {}).get(backend, float("nan"))


def ceiling(kernel: str, wb: int, xb: int, family: str | None = FAMILY) -> float:
    """MAC/cycle ceiling per core of a kernel name at W = wb, A = xb (NaN where none is
    derived for this CPU family)."""
    name = kernel.split("/")[0]
    if name.startswith("lut-"):
        slices = len(choose.lut_slices(xb))
        if name in choose.LUT_DWORD_SUMS:
            return LUT_VNNI.get(family, float("nan")) / slices / wb
        rate = LUT_BYTES.get(family, {}).get(name, float("nan"))
        return min(rate / choose.lut_lookups(1, xb), 256.0 / slices) / wb
    if name.startswith("int8-"):
        w8a8 = name in ("int8-avx2", "int8-winograd-avx2") and wb == xb == 8
        key = f"{name} W8A8" if w8a8 else name
        return INT8.get(family, {}).get(key, float("nan"))
    return binary(name.removeprefix("popcount-"), family) / (wb * xb)
