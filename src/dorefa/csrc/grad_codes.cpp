// f_g's codes in one native pass (grad_codes.h has the steps). Compiled with
// -ffp-contract=off: every step rounds where torch's does, and u + g * inv is one explicit fused
// multiply-add, as torch's addcmul_ computes it (an FMA instruction where the CPU has one,
// else libm's fmaf: the same single rounding).
#include "grad_codes.h"

#include <algorithm>
#include <cmath>

#ifdef DOREFA_HAVE_X86_KERNELS
#include <immintrin.h>
#endif

#include "cpu_features.h"
#include "thread_pool.h"

namespace dorefa {
namespace {

// max(max g, -min g) over one sample, NaN when it holds one (as torch's amax / amin; a zero m
// may carry the other sign than torch's maximum gives it: harmless, a zero scale either way).
float SampleMax(const float* g, int64_t len) {
  float hi = -INFINITY, lo = INFINITY;
  bool nan = false;
  for (int64_t i = 0; i < len; ++i) {
    hi = std::max(hi, g[i]);
    lo = std::min(lo, g[i]);
    nan |= g[i] != g[i];
  }
  return nan ? NAN : std::max(hi, -lo);
}

template <class Fma>
void SampleCodes(const float* gb, const int16_t* hb, int64_t len, int levels, float m, uint8_t* cb,
                 float* mb, Fma fma) {
  const float n = static_cast<float>(levels);
  const float offset = static_cast<float>((levels - 1) / 2.0 + 0.5 + 0.5 / 65536);  // exact
  *mb = m;
  const float inv = n * (1.0f / (2.0f * (m > 0 ? m : 1.0f)));  // torch's n / t: n * (1 / t)
  for (int64_t i = 0; i < len; ++i) {
    const float u = static_cast<float>(hb[i]) * (1.0f / 65536) + offset;
    const float x = fma(gb[i], inv, u);  // torch's addcmul_ rounds once
    const float c = std::nearbyint(std::min(std::max(x, 0.0f), n));
    cb[i] = x == x ? static_cast<uint8_t>(c) : 0;  // a NaN gradient: code 0
  }
}

#ifdef DOREFA_HAVE_X86_KERNELS
// SampleMax on ymm: the same value (NaN tracked apart from the max and min, whose NaN and
// zero-sign rules then do not matter; a zero m's sign may differ, as above). The scalar loop
// ran at ~4 cycles an element (its max and min are serial chains): most of f_g's time.
__attribute__((target("avx2"))) float SampleMaxAvx2(const float* g, int64_t len) {
  __m256 hi[2] = {_mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY)};
  __m256 lo[2] = {_mm256_set1_ps(INFINITY), _mm256_set1_ps(INFINITY)};
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    for (int k = 0; k < 2; ++k) {
      const __m256 v = _mm256_loadu_ps(g + i + 8 * k);
      hi[k] = _mm256_max_ps(hi[k], v);
      lo[k] = _mm256_min_ps(lo[k], v);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
  }
  alignas(32) float h[8], l[8];
  _mm256_store_ps(h, _mm256_max_ps(hi[0], hi[1]));
  _mm256_store_ps(l, _mm256_min_ps(lo[0], lo[1]));
  float top = -INFINITY, bottom = INFINITY;
  for (int k = 0; k < 8; ++k) {
    top = std::max(top, h[k]);
    bottom = std::min(bottom, l[k]);
  }
  const float rest = SampleMax(g + i, len - i);  // the last len % 16 (-inf when none)
  if (_mm256_movemask_ps(nan) != 0 || rest != rest) return NAN;
  return std::max(std::max(top, -bottom), rest);
}

__attribute__((target("avx2,fma"))) void SampleCodesFma(const float* gb, const int16_t* hb,
                                                        int64_t len, int levels, uint8_t* cb,
                                                        float* mb) {
  SampleCodes(gb, hb, len, levels, SampleMaxAvx2(gb, len), cb, mb,
              [](float a, float b, float c) { return __builtin_fmaf(a, b, c); });
}
#endif

}  // namespace

void GradientCodes(const float* g, const int16_t* noise, int64_t n_samples, int64_t len, int levels,
                   uint8_t* codes, float* m, int threads) {
#ifdef DOREFA_HAVE_X86_KERNELS
  const bool fma = (CpuFeatures() & (kAvx2 | kFma)) == (kAvx2 | kFma);
#else
  const bool fma = false;
#endif
  ParallelFor(threads, n_samples, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
#ifdef DOREFA_HAVE_X86_KERNELS
      if (fma) {
        SampleCodesFma(g + b * len, noise + b * len, len, levels, codes + b * len, m + b);
        continue;
      }
#endif
      SampleCodes(g + b * len, noise + b * len, len, levels, SampleMax(g + b * len, len),
                  codes + b * len, m + b,
                  [](float a, float x, float c) { return std::fma(a, x, c); });  // libm: exact
    }
  });
}

}  // namespace dorefa
