// Float linear layer, AVX2 + FMA (linear_float.h): 2 samples x up to 4 outputs at once, one
// 8-lane accumulator each (lane j holds the partial sum p_j), the tail of C by masked loads,
// the lanes past C left as they are (blend: fma(0, 0, -0.0) would give +0.0).
#include <immintrin.h>

#include "linear_float.h"

namespace dorefa {
namespace {

__m256i TailMask(int64_t left) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), lane);
}

float Reduce(__m256 v) {  // ((p0 + p4) + (p2 + p6)) + ((p1 + p5) + (p3 + p7))
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
}

// Samples i .. i + S - 1 x outputs o0 .. o0 + K - 1: S * K independent FMA chains.
template <int S, int K>
void Tile(const float* x, const float* w, const float* b, int64_t c, int64_t o, int64_t i,
          int64_t o0, float* y) {
  const int64_t full = c / 8 * 8;
  __m256 acc[S][K];
  for (int s = 0; s < S; ++s)
    for (int k = 0; k < K; ++k) acc[s][k] = _mm256_setzero_ps();
  for (int64_t j = 0; j < full; j += 8) {
    __m256 wv[K];
    for (int k = 0; k < K; ++k) wv[k] = _mm256_loadu_ps(w + (o0 + k) * c + j);
    for (int s = 0; s < S; ++s) {
      const __m256 xv = _mm256_loadu_ps(x + (i + s) * c + j);
      for (int k = 0; k < K; ++k) acc[s][k] = _mm256_fmadd_ps(xv, wv[k], acc[s][k]);
    }
  }
  if (full < c) {
    const __m256i tail = TailMask(c - full);
    __m256 wv[K];
    for (int k = 0; k < K; ++k) wv[k] = _mm256_maskload_ps(w + (o0 + k) * c + full, tail);
    const __m256 keep = _mm256_castsi256_ps(tail);
    for (int s = 0; s < S; ++s) {
      const __m256 xv = _mm256_maskload_ps(x + (i + s) * c + full, tail);
      for (int k = 0; k < K; ++k)  // lanes past C keep their sum (even a -0.0)
        acc[s][k] = _mm256_blendv_ps(acc[s][k], _mm256_fmadd_ps(xv, wv[k], acc[s][k]), keep);
    }
  }
  for (int s = 0; s < S; ++s)
    for (int k = 0; k < K; ++k) y[(i + s) * o + o0 + k] = Reduce(acc[s][k]) + b[o0 + k];
}

template <int K>
void Rows(const float* x, const float* w, const float* b, int64_t n, int64_t c, int64_t o,
          int64_t o0, float* y) {
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) Tile<2, K>(x, w, b, c, o, i, o0, y);
  if (i < n) Tile<1, K>(x, w, b, c, o, i, o0, y);
}

}  // namespace

void LinearRowsAvx2(const float* x, const float* w, const float* b, int64_t n, int64_t c, int64_t o,
                    int64_t o0, int64_t count, float* y) {
  switch (count) {
    case 1:
      return Rows<1>(x, w, b, n, c, o, o0, y);
    case 2:
      return Rows<2>(x, w, b, n, c, o, o0, y);
    case 3:
      return Rows<3>(x, w, b, n, c, o, o0, y);
    default:
      return Rows<4>(x, w, b, n, c, o, o0, y);
  }
}

}  // namespace dorefa
