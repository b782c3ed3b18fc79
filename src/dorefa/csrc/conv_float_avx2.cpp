// AVX2 + FMA path of the float first conv (conv_float.h), the AVX-512 path's structure on 16
// ymm registers, in float32: vectorised over output channels (8 floats per ymm, up to 3 ymm =
// 24 channels per group), NP pixels of one pooling window at a time (NP x 3 = 12 independent
// FMA chains, enough for the FMA latency of Zen 2/Zen 4 on 2 pipes; without a pool, 4
// neighbouring pixels of one row instead: Run), the taps (c, kh, kw) in order. Registers: 12
// accumulators + 3 weight vectors + 1 broadcast pixel = 16. Each code is proved equal to the spec's
// (conv_float.h): Q(M - E) == Q(M + E), M the float32 pooled sum, E the channel's error bound; a
// code at a step is recomputed from the spec's sums (PendingCodes).
#include <immintrin.h>

#include <algorithm>
#include <utility>

#include "conv_float.h"
#include "float_codes_simd.h"

namespace dorefa {
namespace {

constexpr int kVec = 3;  // channel vectors per group (Sums spells out 3)
static_assert(8 * kVec == kBlock, "a group is one block of the blocked weights");

// acc[v] += w[v] * x for the channel vectors v in V (0 .. nv - 1). The indices are constants
// in the source (a pack, not a loop): GCC scalarises arrays before it unrolls loops, and with
// loop indices it kept the accumulators on the stack, storing them at every tap (twice as
// slow on Zen 4).
template <size_t... V>
inline void Fma(__m256 (&acc)[kVec], const __m256 (&w)[kVec], const float* x,
                std::index_sequence<V...>) {
  const __m256 xb = _mm256_broadcast_ss(x);
  ((acc[V] = _mm256_fmadd_ps(w[V], xb, acc[V])), ...);
}

// to[v] = from[v] for v in V, constant indices (as Fma).
template <size_t... V>
inline void Copy(__m256 (&to)[kVec], const __m256 (&from)[kVec], std::index_sequence<V...>) {
  ((to[V] = from[V]), ...);
}

// The float32 sums of NP (1 or 4) pixels (src[p] + the tap offsets) for channels 8 * nv, taps
// in order, into out[p][v] (v < nv).
template <int NP, int nv>
inline void Sums(const float* const* src, const int64_t* offs, int64_t taps, const float* wt,
                 int64_t ostride, __m256 (&out)[NP][kVec]) {
  static_assert(NP == 1 || NP == 4, "1 or 4 pixels");
  constexpr auto kV = std::make_index_sequence<nv>();
  const __m256 z = _mm256_setzero_ps();
  __m256 a0[kVec] = {z, z, z}, a1[kVec] = {z, z, z}, a2[kVec] = {z, z, z}, a3[kVec] = {z, z, z};
  // The pixel pointers in registers: read from src (memory) in the loop, they might alias the
  // accumulators for all GCC knows, which then go to the stack at every tap.
  const float* s0 = src[0];
  const float* s1 = src[NP == 4 ? 1 : 0];
  const float* s2 = src[NP == 4 ? 2 : 0];
  const float* s3 = src[NP == 4 ? 3 : 0];
  for (int64_t t = 0; t < taps; ++t) {  // one loop over (c, kh, kw): one exit to predict
    const int64_t off = offs[t];
    const float* w = wt + t * ostride;
    const __m256 wv[kVec] = {_mm256_loadu_ps(w), nv > 1 ? _mm256_loadu_ps(w + 8) : z,
                             nv > 2 ? _mm256_loadu_ps(w + 16) : z};
    Fma(a0, wv, s0 + off, kV);
    if constexpr (NP == 4) {
      Fma(a1, wv, s1 + off, kV);
      Fma(a2, wv, s2 + off, kV);
      Fma(a3, wv, s3 + off, kV);
    }
  }
  Copy(out[0], a0, kV);
  if constexpr (NP == 4) {
    Copy(out[1], a1, kV);
    Copy(out[2], a2, kV);
    Copy(out[3], a3, kV);
  }
}

// Sums of NP pixels of one pooling window, max-pooled into mx (first: mx not yet set).
template <int NP, int nv>
inline void Pixels(const float* const* src, const int64_t* offs, int64_t taps, const float* wt,
                   int64_t ostride, __m256 (&mx)[kVec], bool first) {
  __m256 a[NP][kVec];
  Sums<NP, nv>(src, offs, taps, wt, ostride, a);
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < nv; ++v)
      mx[v] = (first && p == 0) ? a[p][v] : _mm256_max_ps(mx[v], a[p][v]);
}

// Codes of channels [o0, o0 + 8 * nv) of pooled pixel (py, px) from their float32 pooled sums
// mx: each proved by the error bound or queued for the spec's sums (PendingCodes).
template <int nv>
inline void Store(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t py,
                  int64_t px, uint8_t* dst, int64_t o0, const __m256 (&mx)[kVec]) {
  const int64_t plane = g.ph * g.pw;
  const __m256 levels = _mm256_set1_ps(static_cast<float>((1 << g.bits) - 1));
  float norm = -1.0f;  // N_p (conv_float.h), made when first needed
  for (int v = 0; v < nv; ++v) {
    const int64_t ob = o0 + 8 * v;  // ob + 8 <= ostride: bias, eps and eps2 are padded
    const __m256 b = _mm256_loadu_ps(pl.bias + ob), e = _mm256_loadu_ps(pl.eps + ob);
    const int64_t lanes = std::min<int64_t>(8, g.o - ob);
    const uint32_t in = (1u << lanes) - 1;
    uint32_t proved;
    uint64_t bytes = CodesY(mx[v], b, e, levels, &proved);
    if ((proved & in) != in) {  // again with the window bound: E = min(eps, eps2 N_p + 2 FLT_MIN)
      if (norm < 0.0f) norm = WindowNorm(g, pl, n, py, px);
      bytes = CodesY(mx[v], b, WindowBoundY(e, pl.eps2 + ob, norm), levels, &proved);
    }
    uint8_t* d = dst + ob * plane + py * g.pw + px;
    if (proved == 0xff && lanes == 8) {  // the common case: no branch per channel
      for (int l = 0; l < 8; ++l) d[l * plane] = static_cast<uint8_t>(bytes >> (8 * l));
      continue;
    }
    for (int64_t l = 0; l < lanes; ++l) {
      if ((proved >> l) & 1)
        d[l * plane] = static_cast<uint8_t>(bytes >> (8 * l));
      else
        pl.pending->Add(n, ob + l, py, px, d + l * plane);
    }
  }
}

// Channels [o0, o0 + 8 * nv) of pooled pixel (py, px) of image n.
template <int nv>
void Group(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t py, int64_t px,
           uint8_t* dst, int64_t o0) {
  const int64_t k = g.pool, hp = pl.hp, wp = pl.wp;
  const float* img = pl.xf + n * g.c * hp * wp;
  const float* wt = pl.wtb + o0 * pl.taps;  // this group's block (o0: a multiple of 24)
  const float* srcs[4];
  int np = 0;
  bool first = true;
  __m256 mx[kVec];
  for (int64_t r = 0; r < k; ++r)
    for (int64_t s = 0; s < k; ++s) {
      const int64_t oy = py * k + r, ox = px * k + s;
      srcs[np++] = img + oy * g.stride * wp + ox * g.stride;
      if (np == 4) {
        Pixels<4, nv>(srcs, pl.offs, pl.taps, wt, kBlock, mx, first);
        first = false;
        np = 0;
      }
    }
  for (int p = 0; p < np; ++p) {
    Pixels<1, nv>(srcs + p, pl.offs, pl.taps, wt, kBlock, mx, first);
    first = false;
  }
  Store<nv>(g, pl, n, py, px, dst, o0, mx);
}

// Without a pool (k = 1): channels [o0, o0 + 8 * nv) of pixels (y, x .. x + count - 1),
// their sums side by side (up to 4 x nv FMA chains), into a[p]. Each pixel's sum is the same
// sequence of FMAs as Group's, so the codes are the same. Run stores codes, RunOut floats.
template <int nv>
inline void RunSums(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t y,
                    int64_t x, int64_t count, int64_t o0, __m256 (&a)[kPixelRun][kVec]) {
  const float* img = pl.xf + n * g.c * pl.hp * pl.wp;
  const float* srcs[kPixelRun];
  for (int64_t p = 0; p < kPixelRun; ++p)  // a short run repeats its last pixel (not stored)
    srcs[p] = img + y * g.stride * pl.wp + (x + std::min(p, count - 1)) * g.stride;
  Sums<kPixelRun, nv>(srcs, pl.offs, pl.taps, pl.wtb + o0 * pl.taps, kBlock, a);
}

template <int nv>
void Run(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t py, int64_t px,
         int64_t count, uint8_t* dst, int64_t o0) {
  __m256 a[kPixelRun][kVec];
  RunSums<nv>(g, pl, n, py, px, count, o0, a);
  // Constant indices into a (no loop over p): an array indexed at run time lives in memory, and
  // then GCC stores the accumulators at every tap (the loads there might alias it).
  Store<nv>(g, pl, n, py, px, dst, o0, a[0]);
  if (count > 1) Store<nv>(g, pl, n, py, px + 1, dst, o0, a[1]);
  if (count > 2) Store<nv>(g, pl, n, py, px + 2, dst, o0, a[2]);
  if (count > 3) Store<nv>(g, pl, n, py, px + 3, dst, o0, a[3]);
}

// Float output: channels [o0, o0 + 8 * nv) of pixel (oy, ox) = sums + bias.
template <int nv>
inline void StoreOut(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t oy, int64_t ox,
                     float* dst, int64_t o0, const __m256 (&sums)[kVec]) {
  const int64_t plane = g.oh * g.ow;
  for (int v = 0; v < nv; ++v) {
    const int64_t ob = o0 + 8 * v;  // bias is padded to ostride
    alignas(32) float lane[8];
    _mm256_store_ps(lane, _mm256_add_ps(sums[v], _mm256_loadu_ps(pl.bias + ob)));
    const int64_t lanes = std::min<int64_t>(8, g.o - ob);
    float* d = dst + ob * plane + oy * g.ow + ox;
    for (int64_t l = 0; l < lanes; ++l) d[l * plane] = lane[l];
  }
}

template <int nv>
void RunOut(const FloatConvGeom& g, const FloatConvPlan& pl, int64_t n, int64_t oy, int64_t ox,
            int64_t count, float* dst, int64_t o0) {
  __m256 a[kPixelRun][kVec];
  RunSums<nv>(g, pl, n, oy, ox, count, o0, a);
  StoreOut<nv>(g, pl, oy, ox, dst, o0, a[0]);  // constant indices, as in Run
  if (count > 1) StoreOut<nv>(g, pl, oy, ox + 1, dst, o0, a[1]);
  if (count > 2) StoreOut<nv>(g, pl, oy, ox + 2, dst, o0, a[2]);
  if (count > 3) StoreOut<nv>(g, pl, oy, ox + 3, dst, o0, a[3]);
}

}  // namespace

void ConvFloatOutAvx2(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t oy,
                      int64_t ox, int64_t count, float* dst) {
  using RunFn = void (*)(const FloatConvGeom&, const FloatConvPlan&, int64_t, int64_t, int64_t,
                         int64_t, float*, int64_t);
  constexpr RunFn kRuns[kVec] = {&RunOut<1>, &RunOut<2>, &RunOut<3>};
  for (int64_t o0 = 0; o0 < g.o; o0 += 8 * kVec)
    kRuns[std::min<int64_t>(kVec, (g.o - o0 + 7) / 8) - 1](g, p, n, oy, ox, count, dst, o0);
}

void ConvPoolQuantizeAvx2(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t py,
                          int64_t px0, int64_t count, uint8_t* dst) {
  if (p.eps == nullptr) {  // no error bound for this input: every code from the spec's sums
    for (int64_t px = px0; px < px0 + count; ++px)
      for (int64_t o = 0; o < g.o; ++o)
        p.pending->Add(n, o, py, px, dst + o * g.ph * g.pw + py * g.pw + px);
    return;
  }
  using GroupFn = void (*)(const FloatConvGeom&, const FloatConvPlan&, int64_t, int64_t, int64_t,
                           uint8_t*, int64_t);
  using RunFn = void (*)(const FloatConvGeom&, const FloatConvPlan&, int64_t, int64_t, int64_t,
                         int64_t, uint8_t*, int64_t);
  constexpr GroupFn kGroups[kVec] = {&Group<1>, &Group<2>, &Group<3>};
  constexpr RunFn kRuns[kVec] = {&Run<1>, &Run<2>, &Run<3>};
  for (int64_t o0 = 0; o0 < g.o; o0 += 8 * kVec) {
    const int64_t nv = std::min<int64_t>(kVec, (g.o - o0 + 7) / 8);
    if (g.pool == 1 && count > 1) {
      kRuns[nv - 1](g, p, n, py, px0, count, dst, o0);
      continue;
    }
    for (int64_t px = px0; px < px0 + count; ++px) kGroups[nv - 1](g, p, n, py, px, dst, o0);
  }
}

}  // namespace dorefa
