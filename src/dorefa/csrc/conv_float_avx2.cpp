// AVX2 + FMA path of the float first conv (conv_float.h), the AVX-512 path's structure on 16
// ymm registers: vectorised over output channels (4 doubles per ymm, up to 3 ymm = 12 channels
// per group), NP pixels of one pooling window at a time (NP x 3 = 12 independent FMA chains:
// enough to cover the FMA latency of Zen 2/Zen 4 on 2 pipes), the taps (c, kh, kw) in order for
// every output, so each output's double sum is the same sequence of operations as the scalar
// path's. Registers: 12 accumulators + 3 weight vectors + 1 broadcast pixel = 16.
#include <immintrin.h>

#include <algorithm>

#include "conv_float.h"

namespace dorefa {
namespace {

constexpr int kVec = 3;  // channel vectors per group

template <int NP, int nv>
inline void Pixels(const double* const* src, int64_t c, int64_t hp, int64_t wp, int64_t kh,
                   int64_t kw, const double* wt, int64_t ostride, __m256d (&mx)[kVec], bool first) {
  __m256d a[NP][kVec];
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < kVec; ++v) a[p][v] = _mm256_setzero_pd();
  int64_t tap = 0;
  for (int64_t ci = 0; ci < c; ++ci)
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j, ++tap) {
        const int64_t off = (ci * hp + i) * wp + j;
        const double* w = wt + tap * ostride;
        __m256d wv[kVec];
        for (int v = 0; v < nv; ++v) wv[v] = _mm256_loadu_pd(w + 4 * v);
        for (int p = 0; p < NP; ++p) {
          const __m256d xb = _mm256_broadcast_sd(src[p] + off);
          for (int v = 0; v < nv; ++v) a[p][v] = _mm256_fmadd_pd(wv[v], xb, a[p][v]);
        }
      }
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < nv; ++v)
      mx[v] = (first && p == 0) ? a[p][v] : _mm256_max_pd(mx[v], a[p][v]);
}

// Channels [o0, o0 + 4 * nv) of pooled pixel (py, px).
template <int nv>
void Group(const FloatConvGeom& g, const double* img, int64_t hp, int64_t wp, const double* wt,
           int64_t ostride, const float* bias, int64_t py, int64_t px, uint8_t* dst, int64_t o0) {
  const int64_t k = g.pool;
  const float levels = static_cast<float>((1 << g.bits) - 1);
  const int64_t plane = g.ph * g.pw;
  const double* srcs[4];
  int np = 0;
  bool first = true;
  __m256d mx[kVec];
  for (int64_t r = 0; r < k; ++r)
    for (int64_t s = 0; s < k; ++s) {
      const int64_t oy = py * k + r, ox = px * k + s;
      srcs[np++] = img + oy * g.stride * wp + ox * g.stride;
      if (np == 4) {
        Pixels<4, nv>(srcs, g.c, hp, wp, g.kh, g.kw, wt + o0, ostride, mx, first);
        first = false;
        np = 0;
      }
    }
  for (int p = 0; p < np; ++p) {
    Pixels<1, nv>(srcs + p, g.c, hp, wp, g.kh, g.kw, wt + o0, ostride, mx, first);
    first = false;
  }
  for (int v = 0; v < nv; ++v) {
    const int64_t ob = o0 + 4 * v;
    const int64_t lanes = std::min<int64_t>(4, g.o - ob);
    alignas(16) float b[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    std::copy(bias + ob, bias + ob + lanes, b);  // never reads past the O biases
    __m128 z = _mm_add_ps(_mm256_cvtpd_ps(mx[v]), _mm_load_ps(b));
    z = _mm_min_ps(_mm_max_ps(z, _mm_setzero_ps()), _mm_set1_ps(1.0f));
    z = _mm_mul_ps(z, _mm_set1_ps(levels));
    z = _mm_round_ps(z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    alignas(16) int32_t q[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(q), _mm_cvtps_epi32(z));
    for (int64_t l = 0; l < lanes; ++l)
      dst[(ob + l) * plane + py * g.pw + px] = static_cast<uint8_t>(q[l]);
  }
}

}  // namespace

void ConvPoolQuantizeAvx2(const FloatConvGeom& g, const double* img, int64_t hp, int64_t wp,
                          const double* wt, int64_t ostride, const float* bias, int64_t py,
                          int64_t px, uint8_t* dst) {
  using GroupFn = void (*)(const FloatConvGeom&, const double*, int64_t, int64_t, const double*,
                           int64_t, const float*, int64_t, int64_t, uint8_t*, int64_t);
  constexpr GroupFn kGroups[kVec] = {&Group<1>, &Group<2>, &Group<3>};
  for (int64_t o0 = 0; o0 < g.o; o0 += 4 * kVec) {
    const int64_t nv = std::min<int64_t>(kVec, (g.o - o0 + 3) / 4);
    kGroups[nv - 1](g, img, hp, wp, wt, ostride, bias, py, px, dst, o0);
  }
}

}  // namespace dorefa
