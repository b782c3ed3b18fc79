// PackGroups64Avx512 (int8pack.h): int8conv.cpp's SSE2 packer of 16 channels, four groups at
// a time in the 128-bit lanes of zmm. AVX-512 F/BW.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "int8pack.h"

namespace dorefa {
namespace {

// In place, per 128-bit lane: r[i] holds bytes M[i][0..15] on entry, M[0..15][i] on return.
void Transpose16x16Lanes(__m512i (&r)[16]) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[i] = _mm512_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
    a[i + 8] = _mm512_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 4; ++i) {
      b[h * 8 + i] = _mm512_unpacklo_epi16(a[h * 8 + 2 * i], a[h * 8 + 2 * i + 1]);
      b[h * 8 + 4 + i] = _mm512_unpackhi_epi16(a[h * 8 + 2 * i], a[h * 8 + 2 * i + 1]);
    }
  }
  for (int q = 0; q < 4; ++q) {
    for (int h = 0; h < 2; ++h) {
      a[q * 4 + 2 * h] = _mm512_unpacklo_epi32(b[q * 4 + 2 * h], b[q * 4 + 2 * h + 1]);
      a[q * 4 + 2 * h + 1] = _mm512_unpackhi_epi32(b[q * 4 + 2 * h], b[q * 4 + 2 * h + 1]);
    }
    r[4 * q] = _mm512_unpacklo_epi64(a[q * 4], a[q * 4 + 2]);
    r[4 * q + 1] = _mm512_unpackhi_epi64(a[q * 4], a[q * 4 + 2]);
    r[4 * q + 2] = _mm512_unpacklo_epi64(a[q * 4 + 1], a[q * 4 + 3]);
    r[4 * q + 3] = _mm512_unpackhi_epi64(a[q * 4 + 1], a[q * 4 + 3]);
  }
}

// 16 bytes from s, or the m (< 16) before `end` then zeros.
inline __m128i Load16(const uint8_t* s, const uint8_t* end, int64_t m) {
  if (end - s >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
  alignas(16) uint8_t tail[16] = {};
  std::memcpy(tail, s, static_cast<size_t>(m));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
}

}  // namespace

uint8_t PackGroups64Avx512(const uint8_t* src, const uint8_t* end, int64_t hw, int64_t blocks,
                           int64_t j0, int64_t j1, int32_t z, const PlaneDst& d) {
  const __m512i shift = _mm512_set1_epi8(static_cast<char>(z));
  const __m512i zero = _mm512_setzero_si512();
  __m512i ors = zero;
  int64_t y = j0 / d.w, x = j0 % d.w;
  for (int64_t j = j0; j < j1; j += 16) {
    const int64_t m = std::min<int64_t>(16, j1 - j);
    int64_t out[16], at[16];  // pixel k's packed offset and its place in d.sums
    d.Pixels(m, &y, &x, out, at);
    __m512i s32 = zero;  // pixel k's sum in lane k
    for (int64_t bi = 0; bi < blocks; ++bi) {
      __m512i r[16];  // lane l: channel 64 bi + 16 l + i
      for (int i = 0; i < 16; ++i) {
        const uint8_t* s = src + (64 * bi + i) * hw + j;
        __m512i v = _mm512_castsi128_si512(Load16(s, end, m));
        v = _mm512_inserti32x4(v, Load16(s + 16 * hw, end, m), 1);
        v = _mm512_inserti32x4(v, Load16(s + 32 * hw, end, m), 2);
        r[i] = _mm512_inserti32x4(v, Load16(s + 48 * hw, end, m), 3);
      }
      if (d.sums != nullptr) {  // per lane 16 channels' sums of 16 pixels: <= 16 x 255
        __m512i lo = zero, hi = zero;
        for (int i = 0; i < 16; ++i) {
          lo = _mm512_add_epi16(lo, _mm512_unpacklo_epi8(r[i], zero));
          hi = _mm512_add_epi16(hi, _mm512_unpackhi_epi8(r[i], zero));
        }
        // the four lanes' words added (pixels 0-7 in lo, 8-15 in hi; <= 64 x 255), widened
        auto lanes = [](__m512i v) {
          const __m256i h =
              _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
          return _mm_add_epi16(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        };
        s32 = _mm512_add_epi32(s32, _mm512_cvtepu16_epi32(_mm256_set_m128i(lanes(hi), lanes(lo))));
      }
      Transpose16x16Lanes(r);
      uint8_t* dst = d.out + 64 * bi;
      for (int64_t k = 0; k < m; ++k) {
        ors = _mm512_or_si512(ors, r[k]);
        _mm512_storeu_si512(dst + out[k], _mm512_sub_epi8(r[k], shift));
      }
    }
    if (d.sums != nullptr) {
      alignas(64) int32_t sum[16];
      _mm512_store_si512(sum, s32);
      for (int64_t k = 0; k < m; ++k) d.sums[at[k]] += sum[k];
    }
  }
  alignas(64) uint8_t v[64];
  _mm512_store_si512(v, ors);
  uint8_t all = 0;
  for (uint8_t b : v) all |= b;
  return all;
}

}  // namespace dorefa
