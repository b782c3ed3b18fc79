// AVX-512 paths of the float first conv (conv_float.h). The double path (ConvPoolQuantizeAvx512):
// vectorised over output channels (8 doubles per zmm, up to 6 zmm = 48 channels per group), NP
// pixels of one pooling window at a time (independent FMA chains), the taps (c, kh, kw) in order
// for every output, so each output's double sum is the same sequence of operations as the
// spec's. The zmm paths (ConvPoolQuantizeZmm, ConvFloatOutAvx512): float32 sums of 4 pixels x up
// to 96 channels, codes proved by the error bound or recomputed (PendingCodes).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "byte_runs.h"
#include "conv_float.h"
#include "float_codes_simd.h"
#include "unroll.h"

namespace dorefa {
namespace {

constexpr int kVec = 6;  // channel vectors per group

template <int NP, int nv>
inline void Pixels(const float* const* src, int64_t c, int64_t hp, int64_t wp, int64_t kh,
                   int64_t kw, const float* wt, int64_t ostride, __m512d (&mx)[kVec], bool first) {
  __m512d a[NP][kVec];
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < kVec; ++v) a[p][v] = _mm512_setzero_pd();
  int64_t tap = 0;
  for (int64_t ci = 0; ci < c; ++ci)
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j, ++tap) {
        const int64_t off = (ci * hp + i) * wp + j;
        __m512d xb[NP];
        for (int p = 0; p < NP; ++p) xb[p] = _mm512_set1_pd(static_cast<double>(src[p][off]));
        const float* w = wt + tap * ostride;
        for (int v = 0; v < kVec; ++v) {
          if (v >= nv) break;
          const __m512d wv = _mm512_cvtps_pd(_mm256_loadu_ps(w + 8 * v));  // exact
          for (int p = 0; p < NP; ++p) a[p][v] = _mm512_fmadd_pd(wv, xb[p], a[p][v]);
        }
      }
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < kVec; ++v) {
      if (v >= nv) break;
      // max_pd returns its second operand when either is NaN: a NaN in mx is kept by hand, so
      // a NaN anywhere in the window stays, as numpy's max (only non-finite inputs make one)
      const __mmask8 nan = _mm512_cmp_pd_mask(mx[v], mx[v], _CMP_UNORD_Q);
      mx[v] = (first && p == 0) ? a[p][v]
                                : _mm512_mask_blend_pd(nan, _mm512_max_pd(mx[v], a[p][v]), mx[v]);
    }
}

// Channels [o0, o0 + 8 * nv) of pooled pixel (py, px).
template <int nv>
void Group(const FloatConvGeom& g, const float* img, int64_t hp, int64_t wp, const float* wt,
           int64_t ostride, const float* bias, int64_t py, int64_t px, uint8_t* dst, int64_t o0) {
  const int64_t k = g.pool;
  const float levels = static_cast<float>((1 << g.bits) - 1);
  const int64_t plane = g.ph * g.pw;
  {
    const float* srcs[4];
    int np = 0;
    bool first = true;
    __m512d mx[kVec];
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
      const int64_t ob = o0 + 8 * v;
      const int64_t lanes = std::min<int64_t>(8, g.o - ob);
      const __mmask8 m = static_cast<__mmask8>((1u << lanes) - 1);
      __m256 z = _mm256_add_ps(_mm512_cvtpd_ps(mx[v]), _mm256_maskz_loadu_ps(m, bias + ob));
      z = _mm256_min_ps(_mm256_max_ps(z, _mm256_setzero_ps()), _mm256_set1_ps(1.0f));
      z = _mm256_mul_ps(z, _mm256_set1_ps(levels));
      z = _mm256_round_ps(z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      alignas(32) int32_t q[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(q), _mm256_cvtps_epi32(z));
      for (int64_t l = 0; l < lanes; ++l)
        dst[(ob + l) * plane + py * g.pw + px] = static_cast<uint8_t>(q[l]);
    }
  }
}

// Float output (ConvFloatOut): the AVX2 path's float32 sums on zmm, 16 channels per vector, up
// to 6 vectors (96 channels) x 4 pixels = 24 accumulators; each output is the same sequence of
// FMAs over the taps in order as on AVX2, so the same bits. On Zen 4 a zmm FMA does the work of two
// ymm ones in one instruction, which the AVX2 loop (12 ymm FMAs, 7 loads a tap) could not issue
// fast enough; Sapphire Rapids has twice the zmm FMA throughput as well.
constexpr int kZVec = 6;  // 24 accumulators + 6 weights + 1 broadcast of the 32 zmm

template <size_t... V>
inline void FmaZ(__m512 (&acc)[kZVec], const __m512 (&w)[kZVec], const float* x,
                 std::index_sequence<V...>) {
  const __m512 xb = _mm512_set1_ps(*x);
  ((acc[V] = _mm512_fmadd_ps(w[V], xb, acc[V])), ...);
}

// The float32 sums of NP (1 or 4) pixels (src[p] + the tap offsets) for channels o0 .. o0 +
// 16 nv, taps in order, into out[p][v]. Pointers and accumulators in registers (as AVX2 Sums).
template <int NP, int nv>
inline void SumsZ(const float* const* src, const FloatConvPlan& pl, int64_t o0,
                  __m512 (&out)[4][kZVec]) {
  static_assert(NP == 1 || NP == 4, "1 or 4 pixels");
  constexpr auto kV = std::make_index_sequence<nv>();
  const float* s0 = src[0];
  const float* s1 = src[NP == 4 ? 1 : 0];
  const float* s2 = src[NP == 4 ? 2 : 0];
  const float* s3 = src[NP == 4 ? 3 : 0];
  const __m512 z = _mm512_setzero_ps();
  __m512 a0[kZVec] = {z, z, z, z, z, z}, a1[kZVec] = {z, z, z, z, z, z};
  __m512 a2[kZVec] = {z, z, z, z, z, z}, a3[kZVec] = {z, z, z, z, z, z};
  for (int64_t t = 0; t < pl.taps; ++t) {
    const int64_t off = pl.offs[t];
    const float* w = pl.wtf + t * pl.ostride + o0;  // ostride: a multiple of 16
    const __m512 wv[kZVec] = {_mm512_loadu_ps(w),
                              nv > 1 ? _mm512_loadu_ps(w + 16) : z,
                              nv > 2 ? _mm512_loadu_ps(w + 32) : z,
                              nv > 3 ? _mm512_loadu_ps(w + 48) : z,
                              nv > 4 ? _mm512_loadu_ps(w + 64) : z,
                              nv > 5 ? _mm512_loadu_ps(w + 80) : z};
    FmaZ(a0, wv, s0 + off, kV);
    if constexpr (NP == 4) {
      FmaZ(a1, wv, s1 + off, kV);
      FmaZ(a2, wv, s2 + off, kV);
      FmaZ(a3, wv, s3 + off, kV);
    }
  }
  for (int v = 0; v < nv; ++v) {
    out[0][v] = a0[v];
    out[1][v] = a1[v];
    out[2][v] = a2[v];
    out[3][v] = a3[v];
  }
}

// The sums of pixels (y, x .. x + count - 1) of image n (count <= 4) side by side; a short run
// repeats its last pixel (not to be stored).
template <int nv>
inline void RowRunZ(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t y,
                    int64_t x, int64_t count, int64_t o0, __m512 (&a)[4][kZVec]) {
  const float* row = pl.xf + n * g.c * pl.hp * pl.wp + y * g.stride * pl.wp;
  const float* src[4];
  for (int64_t p = 0; p < 4; ++p) src[p] = row + (x + std::min(p, count - 1)) * g.stride;
  SumsZ<4, nv>(src, pl, o0, a);
}

// Channels [ob, ob + lanes) of 4 neighbouring pixels: a 4 x 16 transpose (unpack 32, unpack
// 64), then per channel its 4 pixels as one 16-byte store.
inline void StoreFour(const __m512 (&a)[4], float* d, int64_t plane, int64_t lanes) {
  const __m512d t0 = _mm512_castps_pd(_mm512_unpacklo_ps(a[0], a[1]));
  const __m512d t1 = _mm512_castps_pd(_mm512_unpackhi_ps(a[0], a[1]));
  const __m512d t2 = _mm512_castps_pd(_mm512_unpacklo_ps(a[2], a[3]));
  const __m512d t3 = _mm512_castps_pd(_mm512_unpackhi_ps(a[2], a[3]));
  // r[j]: in 128-bit lane k, channel 4k + j's 4 pixels.
  alignas(64) float r[4][16];
  _mm512_store_ps(r[0], _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2)));
  _mm512_store_ps(r[1], _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2)));
  _mm512_store_ps(r[2], _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3)));
  _mm512_store_ps(r[3], _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3)));
  for (int64_t l = 0; l < lanes; ++l)
    _mm_storeu_ps(d + l * plane, _mm_load_ps(r[l % 4] + 4 * (l / 4)));
}

template <int nv>
void RunOutZ(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t oy, int64_t ox,
             int64_t count, float* dst, int64_t o0) {
  __m512 a[4][kZVec];
  RowRunZ<nv>(g, pl, n, oy, ox, count, o0, a);
  const int64_t plane = g.oh * g.ow;
  for (int v = 0; v < nv; ++v) {
    const int64_t ob = o0 + 16 * v;
    const __m512 b = _mm512_loadu_ps(pl.bias + ob);
    const __m512 sums[4] = {_mm512_add_ps(a[0][v], b), _mm512_add_ps(a[1][v], b),
                            _mm512_add_ps(a[2][v], b), _mm512_add_ps(a[3][v], b)};
    const int64_t lanes = std::min<int64_t>(16, g.o - ob);
    float* d = dst + ob * plane + oy * g.ow + ox;
    if (count == 4) {
      StoreFour(sums, d, plane, lanes);
      continue;
    }
    for (int64_t p = 0; p < count; ++p) {
      alignas(64) float lane[16];
      _mm512_store_ps(lane, sums[p]);
      for (int64_t l = 0; l < lanes; ++l) d[l * plane + p] = lane[l];
    }
  }
}

// The codes of channels [o0, o0 + 16 nv) of (pooled) pixels (py, px .. px + count - 1), count
// <= 4, from their float32 (pooled) sums a[p][v], each proved by the error bound or recomputed
// from the spec's sums (PendingCodes), as on AVX2 (the bound holds for any float32 summation
// order). Pixel p's code goes to byte p of its channel's int32 lane, in registers: a channel's 4
// codes are one write.
template <int nv>
void StoreCodesZ(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t py, int64_t px,
                 int64_t count, uint8_t* dst, int64_t o0, const __m512 (&a)[4][kZVec]) {
  const int64_t plane = g.ph * g.pw;
  const __m512 levels = _mm512_set1_ps(static_cast<float>((1 << g.bits) - 1));
  float norm[4] = {-1.0f, -1.0f, -1.0f, -1.0f};  // N_p (conv_float.h), made when first needed
  for (int v = 0; v < nv; ++v) {
    const int64_t ob = o0 + 16 * v;  // bias and eps are padded to ostride (a multiple of 16)
    const __m512 b = _mm512_loadu_ps(pl.bias + ob), e = _mm512_loadu_ps(pl.eps + ob);
    const int64_t lanes = std::min<int64_t>(16, g.o - ob);
    __mmask16 proved[4];
    __m512i code[4];
    DOREFA_UNROLL for (int p = 0; p < 4; ++p) code[p] = CodesZ(a[p][v], b, e, levels, &proved[p]);
    const __mmask16 in = static_cast<__mmask16>((1u << lanes) - 1);
    for (int p = 0; p < count; ++p) {
      if ((proved[p] & in) == in) continue;
      // again with the window bound: E = min(eps, eps2 N_p + 2 FLT_MIN)
      if (norm[p] < 0.0f) norm[p] = WindowNorm(g, pl, n, py, px + p);
      code[p] = CodesZ(a[p][v], b, WindowBoundZ(e, pl.eps2 + ob, norm[p]), levels, &proved[p]);
    }
    __m512i four = code[0];
    for (int p = 1; p < 4; ++p) four = _mm512_or_si512(four, _mm512_slli_epi32(code[p], 8 * p));
    alignas(64) uint32_t words[16];
    _mm512_store_si512(words, four);
    uint8_t* d = dst + ob * plane + py * g.pw + px;
    __mmask16 all = proved[0];
    for (int p = 1; p < count; ++p) all &= proved[p];
    if ((all & in) == in) {  // the common case
      for (int64_t l = 0; l < lanes; ++l)
        StoreRun8(d + l * plane, words[l], static_cast<int>(count));
      continue;
    }
    for (int64_t l = 0; l < lanes; ++l)
      for (int64_t p = 0; p < count; ++p) {
        if ((proved[p] >> l) & 1)
          d[l * plane + p] = static_cast<uint8_t>(words[l] >> (8 * p));
        else
          pl.pending->Add(n, ob + l, py, px + p, d + l * plane + p);
      }
  }
}

// Codes without a pool (ConvPoolQuantizeZmm): pixels (py, px .. px + count - 1), count <= 4.
template <int nv>
void RunCodesZ(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t py, int64_t px,
               int64_t count, uint8_t* dst, int64_t o0) {
  __m512 a[4][kZVec];
  RowRunZ<nv>(g, pl, n, py, px, count, o0, a);
  StoreCodesZ<nv>(g, pl, n, py, px, count, dst, o0, a);
}

// The max-pooled sums of pooled pixel (py, px): its k x k window's sums 4 pixels at a time.
template <int nv>
void PooledSumsZ(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t py, int64_t px,
                 int64_t o0, __m512 (&mx)[kZVec]) {
  const float* img = pl.xf + n * g.c * pl.hp * pl.wp;
  bool first = true;
  auto pool = [&](const float* const* srcs, int np) {
    __m512 a[4][kZVec];
    if (np == 4)
      SumsZ<4, nv>(srcs, pl, o0, a);
    else
      SumsZ<1, nv>(srcs, pl, o0, a);
    for (int p = 0; p < np; ++p)
      for (int v = 0; v < nv; ++v)
        mx[v] = (first && p == 0) ? a[p][v] : _mm512_max_ps(mx[v], a[p][v]);
    first = false;
  };
  const float* srcs[4];
  int np = 0;
  for (int64_t r = 0; r < g.pool; ++r)
    for (int64_t s = 0; s < g.pool; ++s) {
      srcs[np++] = img + (py * g.pool + r) * g.stride * pl.wp + (px * g.pool + s) * g.stride;
      if (np == 4) {
        pool(srcs, 4);
        np = 0;
      }
    }
  for (int p = 0; p < np; ++p) pool(srcs + p, 1);
}

// The max-pooled sums of two neighbouring pooled pixels (py, px), (py, px + 1) of a 2 x 2 pool,
// nv <= 3: their 8 pixels' sums side by side (24 accumulators), taps in order. (The max's order
// differs from PooledSumsZ's: only a NaN would tell, and a non-finite bound proves no code.)
template <int nv>
void PooledPairZ(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t py, int64_t px,
                 int64_t o0, __m512 (&mx0)[kZVec], __m512 (&mx1)[kZVec]) {
  static_assert(nv <= 3, "24 accumulators");
  const float* img = pl.xf + n * g.c * pl.hp * pl.wp;
  const float* src[8];
  for (int q = 0; q < 2; ++q)
    for (int r = 0; r < 2; ++r)
      for (int s = 0; s < 2; ++s)
        src[4 * q + 2 * r + s] =
            img + (py * 2 + r) * g.stride * pl.wp + ((px + q) * 2 + s) * g.stride;
  __m512 a[8][3];
  for (int p = 0; p < 8; ++p)
    for (int v = 0; v < 3; ++v) a[p][v] = _mm512_setzero_ps();
  for (int64_t t = 0; t < pl.taps; ++t) {
    const int64_t off = pl.offs[t];
    const float* w = pl.wtf + t * pl.ostride + o0;
    __m512 wv[3];
    DOREFA_UNROLL for (int v = 0; v < nv; ++v) wv[v] = _mm512_loadu_ps(w + 16 * v);
    DOREFA_UNROLL for (int p = 0; p < 8; ++p) {
      const __m512 xb = _mm512_set1_ps(src[p][off]);
      DOREFA_UNROLL for (int v = 0; v < nv; ++v) a[p][v] = _mm512_fmadd_ps(wv[v], xb, a[p][v]);
    }
  }
  for (int v = 0; v < nv; ++v) {
    mx0[v] = _mm512_max_ps(_mm512_max_ps(a[0][v], a[1][v]), _mm512_max_ps(a[2][v], a[3][v]));
    mx1[v] = _mm512_max_ps(_mm512_max_ps(a[4][v], a[5][v]), _mm512_max_ps(a[6][v], a[7][v]));
  }
}

// Codes with a pool k x k (ConvPoolQuantizeZmm): pooled pixels (py, px .. px + count - 1),
// count <= 4 (a short run repeats its last pixel's sums: not stored).
template <int nv>
void GroupCodesZ(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t py, int64_t px,
                 int64_t count, uint8_t* dst, int64_t o0) {
  __m512 a[4][kZVec];
  for (int64_t p = 0; p < 4; ++p) {
    if constexpr (nv <= 3) {
      if (g.pool == 2 && p + 1 < count) {
        PooledPairZ<nv>(g, pl, n, py, px + p, o0, a[p], a[p + 1]);
        ++p;
        continue;
      }
    }
    if (p < count) {
      PooledSumsZ<nv>(g, pl, n, py, px + p, o0, a[p]);
    } else {
      for (int v = 0; v < nv; ++v) a[p][v] = a[count - 1][v];
    }
  }
  StoreCodesZ<nv>(g, pl, n, py, px, count, dst, o0, a);
}

// Channel vectors per group: o channels in as few groups of <= kZVec vectors as possible, split
// evenly (128 channels: 4 + 4, not 6 + 2: a group of few vectors has few FMA chains a tap).
inline int64_t ZmmPerGroup(int64_t o) {
  const int64_t vecs = (o + 15) / 16, groups = (vecs + kZVec - 1) / kZVec;
  return (vecs + groups - 1) / groups;
}

}  // namespace

void ConvFloatOutAvx512(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t oy,
                        int64_t ox, int64_t count, float* dst) {
  using RunFn = void (*)(const FloatConvGeom&, const FloatConvPlan&, int64_t, int64_t, int64_t,
                         int64_t, float*, int64_t);
  constexpr RunFn kRuns[kZVec] = {&RunOutZ<1>, &RunOutZ<2>, &RunOutZ<3>,
                                  &RunOutZ<4>, &RunOutZ<5>, &RunOutZ<6>};
  const int64_t nv = ZmmPerGroup(g.o);
  for (int64_t o0 = 0; o0 < g.o; o0 += 16 * nv)
    kRuns[std::min<int64_t>(nv, (g.o - o0 + 15) / 16) - 1](g, p, n, oy, ox, count, dst, o0);
}

void ConvPoolQuantizeZmm(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t py,
                         int64_t px, int64_t count, uint8_t* dst) {
  if (p.eps == nullptr) {
    // No error bound: every code from the spec's sums (the queued codes read `w`, not the ymm
    // path's blocked weights, which this plan lacks).
    ConvPoolQuantizeAvx2(g, p, n, py, px, count, dst);
    return;
  }
  using RunFn = void (*)(const FloatConvGeom&, const FloatConvPlan&, int64_t, int64_t, int64_t,
                         int64_t, uint8_t*, int64_t);
  constexpr RunFn kRuns[kZVec] = {&RunCodesZ<1>, &RunCodesZ<2>, &RunCodesZ<3>,
                                  &RunCodesZ<4>, &RunCodesZ<5>, &RunCodesZ<6>};
  constexpr RunFn kGroups[kZVec] = {&GroupCodesZ<1>, &GroupCodesZ<2>, &GroupCodesZ<3>,
                                    &GroupCodesZ<4>, &GroupCodesZ<5>, &GroupCodesZ<6>};
  const int64_t nv = ZmmPerGroup(g.o);
  for (int64_t o0 = 0; o0 < g.o; o0 += 16 * nv) {
    const int64_t v = std::min<int64_t>(nv, (g.o - o0 + 15) / 16) - 1;
    (g.pool == 1 ? kRuns : kGroups)[v](g, p, n, py, px, count, dst, o0);
  }
}

void ConvPoolQuantizeAvx512(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t py,
                            int64_t px0, int64_t count, uint8_t* dst) {
  const int64_t hp = pl.hp, wp = pl.wp, ostride = pl.ostride;
  const float* img = pl.xf + n * g.c * hp * wp;
  const float* wt = pl.wtf;
  const float* bias = pl.bias;
  using GroupFn = void (*)(const FloatConvGeom&, const float*, int64_t, int64_t, const float*,
                           int64_t, const float*, int64_t, int64_t, uint8_t*, int64_t);
  constexpr GroupFn kGroups[kVec] = {&Group<1>, &Group<2>, &Group<3>,
                                     &Group<4>, &Group<5>, &Group<6>};
  for (int64_t px = px0; px < px0 + count; ++px)
    for (int64_t o0 = 0; o0 < g.o; o0 += 8 * kVec) {
      const int64_t nv = std::min<int64_t>(kVec, (g.o - o0 + 7) / 8);
      kGroups[nv - 1](g, img, hp, wp, wt, ostride, bias, py, px, dst, o0);
    }
}

}  // namespace dorefa
