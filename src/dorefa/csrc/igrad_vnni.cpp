// The input-gradient GEMM on AVX-512 VNNI (igrad.h). Register tile: up to 4 vectors of 16 input
// channels x 4 output pixels = 16 zmm of int32 sums; per group of 4 output channels, 4 weight
// vectors and 4 broadcast code quads feed 16 VPDPBUSD. A tile covers one tap (r, t), so its sums
// go to 4 input pixels: one load, add and store per vector and pixel after O / 4 steps.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include "avx512_transpose.h"
#include "bitconv.h"
#include "buffers.h"
#include "cpu_features.h"
#include "igrad.h"
#include "int8conv.h"
#include "thread_pool.h"
#include "unroll.h"

namespace dorefa {
namespace {

constexpr int kVectors = 4;  // 16-channel groups per register tile
constexpr int kPixels = 4;   // output pixels per register tile (6 measured the same)

// The targets of IgradPacked: where each tap's output pixels land (-1: in the padding).
std::vector<int32_t> Targets(const IgradGeom& g) {
  std::vector<int32_t> target;
  target.reserve(static_cast<size_t>(g.kh * g.kw * g.oh * g.ow));
  for (int64_t r = 0; r < g.kh; ++r)
    for (int64_t t = 0; t < g.kw; ++t)
      for (int64_t oy = 0; oy < g.oh; ++oy)
        for (int64_t ox = 0; ox < g.ow; ++ox) {
          const int64_t iy = oy * g.stride + r - g.padding, ix = ox * g.stride + t - g.padding;
          const bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
          target.push_back(inside ? static_cast<int32_t>(iy * g.w + ix) : -1);
        }
  return target;
}

// Pixel tiles p0, p0 + J, ... below p1 of tap (r, t) and channel groups cg0 .. cg0 + V - 1 (one
// call per run of tiles: the call and its pointers cost as much as a tile's epilogue).
template <int V, int J>
void Tile(const IgradPacked& k, int64_t r, int64_t t, int64_t cg0, int64_t p0, int64_t p1) {
  const IgradGeom& g = *k.g;
  const int8_t* w = k.wq + ((r * g.kw + t) * k.cg + cg0) * k.wq_oq * 64;
  const int32_t* target = k.target + (r * g.kw + t) * k.p;
  for (; p0 + J <= p1; p0 += J) {
    __m512i s[V][J];
    DOREFA_UNROLL for (int v = 0; v < V; ++v) {
      DOREFA_UNROLL for (int j = 0; j < J; ++j) s[v][j] = _mm512_setzero_si512();
    }
    const uint8_t* cq = k.cq + p0 * k.op;
    for (int64_t q = 0; q < k.oq; ++q) {
      __m512i wv[V];
      DOREFA_UNROLL for (int v = 0; v < V; ++v) wv[v] =
          _mm512_loadu_si512(w + (v * k.wq_oq + q) * 64);
      DOREFA_UNROLL for (int j = 0; j < J; ++j) {
        int32_t quad;
        std::memcpy(&quad, cq + j * k.op + 4 * q, 4);
        const __m512i cv = _mm512_set1_epi32(quad);
        DOREFA_UNROLL for (int v = 0; v < V; ++v) s[v][j] = _mm512_dpbusd_epi32(s[v][j], cv, wv[v]);
      }
    }
    DOREFA_UNROLL for (int j = 0; j < J; ++j) {
      if (target[p0 + j] < 0) continue;  // the forward's padding
      int32_t* dst = k.acc + (target[p0 + j] * k.cg + cg0) * 16;
      DOREFA_UNROLL for (int v = 0; v < V; ++v) {
        const __m512i old = _mm512_loadu_si512(dst + v * 16);
        _mm512_storeu_si512(dst + v * 16, _mm512_add_epi32(old, s[v][j]));
      }
    }
  }
}

using TileFn = void (*)(const IgradPacked&, int64_t, int64_t, int64_t, int64_t, int64_t);
template <int V, int... J>
constexpr std::array<TileFn, sizeof...(J)> TileRow(std::integer_sequence<int, J...>) {
  return {&Tile<V, J + 1>...};
}
template <int... I>
constexpr auto TileTable(std::integer_sequence<int, I...>) {
  return std::array{TileRow<I + 1>(std::make_integer_sequence<int, kPixels>{})...};
}

// Weight factors into wq (layout in igrad.h), written in order (each 64-byte vector from four
// output channels' runs of 16 x KH KW bytes); returns the OR of the codes.
uint8_t PackWeights(const IgradGeom& g, int64_t cg, int64_t oq, const uint8_t* w, int8_t* wq) {
  const int32_t nw = (1 << g.w_bits) - 1;
  const int64_t kk = g.kh * g.kw;
  uint8_t ors = 0;
  for (int64_t rt = 0; rt < kk; ++rt)
    for (int64_t c0 = 0; c0 < cg * 16; c0 += 16)
      for (int64_t o0 = 0; o0 < oq * 4; o0 += 4, wq += 64)
        for (int64_t lane = 0; lane < 16; ++lane)
          for (int64_t i = 0; i < 4; ++i) {
            const int64_t o = o0 + i, ci = c0 + lane;
            if (o >= g.o || ci >= g.c) {
              wq[lane * 4 + i] = 0;
              continue;
            }
            const uint8_t code = w[(o * g.c + ci) * kk + rt];
            ors |= code;
            wq[lane * 4 + i] = static_cast<int8_t>(2 * code - nw);
          }
  return ors;
}

// K2 (C, HW) = sum over (o, r, t) reaching each input pixel of 2 p - n_w: per tap the column
// sums of the weight factors, added at the input pixels the tap's output pixels reach
// (Targets).
void WeightSums(const IgradGeom& g, const uint8_t* w, const std::vector<int32_t>& target,
                int32_t* k2) {
  const int32_t nw = (1 << g.w_bits) - 1;
  const int64_t kk = g.kh * g.kw, hw = g.h * g.w, p = g.oh * g.ow;
  std::vector<int32_t> tap(static_cast<size_t>(g.c * kk), 0);  // [ci][rt]
  for (int64_t o = 0; o < g.o; ++o)
    for (int64_t i = 0; i < g.c * kk; ++i) tap[i] += 2 * w[o * g.c * kk + i] - nw;
  std::fill(k2, k2 + g.c * hw, 0);
  for (int64_t rt = 0; rt < kk; ++rt)
    for (int64_t j = 0; j < p; ++j) {
      const int32_t at = target[rt * p + j];
      if (at < 0) continue;
      for (int64_t ci = 0; ci < g.c; ++ci) k2[ci * hw + at] += tap[ci * kk + rt];
    }
}

// acc [HW][cg * 16] -> 16 x 16 transposes -> either K1 (C, HW) as is, or dx (C, HW) =
// float32(scale * double(2 K1 - n_g K2)): D formed exactly in double (|2 K1| < 2^32,
// |n_g K2| < 2^39), one double product, one rounding to float32 (input_grad.h's finish).
void StoreTransposed(const IgradGeom& g, int64_t cg, const int32_t* acc, const IgradOut& out,
                     int64_t b) {
  const int64_t hw = g.h * g.w;
  const __m512d two = _mm512_set1_pd(2.0), ng = _mm512_set1_pd((1 << g.g_bits) - 1);
  const __m512d scale = _mm512_set1_pd(out.dx != nullptr ? out.scale[b] : 0.0);
  for (int64_t c0 = 0; c0 < g.c; c0 += 16) {
    for (int64_t p0 = 0; p0 < hw; p0 += 16) {
      const int64_t np = std::min<int64_t>(16, hw - p0), nc = std::min<int64_t>(16, g.c - c0);
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i)
        r[i] = i < np ? _mm512_loadu_si512(acc + (p0 + i) * cg * 16 + c0) : _mm512_setzero_si512();
      Transpose16Dwords(r);
      const __mmask16 m = static_cast<__mmask16>((1u << np) - 1);
      for (int64_t i = 0; i < nc; ++i) {
        const int64_t at = (c0 + i) * hw + p0;
        if (out.dx == nullptr) {
          _mm512_mask_storeu_epi32(out.k1 + b * g.c * hw + at, m, r[i]);
          continue;
        }
        const __m512i k2 = _mm512_maskz_loadu_epi32(m, out.k2 + at);
        __m256 half[2];
        for (int h = 0; h < 2; ++h) {
          const __m256i a =
              h == 0 ? _mm512_castsi512_si256(r[i]) : _mm512_extracti64x4_epi64(r[i], 1);
          const __m256i k = h == 0 ? _mm512_castsi512_si256(k2) : _mm512_extracti64x4_epi64(k2, 1);
          const __m512d d = _mm512_sub_pd(_mm512_mul_pd(two, _mm512_cvtepi32_pd(a)),
                                          _mm512_mul_pd(ng, _mm512_cvtepi32_pd(k)));
          half[h] = _mm512_cvtpd_ps(_mm512_mul_pd(scale, d));
        }
        const __m512 y = _mm512_insertf32x8(_mm512_castps256_ps512(half[0]), half[1], 1);
        _mm512_mask_storeu_ps(out.dx + b * g.c * hw + at, m, y);
      }
    }
  }
}

}  // namespace

bool InputGradGemmFits(const IgradGeom& g) {
  constexpr uint32_t kNeeds = kAvx512F | kAvx512Bw | kAvx512Vl | kAvx512Dq | kAvx512Vnni;
  uint32_t needs = kNeeds;
  if (g.amx) {
#ifdef DOREFA_HAVE_AMX
    needs |= kAmxTile | kAmxInt8;
#else
    return false;
#endif
  }
  return (CpuFeatures() & needs) == needs && g.w_bits <= 7;
}

uint32_t InputGradGemm(const IgradGeom& g, const uint8_t* c, const uint8_t* w, const IgradOut& out,
                       int threads) {
  static constexpr auto kTiles = TileTable(std::make_integer_sequence<int, kVectors>{});
  ConvGeom cg_geom;  // the codes as an int8conv input: (N, O, OH, OW), no padding
  cg_geom.n = g.n, cg_geom.c = g.o, cg_geom.h = g.oh, cg_geom.w = g.ow;
  cg_geom.o = 1, cg_geom.kh = 1, cg_geom.kw = 1;
  cg_geom.Finalize();
  const Int8Geom q(cg_geom);
  const int64_t cg = (g.c + 15) / 16, oq = q.cp / 4, p = g.oh * g.ow, hw = g.h * g.w;
  const int64_t wq_oq = g.amx ? (oq + 15) / 16 * 16 : oq;  // AMX: whole 64-byte steps
  PoolScratch<int8_t> wq(static_cast<size_t>(g.kh * g.kw * cg * wq_oq * 64));
  const uint8_t w_ors = PackWeights(g, cg, wq_oq, w, wq.data());
  const std::vector<int32_t> target = Targets(g);
  WeightSums(g, w, target, out.k2);
  std::atomic<uint32_t> ors{0};
  ParallelForOrThrow(threads, g.n, [&](int64_t begin, int64_t end) {
    // AMX reads 32 rows of 4 wq_oq bytes from the last strip's first pixel
    PoolScratch<uint8_t> cq(static_cast<size_t>(q.image + 32 * 4 * wq_oq + 64));
    PoolScratch<int32_t> acc(static_cast<size_t>(hw * cg * 16));
    uint32_t mine = 0;
    for (int64_t b = begin; b < end; ++b) {
      mine |= PackInt8Image(cg_geom, c, 0, b, cq.data());
      std::memset(acc.data(), 0, static_cast<size_t>(hw * cg * 16) * sizeof(int32_t));
      const IgradPacked k{&g,        cg,        oq, q.cp, p, wq_oq, wq.data(), target.data(),
                          cq.data(), acc.data()};
#ifdef DOREFA_HAVE_AMX
      if (g.amx) {
        InputGradSampleAmx(k);
        StoreTransposed(g, cg, acc.data(), out, b);
        continue;
      }
#endif
      for (int64_t cg0 = 0; cg0 < cg; cg0 += kVectors) {
        const int nv = static_cast<int>(std::min<int64_t>(kVectors, cg - cg0));
        const int64_t full = p / kPixels * kPixels;
        for (int64_t r = 0; r < g.kh; ++r)
          for (int64_t t = 0; t < g.kw; ++t) {
            kTiles[nv - 1][kPixels - 1](k, r, t, cg0, 0, full);
            if (full < p) kTiles[nv - 1][p - full - 1](k, r, t, cg0, full, p);
          }
      }
      StoreTransposed(g, cg, acc.data(), out, b);
    }
    ors.fetch_or(mine);
  });
  return ors.load() | uint32_t{w_ors} << 8;
}

}  // namespace dorefa
