// The Winograd tile rows' vector ISA on ymm (winograd_tile.h): 8 tiles a vector, 8 channels a
// pass of the sums. AVX2 + FMA; the AVX2 file's rows, and the zmm rows' last few tiles of a row
// (ZmmTiles::Half). Internal linkage, one copy per ISA file.
#ifndef DOREFA_CSRC_WINOGRAD_YMM_H_
#define DOREFA_CSRC_WINOGRAD_YMM_H_

#include <immintrin.h>

#include <cstdint>

#include "float_codes_simd.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

struct YmmTiles {
  static constexpr int kLanes = 8;
  using Half = void;               // no narrower block
  static constexpr int kOuts = 8;  // channels a pass: 8 FMA chains (2 pipes x latency 4)
  using Vec = __m256;
  static Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec Set1(float f) { return _mm256_set1_ps(f); }
  static Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static uint32_t Codes(const float* v, int64_t count, float b, float e, float levels,
                        uint8_t* dst) {
    return ProvedCodesY(v, count, b, e, levels, dst);
  }
  static Vec Fnma(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }
  static void Interleave(Vec y0, Vec y1, int64_t ncols, float* dst) {
    const __m256 lo = _mm256_unpacklo_ps(y0, y1);  // columns 0-3 | 8-11
    const __m256 hi = _mm256_unpackhi_ps(y0, y1);  // columns 4-7 | 12-15
    Part(_mm256_permute2f128_ps(lo, hi, 0x20), ncols, dst);
    Part(_mm256_permute2f128_ps(lo, hi, 0x31), ncols - 8, dst + 8);
  }
  static void Part(Vec v, int64_t n, float* dst) {  // the first n (<= 8) floats of v
    if (n >= 8) {
      _mm256_storeu_ps(dst, v);
    } else if (n > 0) {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      _mm256_maskstore_ps(dst, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane), v);
    }
  }
};

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_WINOGRAD_YMM_H_
