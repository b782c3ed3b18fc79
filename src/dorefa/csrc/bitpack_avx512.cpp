// AVX-512 activation packing (see PackActivations in bitpack.h for the method): VPTESTMB turns
// 64 pixel bytes into the 64-bit mask of one bit plane in one instruction, and the 64x64
// transpose runs on 8 zmm registers (register i, lane l = row 8i + l).
#include <immintrin.h>

#include <algorithm>

#include "bitpack.h"

namespace dorefa {
namespace {

// Transpose64x64 (bitpack.cpp) with rows in 8 zmm. Steps s = 32, 16, 8 pair rows k, k + s
// that sit in the same lane of registers i, i + s / 8; steps s = 4, 2, 1 pair lanes l, l ^ s
// of one register, reached with a lane permutation.
inline void TransposeZmm(__m512i r[8]) {
  const uint64_t kLow[6] = {0x00000000FFFFFFFFULL, 0x0000FFFF0000FFFFULL, 0x00FF00FF00FF00FFULL,
                            0x0F0F0F0F0F0F0F0FULL, 0x3333333333333333ULL, 0x5555555555555555ULL};
  for (int step = 0; step < 3; ++step) {
    const int s = 32 >> step, d = s / 8;
    const __m512i low = _mm512_set1_epi64(static_cast<long long>(kLow[step]));
    for (int i = 0; i < 8; ++i) {
      if (i & d) continue;
      const __m512i t =
          _mm512_and_si512(_mm512_xor_si512(_mm512_srli_epi64(r[i], s), r[i + d]), low);
      r[i + d] = _mm512_xor_si512(r[i + d], t);
      r[i] = _mm512_xor_si512(r[i], _mm512_slli_epi64(t, s));
    }
  }
  for (int step = 3; step < 6; ++step) {
    const int s = 32 >> step;
    const __m512i low = _mm512_set1_epi64(static_cast<long long>(kLow[step]));
    const __m512i partner =
        _mm512_xor_si512(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(s));
    __mmask8 high = 0;  // lanes l with l & s != 0 (the "k + s" rows)
    for (int l = 0; l < 8; ++l) high |= static_cast<__mmask8>((l & s) ? 1 << l : 0);
    for (int i = 0; i < 8; ++i) {
      const __m512i p = _mm512_permutexvar_epi64(partner, r[i]);
      // Valid in low lanes: t for the pair (lane l, lane l + s).
      const __m512i t = _mm512_and_si512(_mm512_xor_si512(_mm512_srli_epi64(r[i], s), p), low);
      const __m512i t_of_partner = _mm512_permutexvar_epi64(partner, t);
      r[i] = _mm512_mask_blend_epi64(high, _mm512_xor_si512(r[i], _mm512_slli_epi64(t, s)),
                                     _mm512_xor_si512(r[i], t_of_partner));
    }
  }
}

}  // namespace

uint8_t PackActivationsAvx512(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int64_t item0,
                              int64_t item1) {
  const int64_t hw = g.h * g.w;
  uint8_t all_or = 0;
  for (int64_t it = item0; it < item1; ++it) {
    const PackItem item = LocatePackItem(g, it);
    const int64_t npx = item.npx, nch = item.nch;
    const __mmask64 pmask = npx == 64 ? ~__mmask64{0} : ((__mmask64{1} << npx) - 1);
    alignas(64) uint64_t bits[8][64];  // [plane][channel] -> after the transpose [plane][pixel]
    __m512i ors = _mm512_setzero_si512();
    const uint8_t* src = x + (item.n * g.c + item.cb * 64) * hw + item.q0;
    for (int64_t r = 0; r < nch; ++r) {
      // Masked: bytes past the plane are neither read nor counted (they load as 0).
      const __m512i v = _mm512_maskz_loadu_epi8(pmask, src + r * hw);
      ors = _mm512_or_si512(ors, v);
      for (int m = 0; m < g.x_bits; ++m) {
        bits[m][r] = _mm512_test_epi8_mask(v, _mm512_set1_epi8(static_cast<char>(1 << m)));
      }
    }
    for (int m = 0; m < g.x_bits; ++m) {
      std::fill(bits[m] + nch, bits[m] + 64, uint64_t{0});
      __m512i rows[8];
      for (int i = 0; i < 8; ++i) rows[i] = _mm512_load_si512(bits[m] + 8 * i);
      TransposeZmm(rows);
      for (int i = 0; i < 8; ++i) _mm512_store_si512(bits[m] + 8 * i, rows[i]);
    }
    // Fold the 64 OR-ed bytes to one.
    const __m256i o4 =
        _mm256_or_si256(_mm512_castsi512_si256(ors), _mm512_extracti64x4_epi64(ors, 1));
    __m128i o2 = _mm_or_si128(_mm256_castsi256_si128(o4), _mm256_extracti128_si256(o4, 1));
    o2 = _mm_or_si128(o2, _mm_srli_si128(o2, 8));
    o2 = _mm_or_si128(o2, _mm_srli_si128(o2, 4));
    o2 = _mm_or_si128(o2, _mm_srli_si128(o2, 2));
    o2 = _mm_or_si128(o2, _mm_srli_si128(o2, 1));
    all_or |= static_cast<uint8_t>(_mm_cvtsi128_si32(o2));

    StorePackItem(g, item, bits, xpk);
  }
  return all_or;
}

}  // namespace dorefa
