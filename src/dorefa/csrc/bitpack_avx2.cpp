// AVX2 activation packing (the method: PackActivations in bitpack.h). A work item's 64 channels
// x 64 pixels of bytes are transposed as 16 blocks of 16 x 16 bytes (SSE2 unpacks) into
// pixel-major rows of 64 channel bytes; VPMOVMSKB then reads bit 7 of 32 bytes at once, so
// bit plane m of a pixel's 64 channels is two VPSLLW by 7 - m and two VPMOVMSKB (a 16-bit
// shift moves bit m of the low byte to bit 7 and bit m of the high byte, bit 8 + m, to bit
// 15). No 64 x 64 bit transpose and no per-byte gather: on svhn's 64->64 at batch 32 the
// portable packer took 16% of `popcount-avx2`'s time (Zen 4, AVX2 path).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "bitpack.h"
#include "byte_transpose.h"

namespace dorefa {
namespace {

// Rows [c0, c0 + 16) x pixels [p0, p0 + 16) of the item (channel rows of NCHW, `hw` apart;
// rows past nch and pixels past npx as zeros), transposed into t[p][c]; the bytes ORed into
// `any`.
void TransposeBlock(const uint8_t* src, int64_t hw, int64_t c0, int64_t nch, int64_t p0,
                    int64_t npx, uint8_t (*t)[64], __m128i& any) {
  __m128i r[16];
  const int64_t n = std::min<int64_t>(16, npx - p0);
  for (int i = 0; i < 16; ++i) {
    const uint8_t* row = src + (c0 + i) * hw + p0;
    if (c0 + i >= nch) {
      r[i] = _mm_setzero_si128();
    } else if (n == 16) {
      r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
    } else {
      alignas(16) uint8_t tail[16] = {};
      std::memcpy(tail, row, static_cast<size_t>(n));
      r[i] = _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
    }
    any = _mm_or_si128(any, r[i]);
  }
  Transpose16x16(r);
  for (int i = 0; i < n; ++i) _mm_store_si128(reinterpret_cast<__m128i*>(&t[p0 + i][c0]), r[i]);
}

}  // namespace

uint8_t PackActivationsAvx2(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int64_t item0,
                            int64_t item1) {
  const int64_t hw = g.h * g.w;
  if (hw == 1) return PackActivations(g, x, xpk, item0, item1);  // channels contiguous already
  __m128i any = _mm_setzero_si128();
  for (int64_t it = item0; it < item1; ++it) {
    const PackItem item = LocatePackItem(g, it);
    const uint8_t* src = x + (item.n * g.c + item.cb * 64) * hw + item.q0;
    alignas(32) uint8_t t[64][64];  // [pixel][channel]
    for (int64_t c0 = 0; c0 < 64; c0 += 16)
      for (int64_t p0 = 0; p0 < item.npx; p0 += 16)
        TransposeBlock(src, hw, c0, item.nch, p0, item.npx, t, any);
    uint64_t bits[8][64];  // [plane][pixel]
    for (int64_t p = 0; p < item.npx; ++p) {
      const __m256i lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(t[p]));
      const __m256i hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(t[p] + 32));
      for (int m = 0; m < g.x_bits; ++m) {
        const __m128i s = _mm_cvtsi32_si128(7 - m);
        const auto l = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(lo, s)));
        const auto h = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(hi, s)));
        bits[m][p] = uint64_t{l} | uint64_t{h} << 32;
      }
    }
    StorePackItem(g, item, bits, xpk);
  }
  alignas(16) uint8_t b[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(b), any);
  uint8_t all_or = 0;
  for (uint8_t v : b) all_or |= v;
  return all_or;
}

}  // namespace dorefa
