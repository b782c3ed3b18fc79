// Max-pool of integer training (pool_train.h has the rules).
#include "pool_train.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu_features.h"
#include "thread_pool.h"

#ifdef DOREFA_HAVE_X86_KERNELS
#include <immintrin.h>
#endif

namespace dorefa {
namespace {

// (m, i) after offering (v, j): torch's rule, v > m or v is NaN.
inline void Offer(float v, uint8_t j, float& m, uint8_t& i) {
  const bool take = v > m || v != v;
  m = take ? v : m;
  i = take ? j : i;
}

#ifdef DOREFA_HAVE_X86_KERNELS
// 2x2 windows ox0, ox0 + 8, ... of one output row on ymm, 8 at a time; returns where it
// stopped (the scalar loop does the rest). The same offers in the same order as Offer: the
// first one always leaves (v, 0) (v > -inf, or NaN, or v = -inf = m).
__attribute__((target("avx2"))) int64_t ForwardRow2Avx2(const float* r0, const float* r1,
                                                        int64_t ow, float* yr, uint8_t* pr) {
  int64_t ox = 0;
  for (; ox + 8 <= ow; ox += 8) {
    __m256 v[4];  // (0,0) (0,1) (1,0) (1,1) of the 8 windows
    const float* rows[2] = {r0, r1};
    for (int r = 0; r < 2; ++r) {
      const __m256 a = _mm256_loadu_ps(rows[r] + 2 * ox);
      const __m256 b = _mm256_loadu_ps(rows[r] + 2 * ox + 8);
      // a0 a2 b0 b2 | a4 a6 b4 b6 -> a0 a2 a4 a6 b0 b2 b4 b6 (and the odd ones)
      v[2 * r] = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
      v[2 * r + 1] = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
    }
    __m256 m = v[0];
    __m256i i = _mm256_setzero_si256();
    for (int j = 1; j < 4; ++j) {
      const __m256 take =
          _mm256_or_ps(_mm256_cmp_ps(v[j], m, _CMP_GT_OQ), _mm256_cmp_ps(v[j], v[j], _CMP_UNORD_Q));
      m = _mm256_blendv_ps(m, v[j], take);
      i = _mm256_blendv_epi8(i, _mm256_set1_epi32(j), _mm256_castps_si256(take));
    }
    _mm256_storeu_ps(yr + ox, m);
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(pr + ox), _mm_packus_epi16(i16, i16));
  }
  return ox;
}
#endif

void ForwardPlane(const float* x, int64_t h, int64_t w, int64_t k, float* y, uint8_t* pos) {
  const int64_t oh = h / k, ow = w / k;
#ifdef DOREFA_HAVE_X86_KERNELS
  const bool avx2 = (CpuFeatures() & kAvx2) != 0;
#endif
  for (int64_t oy = 0; oy < oh; ++oy) {
    const float* r0 = x + oy * k * w;
    float* yr = y + oy * ow;
    uint8_t* pr = pos + oy * ow;
    if (k == 2) {  // the common case, in scan order: (0,0) (0,1) (1,0) (1,1)
      const float* r1 = r0 + w;
      int64_t ox = 0;
#ifdef DOREFA_HAVE_X86_KERNELS
      if (avx2) ox = ForwardRow2Avx2(r0, r1, ow, yr, pr);
#endif
      for (; ox < ow; ++ox) {
        float m = -std::numeric_limits<float>::infinity();
        uint8_t i = 0;
        Offer(r0[2 * ox], 0, m, i);
        Offer(r0[2 * ox + 1], 1, m, i);
        Offer(r1[2 * ox], 2, m, i);
        Offer(r1[2 * ox + 1], 3, m, i);
        yr[ox] = m;
        pr[ox] = i;
      }
      continue;
    }
    for (int64_t ox = 0; ox < ow; ++ox) {
      float m = -std::numeric_limits<float>::infinity();
      uint8_t i = 0;
      for (int64_t r = 0; r < k; ++r)
        for (int64_t t = 0; t < k; ++t)
          Offer(r0[r * w + ox * k + t], static_cast<uint8_t>(r * k + t), m, i);
      yr[ox] = m;
      pr[ox] = i;
    }
  }
}

// The float of bits b where `keep`, else +0.0.
inline float Keep(uint32_t b, bool keep) {
  const uint32_t bits = b & (0u - static_cast<uint32_t>(keep));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

#ifdef DOREFA_HAVE_X86_KERNELS
// One pooled row of the k = 2 backward on ymm, 8 windows at a time (as the scalar loop:
// 0 + dy where the position is, +0.0 elsewhere); returns where it stopped.
__attribute__((target("avx2"))) int64_t BackwardRow2Avx2(const float* g, const uint8_t* i,
                                                         int64_t ow, float* r0, float* r1) {
  int64_t ox = 0;
  for (; ox + 8 <= ow; ox += 8) {
    const __m256 v = _mm256_add_ps(_mm256_setzero_ps(), _mm256_loadu_ps(g + ox));
    const __m256i at =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(i + ox)));
    __m256 k[4];
    for (int j = 0; j < 4; ++j)
      k[j] = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(at, _mm256_set1_epi32(j))));
    float* rows[2] = {r0, r1};
    for (int r = 0; r < 2; ++r) {  // interleave (t = 0, t = 1): lanes 0-3 | 4-7 per 128 bits
      const __m256 lo = _mm256_unpacklo_ps(k[2 * r], k[2 * r + 1]);  // w0 w0' w1 w1' | w4 ...
      const __m256 hi = _mm256_unpackhi_ps(k[2 * r], k[2 * r + 1]);  // w2 w2' w3 w3' | w6 ...
      _mm256_storeu_ps(rows[r] + 2 * ox, _mm256_permute2f128_ps(lo, hi, 0x20));
      _mm256_storeu_ps(rows[r] + 2 * ox + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
  }
  return ox;
}
#endif

void BackwardPlane(const float* dy, const uint8_t* pos, int64_t h, int64_t w, int64_t k,
                   float* dx) {
  const int64_t oh = h / k, ow = w / k;
#ifdef DOREFA_HAVE_X86_KERNELS
  const bool avx2 = (CpuFeatures() & kAvx2) != 0;
#endif
  if (k == 2) {  // every input of the pooled rows written once, branch-free
    for (int64_t oy = 0; oy < oh; ++oy) {
      float* r0 = dx + 2 * oy * w;
      float* r1 = r0 + w;
      const float* g = dy + oy * ow;
      const uint8_t* i = pos + oy * ow;
      int64_t ox = 0;
#ifdef DOREFA_HAVE_X86_KERNELS
      if (avx2) ox = BackwardRow2Avx2(g, i, ow, r0, r1);
#endif
      for (; ox < ow; ++ox) {
        const float v = 0.0f + g[ox];  // as torch's 0 + dy
        uint32_t b;
        std::memcpy(&b, &v, 4);
        r0[2 * ox] = Keep(b, i[ox] == 0);  // bit masks, not branches: the positions are random
        r0[2 * ox + 1] = Keep(b, i[ox] == 1);
        r1[2 * ox] = Keep(b, i[ox] == 2);
        r1[2 * ox + 1] = Keep(b, i[ox] == 3);
      }
      if (w % 2 != 0) r0[w - 1] = r1[w - 1] = 0.0f;
    }
    std::fill(dx + 2 * oh * w, dx + h * w, 0.0f);  // a last odd row
    return;
  }
  std::fill(dx, dx + h * w, 0.0f);
  for (int64_t oy = 0; oy < oh; ++oy) {
    float* base = dx + oy * k * w;
    for (int64_t ox = 0; ox < ow; ++ox) {
      const uint8_t i = pos[oy * ow + ox];
      base[(i / k) * w + ox * k + i % k] += dy[oy * ow + ox];  // 0 + dy, as torch
    }
  }
}

}  // namespace

void MaxPoolTrainForward(const float* x, int64_t planes, int64_t h, int64_t w, int64_t k, float* y,
                         uint8_t* pos, int threads) {
  const int64_t out = (h / k) * (w / k);
  ParallelFor(threads, planes, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p)
      ForwardPlane(x + p * h * w, h, w, k, y + p * out, pos + p * out);
  });
}

void MaxPoolTrainBackward(const float* dy, const uint8_t* pos, int64_t planes, int64_t h, int64_t w,
                          int64_t k, float* dx, int threads) {
  const int64_t out = (h / k) * (w / k);
  ParallelFor(threads, planes, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p)
      BackwardPlane(dy + p * out, pos + p * out, h, w, k, dx + p * h * w);
  });
}

}  // namespace dorefa
