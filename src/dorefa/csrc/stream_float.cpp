// The float stream's elementwise operations (stream_float.h has the spec): loops the compiler
// vectorizes, SSE2 for the quantization; built with -ffp-contract=off (CMakeLists.txt).
#include "stream_float.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace dorefa {
namespace {

// NumPy's clip(v, 0, 1): v unless it is below 0 or above 1 (NaN and -0 kept).
inline float Clip01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

}  // namespace

void QuantizeFloat(const float* x, int64_t count, int bits, uint8_t* codes) {
  const auto n = static_cast<float>((1 << bits) - 1);
  constexpr float kRound = 8388608.0f;  // 2^23
  int64_t i = 0;
#if defined(__SSE2__)
  // The same operations on 4 lanes (the compiler leaves the loop below scalar and branchy).
  const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
  const __m128 vn = _mm_set1_ps(n), round = _mm_set1_ps(kRound);
  for (; i + 16 <= count; i += 16) {
    __m128i q[4];
    for (int k = 0; k < 4; ++k) {
      __m128 v = _mm_loadu_ps(x + i + 4 * k);
      v = _mm_andnot_ps(_mm_cmplt_ps(v, zero), v);  // v < 0 -> +0
      const __m128 above = _mm_cmpgt_ps(v, one);
      v = _mm_or_ps(_mm_andnot_ps(above, v), _mm_and_ps(above, one));
      v = _mm_mul_ps(v, vn);
      v = _mm_and_ps(_mm_cmpord_ps(v, v), v);  // NaN -> 0
      q[k] = _mm_cvttps_epi32(_mm_sub_ps(_mm_add_ps(v, round), round));
    }
    const __m128i bytes =
        _mm_packus_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), bytes);
  }
#endif
  for (; i < count; ++i) {
    float v = Clip01(x[i]) * n;
    v = v == v ? v : 0.0f;  // NaN -> code 0
    codes[i] = static_cast<uint8_t>(static_cast<int32_t>((v + kRound) - kRound));
  }
}

void AffineFloat(const float* x, int64_t n, int64_t c, int64_t hw, const float* scale,
                 const float* shift, float* y) {
  for (int64_t p = 0; p < n * c; ++p) {
    const float a = scale[p % c], b = shift[p % c];
    const float* src = x + p * hw;
    float* dst = y + p * hw;
    for (int64_t i = 0; i < hw; ++i) dst[i] = src[i] * a + b;
  }
}

void ScaleIntFloat(const int32_t* d, int64_t n, int64_t c, int64_t hw, const float* alpha,
                   const float* beta, bool clip, float* y) {
  for (int64_t p = 0; p < n * c; ++p) {
    const float a = alpha[p % c], b = beta[p % c];
    const int32_t* src = d + p * hw;
    float* dst = y + p * hw;
    if (clip) {
      for (int64_t i = 0; i < hw; ++i) dst[i] = Clip01(static_cast<float>(src[i]) * a + b);
    } else {
      for (int64_t i = 0; i < hw; ++i) dst[i] = static_cast<float>(src[i]) * a + b;
    }
  }
}

}  // namespace dorefa
