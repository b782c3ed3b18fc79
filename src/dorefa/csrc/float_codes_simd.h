// Q of conv_float.h on vectors, and its proof against an error bound e (Q(v - e) == Q(v + e)),
// for the float first layer's vector paths: ymm where the file is built with AVX2, zmm with
// AVX-512F. Internal linkage, one copy per ISA file.
#ifndef DOREFA_CSRC_FLOAT_CODES_SIMD_H_
#define DOREFA_CSRC_FLOAT_CODES_SIMD_H_

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <limits>

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

#ifdef __AVX2__
// Q (conv_float.h) of 8 pooled values: rint(clip(pooled + b, 0, 1) * levels); NaN -> 0.
inline __m256 Quantize(__m256 pooled, __m256 b, __m256 levels) {
  __m256 z = _mm256_add_ps(pooled, b);
  z = _mm256_min_ps(_mm256_max_ps(z, _mm256_setzero_ps()), _mm256_set1_ps(1.0f));
  return _mm256_round_ps(_mm256_mul_ps(z, levels), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// The codes of 8 (pooled) sums v as 8 bytes (lane l in byte l), and in *proved the bit mask of
// the lanes whose code is proved (conv_float.h: Q(v - e) == Q(v + e)).
inline uint64_t CodesY(__m256 v, __m256 b, __m256 e, __m256 levels, uint32_t* proved) {
  const __m256 lo = Quantize(_mm256_sub_ps(v, e), b, levels);
  const __m256 hi = Quantize(_mm256_add_ps(v, e), b, levels);
  *proved = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(lo, hi, _CMP_EQ_OQ)));
  const __m256i q = _mm256_cvtps_epi32(hi);  // codes <= 255: pack to 8 bytes
  const __m128i q16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
  return static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_packus_epi16(q16, q16)));
}

// E of 8 channels with the per-window bound (conv_float.h): min(e, eps2 N_p + 2 FLT_MIN),
// eps2 the channels' factors, norm N_p.
inline __m256 WindowBoundY(__m256 e, const float* eps2, float norm) {
  const __m256 tiny = _mm256_set1_ps(2 * std::numeric_limits<float>::min());
  return _mm256_min_ps(e, _mm256_fmadd_ps(_mm256_loadu_ps(eps2), _mm256_set1_ps(norm), tiny));
}

// The codes of count (<= 8) values v[0 .. count) to dst; returns the mask of those not proved.
inline uint32_t ProvedCodesY(const float* v, int64_t count, float b, float e, float levels,
                             uint8_t* dst) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i in = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), lane);
  uint32_t proved;
  const uint64_t bytes = CodesY(_mm256_maskload_ps(v, in), _mm256_set1_ps(b), _mm256_set1_ps(e),
                                _mm256_set1_ps(levels), &proved);
  for (int64_t l = 0; l < count; ++l) dst[l] = static_cast<uint8_t>(bytes >> (8 * l));
  return ~proved & ((1u << count) - 1);
}
#endif  // __AVX2__

#ifdef __AVX512F__
// Q (conv_float.h) of 16 values as int32 lanes: rint(clip(v + b, 0, 1) * levels), the rounding
// (to nearest even) in the conversion; NaN -> 0 (max returns its second operand on NaN), as the
// AVX2 path's Quantize.
inline __m512i QuantizeZ(__m512 v, __m512 b, __m512 levels) {
  __m512 z = _mm512_add_ps(v, b);
  z = _mm512_min_ps(_mm512_max_ps(z, _mm512_setzero_ps()), _mm512_set1_ps(1.0f));
  return _mm512_cvt_roundps_epi32(_mm512_mul_ps(z, levels),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// The codes (int32 lanes, <= 255) of 16 channels whose float32 (pooled) sums are v, and in
// *proved the lanes whose code is proved (conv_float.h: Q(v - e) == Q(v + e)).
inline __m512i CodesZ(__m512 v, __m512 b, __m512 e, __m512 levels, __mmask16* proved) {
  const __m512i lo = QuantizeZ(_mm512_sub_ps(v, e), b, levels);
  const __m512i hi = QuantizeZ(_mm512_add_ps(v, e), b, levels);
  *proved = _mm512_cmpeq_epi32_mask(lo, hi);
  return hi;
}

// WindowBoundY on 16 channels.
inline __m512 WindowBoundZ(__m512 e, const float* eps2, float norm) {
  const __m512 tiny = _mm512_set1_ps(2 * std::numeric_limits<float>::min());
  return _mm512_min_ps(e, _mm512_fmadd_ps(_mm512_loadu_ps(eps2), _mm512_set1_ps(norm), tiny));
}

// The codes of count (<= 16) values v[0 .. count) to dst; returns the mask of those not proved.
inline uint32_t ProvedCodesZ(const float* v, int64_t count, float b, float e, float levels,
                             uint8_t* dst) {
  const __mmask16 in = static_cast<__mmask16>(count >= 16 ? 0xFFFF : (1u << count) - 1);
  __mmask16 proved;
  const __m512i c = CodesZ(_mm512_maskz_loadu_ps(in, v), _mm512_set1_ps(b), _mm512_set1_ps(e),
                           _mm512_set1_ps(levels), &proved);
  alignas(16) uint8_t bytes[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(bytes), _mm512_cvtepi32_epi8(c));
  std::memcpy(dst, bytes, static_cast<size_t>(count));
  return static_cast<uint32_t>(in & ~proved);
}
#endif  // __AVX512F__

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_FLOAT_CODES_SIMD_H_
