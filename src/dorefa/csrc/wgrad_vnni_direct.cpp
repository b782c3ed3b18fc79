// The AVX-512 register tiles of the direct weight gradient (wgrad_direct.h) and of the
// one-pixel outer-product sum (wgrad_outer.h), and the VNNI kernel's `direct` entry.
//
// Direct tile: up to 2 vectors of 16 channels x 4 columns = 8 zmm of int32 sums; per pixel quad
// one VPDPBUSD (a broadcast u8 run of a strip x s8 gradient factors 2c - n_g; no saturation)
// per sum. The float64 sums of the tile (16 zmm) stay in registers over the samples of a
// block, so a sample costs its quads plus one conversion and one add (FMA) per 8 outputs.
// Outer tile: 6 channels x 32 columns (4 zmm of 8 doubles), one FMA per (sample, output).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "avx512_transpose.h"
#include "wgrad.h"
#include "wgrad_direct.h"
#include "wgrad_outer.h"

namespace dorefa {
namespace {

struct VnniDirect {
  static constexpr int kLanes = 16;   // channels per zmm
  static constexpr int kVectors = 2;  // channel vectors per register tile
  static constexpr int kCols = 4;     // columns per register tile
  static constexpr int kChunk = 24;   // columns per work tile (its double sums stay in L1)

  // One strip plane (wgrad_direct.h): rows of ow bytes in 64-byte masked steps, the data
  // columns loaded under their mask (the rest read as 0), the padding rows stored as zeros.
  static void StripPlane(const uint8_t* src, int64_t h, int64_t w, int64_t p, int64_t first,
                         int64_t last, int64_t shift, uint8_t* dst, int64_t ow, int64_t hp) {
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t i = 0; i < ow; i += 64) {
      const __mmask64 row = ByteSpan(i, ow), data = row & ~ByteSpan(i, first) & ByteSpan(i, last);
      for (int64_t y = 0; y < hp; ++y) {
        const int64_t iy = y - p;
        const __m512i v = iy < 0 || iy >= h || data == 0
                              ? zero
                              : _mm512_maskz_loadu_epi8(data, src + iy * w + i + shift);
        _mm512_mask_storeu_epi8(dst + y * ow + i, row, v);
      }
    }
  }
  // g = 2c - n_g of one sample into 16-channel x 4-pixel vectors: per 16 channels and 16 quads,
  // 16 rows of 64 code bytes (masked: 0 past P and past O), transformed, then transposed as a
  // 16 x 16 matrix of 4-byte quads.
  static void PackGrads(const WgradGeom& g, const DirectLayout& l, const uint8_t* c, int8_t* gq) {
    const int64_t p_count = g.P();
    const __m512i ng = _mm512_set1_epi8(static_cast<char>((1 << g.g_bits) - 1));
    for (int64_t v = 0; v < l.ov; ++v) {
      for (int64_t q0 = 0; q0 < l.pq; q0 += 16) {
        const __mmask64 m = ByteSpan(q0 * 4, p_count);
        __m512i r[16];
        for (int i = 0; i < 16; ++i) {
          const int64_t o = v * 16 + i;
          const __m512i x = o < g.o ? _mm512_maskz_loadu_epi8(m, c + o * p_count + q0 * 4)
                                    : _mm512_setzero_si512();
          r[i] = o < g.o ? _mm512_maskz_sub_epi8(m, _mm512_add_epi8(x, x), ng) : x;
        }
        Transpose16Dwords(r);
        const int64_t n = std::min<int64_t>(16, l.pq - q0);
        for (int64_t j = 0; j < n; ++j) _mm512_storeu_si512(gq + (v * l.pq + q0 + j) * 64, r[j]);
      }
    }
  }

  template <int V, int C, DirectMode M>
  static void Run(const DirectTileArgs& a) {
    const int64_t* col = a.Col();
    const int64_t pq = a.pk->l.pq;
    constexpr int64_t kRow = kVectors * kLanes;
    __m512d acc[V][C][2];
    for (int v = 0; v < V; ++v)
      for (int j = 0; j < C; ++j)
        for (int h = 0; h < 2; ++h)
          acc[v][j][h] = M == DirectMode::kS ? _mm512_setzero_pd()
                                             : _mm512_loadu_pd(a.acc + j * kRow + v * 16 + h * 8);
    for (int64_t b = a.b0; b < a.b1; ++b) {
      const uint8_t* xs = a.Xs(b);
      const int8_t* gq = a.Gq(b);
      __m512i s[V][C];
      for (int v = 0; v < V; ++v)
        for (int j = 0; j < C; ++j) s[v][j] = _mm512_setzero_si512();
      for (int64_t q = 0; q < pq; ++q) {
        __m512i gv[V];
        for (int v = 0; v < V; ++v) gv[v] = _mm512_loadu_si512(gq + (v * pq + q) * 64);
        for (int j = 0; j < C; ++j) {
          int32_t run;
          std::memcpy(&run, xs + col[j] + 4 * q, 4);
          const __m512i xv = _mm512_set1_epi32(run);
          for (int v = 0; v < V; ++v) s[v][j] = _mm512_dpbusd_epi32(s[v][j], xv, gv[v]);
        }
      }
      if constexpr (M == DirectMode::kS) {
        for (int v = 0; v < V; ++v)
          for (int j = 0; j < C; ++j) {
            alignas(64) int32_t lanes[16];
            _mm512_store_si512(lanes, s[v][j]);
            a.StoreS(b, v, j, lanes);
          }
        continue;
      }
      const __m512d scale = _mm512_set1_pd(a.out->scale[b]);
      for (int v = 0; v < V; ++v) {
        for (int j = 0; j < C; ++j) {
          const __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(s[v][j]));
          const __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(s[v][j], 1));
          if constexpr (M == DirectMode::kFma) {
            acc[v][j][0] = _mm512_fmadd_pd(scale, lo, acc[v][j][0]);
            acc[v][j][1] = _mm512_fmadd_pd(scale, hi, acc[v][j][1]);
          } else {
            acc[v][j][0] = _mm512_add_pd(acc[v][j][0], _mm512_mul_pd(scale, lo));
            acc[v][j][1] = _mm512_add_pd(acc[v][j][1], _mm512_mul_pd(scale, hi));
          }
        }
      }
    }
    if constexpr (M != DirectMode::kS) {
      for (int v = 0; v < V; ++v)
        for (int j = 0; j < C; ++j)
          for (int h = 0; h < 2; ++h)
            _mm512_storeu_pd(a.acc + j * kRow + v * 16 + h * 8, acc[v][j][h]);
    }
  }

  template <int V, int C>
  static void Tile(const DirectTileArgs& a) {
    switch (a.Mode()) {
      case DirectMode::kS:
        return Run<V, C, DirectMode::kS>(a);
      case DirectMode::kFma:
        return Run<V, C, DirectMode::kFma>(a);
      case DirectMode::kMulAdd:
        return Run<V, C, DirectMode::kMulAdd>(a);
    }
  }
};

struct Avx512Outer {  // 6 channels x 4 vectors of 8 doubles
  static constexpr int kRows = 6, kVecs = 4, kWidth = 8;
  using Vec = __m512d;
  static Vec Zero() { return _mm512_setzero_pd(); }
  static Vec LoadX(const int32_t* p) {
    return _mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static Vec Set1(double v) { return _mm512_set1_pd(v); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_pd(a, b, c); }
  static void Store(double* p, Vec v) { _mm512_storeu_pd(p, v); }
};

}  // namespace

uint32_t WeightGradDirectVnni(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                              const WgradOutput& out, int threads) {
  if (OuterApplies(g, out)) return WeightGradOuterWith<Avx512Outer>(g, c, x, out, threads);
  return WeightGradDirectWith<VnniDirect>(g, c, x, out, threads);
}

}  // namespace dorefa
