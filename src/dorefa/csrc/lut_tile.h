// The lut kernels' tile (lut.h for the maths and layouts), for one vector ISA. Per activation
// slice s and weight plane b, over the receptive field's kernel rows, each vector step loads
// the tables of 4 (zmm) or 2 (ymm) groups of each of the tile's P pixels and the matching
// weight indices of its NB 16-channel blocks, and adds P x NB lookups into byte counters:
//
//   a8[p][k] += VPSHUFB(tables[p], index[k])       (per byte: one entry <= maxv of T_s)
//
// every k8 = 255 / maxv steps the bytes are widened into two 16-bit counters per word,
//   w += a8 (as words: even byte + 256 odd byte, modulo 2^16),   odd += a8 >> 8,
// (channels 0-7 sit in the even bytes, 8-15 in the odd ones: lut.h), and every
// k16 = 65535 / (kGroups maxv) steps (the end of a run of rows included) flushed: the
// kGroups 128-bit lanes added as 16-bit words, even = w - 256 odd (exact: each sum is below
// 2^16), then widened to 32-bit sums in memory, shifted by b + width s.
//
// Isa provides kBytes (bytes per vector: 64 or 32), kGroups (kBytes / 16), Vec, Load, Store,
// Zero, Lookup (VPSHUFB), AddB, Widen(a8, w, odd) (above), Flush(w, odd, shift, m) (m[o] +=
// channel o's sum over the lanes, as uint32 << shift, o < 16), and for the tables Groups and
// Slice (BuildTables); Store (the template argument) is the int8 store's Isa
// (int8conv_store.h). Internal
// linkage, one copy per ISA file.
#ifndef DOREFA_CSRC_LUT_TILE_H_
#define DOREFA_CSRC_LUT_TILE_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "int8conv.h"
#include "int8conv_store.h"
#include "lut.h"
#include "unroll.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

// Ties a step's loaded vector to a register. Without it GCC 12, short of ymm registers, folded
// the loads into the VPSHUFB that read them: lut-avx2's step loaded each table and weight
// index twice, 8 loads for 4 lookups instead of 4 (Zen 4 AVX2 path: W1A2 1.05-1.40x faster,
// W1A4 0.98-1.08x, same-process A/B on svhn layers and conv3; the zmm code is unchanged).
template <class V>
inline void InRegister(V& v) {
  __asm__("" : "+v"(v));
}

// Adds the sums of kernel rows [r0, r1) of activation slice s and weight plane b, for P pixels
// (table pointers tp, slice 0, at the field's first group) and NB blocks from ob, into
// m[p * ms + 16 * k + o] (ms: uint32 per pixel). K8 = 255 / maxv of the slice's bits, the
// steps between widenings, fixed at compile time so that short runs unroll (K8 = 1, 6-bit
// slices: each lookup is widened at once).
template <class Isa, int P, int NB, int K8>
void LutBlock(const Int8Conv& c, const LutGeom& l, const uint8_t* const* tp, int64_t ob, int s,
              int b, int64_t r0, int64_t r1, uint32_t* m, int64_t ms) {
  using Vec = typename Isa::Vec;
  const ConvGeom& g = *c.g;
  const LutSlices slices(g.x_bits);
  // Steps between flushes: the flush adds the Isa::kGroups lanes in 16 bits (file comment).
  const int64_t k16 = 65535 / (Isa::kGroups * 4 * ((1 << slices.Bits(s, g.x_bits)) - 1));
  const int shift = b + s * slices.width;
  const int64_t row_t = 4 * c.q.row;                 // table bytes per padded row
  const int64_t steps = l.quads * 64 / Isa::kBytes;  // vector steps per kernel row
  Vec w16[P][NB], odd[P][NB];                        // the 16-bit counters (file comment)
  DOREFA_UNROLL for (int p = 0; p < P; ++p) {
    DOREFA_UNROLL for (int k = 0; k < NB; ++k) w16[p][k] = odd[p][k] = Isa::Zero();
  }
  auto flush = [&] {
    DOREFA_UNROLL for (int p = 0; p < P; ++p) {
      DOREFA_UNROLL for (int k = 0; k < NB; ++k) {
        Isa::Flush(w16[p][k], odd[p][k], shift, m + p * ms + kInt8Lanes * k);
        w16[p][k] = odd[p][k] = Isa::Zero();
      }
    }
  };
  const uint8_t* wr;
  const uint8_t* tr[P];
  // n (<= K8) steps from step q into byte counters, then widened.
  auto run = [&](int64_t q, int64_t n) {
    Vec a8[P][NB];
    auto step = [&](int64_t i, bool first) {
      Vec wv[NB];
      DOREFA_UNROLL for (int k = 0; k < NB; ++k) {
        wv[k] = Isa::Load(wr + k * l.block + i * Isa::kBytes);
        InRegister(wv[k]);
      }
      DOREFA_UNROLL for (int p = 0; p < P; ++p) {
        Vec t = Isa::Load(tr[p] + i * Isa::kBytes);
        InRegister(t);
        DOREFA_UNROLL for (int k = 0; k < NB; ++k) {
          const Vec v = Isa::Lookup(t, wv[k]);
          a8[p][k] = first ? v : Isa::AddB(a8[p][k], v);
        }
      }
    };
    step(q, true);
    if constexpr (K8 <= 9) {
      DOREFA_UNROLL for (int64_t j = 1; j < K8; ++j) if (j < n) step(q + j, false);
    } else {
      for (int64_t j = 1; j < n; ++j) step(q + j, false);
    }
    DOREFA_UNROLL for (int p = 0; p < P; ++p) {
      DOREFA_UNROLL for (int k = 0; k < NB; ++k) Isa::Widen(a8[p][k], &w16[p][k], &odd[p][k]);
    }
  };
  int64_t since = 0;  // steps in the 16-bit counters
  for (int64_t r = r0; r < r1; ++r) {
    wr = c.wq + ob * l.block + b * l.plane + r * l.quads * 64;
    DOREFA_UNROLL for (int p = 0; p < P; ++p) tr[p] = tp[p] + s * c.tslice + r * row_t;
    for (int64_t q = 0; q < steps; q += K8) {
      const int64_t n = std::min<int64_t>(K8, steps - q);
      if (since + n > k16) {
        flush();
        since = 0;
      }
      run(q, n);
      since += n;
    }
  }
  flush();
}

template <class Isa>
using LutBlockFn = void (*)(const Int8Conv&, const LutGeom&, const uint8_t* const*, int64_t, int,
                            int, int64_t, int64_t, uint32_t*, int64_t);

// Steps between widenings for slices of 1 .. 6 bits: 255 / (4 (2^bits - 1)).
constexpr int kLutK8[6] = {63, 21, 9, 4, 2, 1};

// [slice bits - 1][0: 1 pixel, 1: P pixels][blocks - 1] for up to sizeof...(Bs) blocks.
template <class Isa, int P, int K8, int... Bs>
constexpr std::array<std::array<LutBlockFn<Isa>, sizeof...(Bs)>, 2> LutBlocksK(
    std::integer_sequence<int, Bs...>) {
  return {{{&LutBlock<Isa, 1, Bs + 1, K8>...}, {&LutBlock<Isa, P, Bs + 1, K8>...}}};
}
template <class Isa, int P, int NB>
constexpr std::array<std::array<std::array<LutBlockFn<Isa>, NB>, 2>, 6> LutBlocks() {
  constexpr auto kBs = std::make_integer_sequence<int, NB>{};
  return {LutBlocksK<Isa, P, kLutK8[0]>(kBs), LutBlocksK<Isa, P, kLutK8[1]>(kBs),
          LutBlocksK<Isa, P, kLutK8[2]>(kBs), LutBlocksK<Isa, P, kLutK8[3]>(kBs),
          LutBlocksK<Isa, P, kLutK8[4]>(kBs), LutBlocksK<Isa, P, kLutK8[5]>(kBs)};
}

// The tables of xq[0 .. bytes) (lut.h; LutTablesFn), Isa::kGroups groups of 4 codes a vector:
// Isa::Groups broadcasts group L's 4 codes to lane L, and T[m] = sum_i (bit i of m ? x_i : 0)
// is 4 lookups (index 0x80 gives 0) and 3 adds; the tail, past whole vectors, is scalar.
template <class Isa>
void BuildTables(const uint8_t* xq, int64_t bytes, int x_bits, int64_t slice_bytes, uint8_t* tq) {
  using Vec = typename Isa::Vec;
  alignas(64) uint8_t pick[4][Isa::kBytes];
  for (int i = 0; i < 4; ++i)
    for (int b = 0; b < Isa::kBytes; ++b)  // byte b: entry b % 16 of lane b / 16
      pick[i][b] = (b >> i) & 1 ? static_cast<uint8_t>(4 * (b / 16) + i) : 0x80;
  Vec p[4];
  for (int i = 0; i < 4; ++i) p[i] = Isa::Load(pick[i]);
  const LutSlices slices(x_bits);
  const int64_t step = 4 * Isa::kGroups, whole = bytes / step * step;
  for (int s = 0; s < slices.count; ++s) {
    const int shift = s * slices.width, mask = (1 << slices.Bits(s, x_bits)) - 1;
    uint8_t* out = tq + s * slice_bytes;
    for (int64_t k = 0; k < whole; k += step) {
      const Vec x = Isa::Slice(Isa::Groups(xq + k), shift, mask);
      const Vec t = Isa::AddB(Isa::AddB(Isa::Lookup(x, p[0]), Isa::Lookup(x, p[1])),
                              Isa::AddB(Isa::Lookup(x, p[2]), Isa::Lookup(x, p[3])));
      Isa::Store(out + 4 * k, t);
    }
  }
  if (whole < bytes)
    BuildTablesScalar(xq + whole, bytes - whole, x_bits, slice_bytes, tq + 4 * whole);
}

// z of the lut kernels (Int8ShiftFn): activations packed unshifted (lut.h), whatever x_bits.
inline int32_t LutShift(int) { return 0; }

// Weight bytes a row chunk may take (NB blocks x rows x quads x 64), so that they stay in L1
// (32 KB on Zen 2 and 4) while the call's pixels pass over them. 20 KB holds the three rows of a
// 3x3 kernel over 128 channels for the 4-block zmm tiles (18 KB), so lut-vnni runs such a layer
// in one pass (2-3% faster on 128->128 layers than with 16 KB); lut-avx512's chunks grow the
// same way, lut-avx2's 2-block tiles from ~256 channels on (lut-avx2 on 128->128: unchanged).
constexpr int64_t kLutChunkBytes = 20 << 10;

// The tile kernel (Int8TileFn) with register tiles of at most P pixels x NB blocks. Per group
// of nb <= NB blocks, the sums of all the call's pixels (<= kMaxLutPixels) grow in memory, as
// the int8 store reads them (raw[p][nb][16]), a chunk of kernel rows at a time over every pixel
// (the chunk's weights stay in L1), then go out 8 pixels at a time (int8conv_store.h).
constexpr int kMaxLutPixels = 32;
// Blocks: the register tiles' functions, [slice bits - 1][0: 1 pixel, 1: P pixels][blocks - 1]
// (LutBlocks below for the byte counters; lut_vnni.cpp's dword sums).
template <class Isa, int P, int NB>
struct ByteCounters {
  static constexpr auto kTable = LutBlocks<Isa, P, NB>();
};
// Blocks whose kStoreTable stores its sums (a call with one slice, one weight plane and one
// chunk of rows: one pass) instead of adding them to m, which then needs no zeroing.
template <class Blocks, class = void>
struct StoresOnePass : std::false_type {};
template <class Blocks>
struct StoresOnePass<Blocks, std::void_t<decltype(Blocks::kStoreTable)>> : std::true_type {};

// The kernel rows in the padding, summed over an image's output rows.
inline int64_t PaddingRows(const ConvGeom& g) {
  int64_t rows = 0;
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    int32_t r0, r1;
    TapsInside(oy * g.stride, g.h, g.pad, static_cast<int32_t>(g.kh), &r0, &r1);
    rows += g.kh - (r1 - r0);
  }
  return rows;
}

template <class Isa, class Store, int P, int NB, class Blocks = ByteCounters<Isa, P, NB>>
void TileLut(const Int8Conv& c, int64_t pix0, int64_t npix, int64_t ob0, int64_t nob) {
  static_assert(kMaxLutPixels % P == 0, "whole register tiles");
  const ConvGeom& g = *c.g;
  const LutGeom l(g);
  const LutSlices slices(g.x_bits);
  const int64_t rows = std::clamp<int64_t>(kLutChunkBytes / (NB * l.quads * 64), 1, g.kh);
  bool one_pass = false;
  if constexpr (StoresOnePass<Blocks>::value)
    one_pass = slices.count == 1 && g.w_bits == 1 && rows >= g.kh;
  const auto& kBlocks = [&]() -> const auto& {
    if constexpr (StoresOnePass<Blocks>::value) {
      if (one_pass) return Blocks::kStoreTable;
    }
    return Blocks::kTable;
  }();
  alignas(64) uint32_t m[kMaxLutPixels * NB * kInt8Lanes];
  int32_t terms[kMaxLutPixels];  // npix <= the kernel's pix_tile = kMaxLutPixels
  Int8FieldTerms(c, pix0, npix, terms);
  const int8_t* fields[kMaxLutPixels];
  c.Fields(pix0, static_cast<int>(npix), fields);
  const uint8_t* tp[kMaxLutPixels];
  for (int64_t i = 0; i < npix; ++i) tp[i] = c.tq + 4 * (fields[i] - c.xq);
  // Each pixel's kernel rows inside the image, [lo, hi): a row in the padding sums only
  // code 0 (the lut kernels pack codes unshifted), table entry 0, so a register tile runs the
  // union of its pixels' rows. A transposed convolution of a valid layer pads by KH - 1: the
  // input gradient of svhn's conv5 (7x7 from 5x5) has 29% of its kernel rows in the padding
  // (1.24-1.26x on lut-avx2), conv3's 22% (1.17-1.19x). Where under 1/16 of the rows are
  // padding (svhn's 18x18 layers: 3.7%) every tile runs every row: the bounds cost more there
  // (0.97x).
  int32_t lo[kMaxLutPixels], hi[kMaxLutPixels];
  if (16 * PaddingRows(g) < g.oh * g.kh) {
    std::fill(lo, lo + npix, 0);
    std::fill(hi, hi + npix, static_cast<int32_t>(g.kh));
  } else {
    const int64_t ohw = g.oh * g.ow;
    int64_t oy = pix0 % ohw / g.ow, ox = pix0 % g.ow;  // stepped, not divided, per pixel
    for (int64_t i = 0; i < npix; ++i) {
      TapsInside(oy * g.stride, g.h, g.pad, static_cast<int32_t>(g.kh), &lo[i], &hi[i]);
      if (++ox == g.ow) ox = 0, oy = oy + 1 == g.oh ? 0 : oy + 1;
    }
  }
  // Kernel rows [r0, r1) of the tile of pixels [p, p + np) that touch the image.
  auto run_rows = [&](int64_t p, int64_t np, int64_t r0, int64_t r1, auto&& block) {
    int64_t a = r1, b = r0;
    for (int64_t i = p; i < p + np; ++i)
      a = std::min<int64_t>(a, lo[i]), b = std::max<int64_t>(b, hi[i]);
    a = std::max(a, r0), b = std::min(b, r1);
    if (a < b || one_pass) block(a, std::max(a, b));
  };
  for (int64_t ob = ob0; ob < ob0 + nob; ob += NB) {
    const int nb = static_cast<int>(std::min<int64_t>(NB, ob0 + nob - ob));
    const int64_t ms = nb * kInt8Lanes;
    if (!one_pass) std::memset(m, 0, sizeof(uint32_t) * static_cast<size_t>(npix * ms));
    for (int s = 0; s < slices.count; ++s) {
      const auto& blocks = kBlocks[slices.Bits(s, g.x_bits) - 1];
      for (int b = 0; b < g.w_bits; ++b) {
        for (int64_t r0 = 0; r0 < g.kh; r0 += rows) {
          const int64_t r1 = std::min(g.kh, r0 + rows);
          int64_t p = 0;
          for (; p + P <= npix; p += P)
            run_rows(p, P, r0, r1, [&](int64_t a, int64_t e) {
              blocks[1][nb - 1](c, l, tp + p, ob, s, b, a, e, m + p * ms, ms);
            });
          for (; p < npix; ++p)
            run_rows(p, 1, r0, r1, [&](int64_t a, int64_t e) {
              blocks[0][nb - 1](c, l, tp + p, ob, s, b, a, e, m + p * ms, ms);
            });
        }
      }
    }
    StoreCall<Store>(c, pix0, npix, ob, nb, reinterpret_cast<const int32_t*>(m), terms);
  }
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_LUT_TILE_H_
