// AVX-512 rows of the float stream's quantization (stream_float.h): QuantizeFloat's operations
// on 16 lanes, the same float32 steps in the same order, so the same codes as the SSE2 and
// scalar rows. Compiled without FMA contraction (CMakeLists.txt), as stream_float.cpp.
#include <immintrin.h>

#include <algorithm>

#include "stream_float.h"

namespace dorefa {

void QuantizeRangeAvx512(const float* x, int64_t count, int bits, uint8_t* codes) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  const __m512 n = _mm512_set1_ps(static_cast<float>((1 << bits) - 1));
  const __m512 round = _mm512_set1_ps(8388608.0f);  // 2^23: rint on [0, 255] (stream_float.h)
  for (int64_t i = 0; i < count; i += 16) {
    const auto lanes = static_cast<__mmask16>(count - i >= 16 ? 0xFFFF : (1u << (count - i)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(lanes, x + i);
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);  // < 0: +0
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, one, _CMP_GT_OQ), one);    // > 1: 1
    v = _mm512_mul_ps(v, n);
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);  // NaN: 0
    v = _mm512_sub_ps(_mm512_add_ps(v, round), round);
    _mm_mask_storeu_epi8(codes + i, lanes, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
  }
}

}  // namespace dorefa
