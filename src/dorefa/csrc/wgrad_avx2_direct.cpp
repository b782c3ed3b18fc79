// The AVX2 register tiles of the direct weight gradient (wgrad_direct.h) and of the one-pixel
// outer-product sum (wgrad_outer.h), and the AVX2 kernel's `direct` entry.
//
// Direct tile: up to 2 vectors of 8 channels x 6 columns = 12 ymm of int16 sums. Per pixel
// quad and accumulator, VPMADDUBSW (u8 gradient codes x s8 x' -> int16 pair sums) and VPADDW;
// every `fold` quads the int16 sums are widened by VPMADDWD (x 1) into int32 sums kept in L1.
// Exact: x' = x - z with z from ShiftAvx2 (wgrad_avx2.cpp) keeps a pair sum within
// B = 2 n_g max|x'| <= 32767 (max|x'| = n_a for z = 0, z for z = 2^(A-1)), so `fold` =
// floor(32767 / B) quads never leave int16 (W1A2G6: B = 378, fold = 86 quads).
// Outer tile: 6 channels x 8 columns (2 ymm of 4 doubles), one FMA per (sample, output).
#include <immintrin.h>

#include <cstring>

#include "wgrad.h"
#include "wgrad_direct.h"
#include "wgrad_outer.h"

namespace dorefa {
namespace {

// Quads whose int16 pair sums can be added without leaving int16 (see above).
int64_t FoldQuads(int g_bits, int a_bits, int32_t z) {
  const int64_t ng = (1 << g_bits) - 1, xmax = z == 0 ? (1 << a_bits) - 1 : z;
  return std::max<int64_t>(1, 32767 / (2 * ng * xmax));
}

struct Avx2Direct {
  static constexpr int kLanes = 8;    // channels per ymm
  static constexpr int kVectors = 2;  // channel vectors per register tile
  static constexpr int kCols = 6;     // columns per register tile
  static constexpr int kChunk = 24;   // columns per work tile

  // 16-byte steps, the last one overlapping the one before (rewriting the same values); rows
  // shorter than 16 bytes byte by byte.
  static uint8_t CopyShifted(const uint8_t* src, int64_t n, int8_t shift, int8_t* dst) {
    if (n < 16) {
      uint8_t any = 0;
      for (int64_t i = 0; i < n; ++i) {
        any |= src[i];
        dst[i] = static_cast<int8_t>(src[i] - shift);
      }
      return any;
    }
    const __m128i z = _mm_set1_epi8(shift);
    __m128i any = _mm_setzero_si128();
    for (int64_t i = 0;; i += 16) {
      const int64_t at = i + 16 <= n ? i : n - 16;
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + at));
      any = _mm_or_si128(any, v);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + at), _mm_sub_epi8(v, z));
      if (at + 16 >= n) break;
    }
    return OrLanes(any);
  }

  template <int V, int C>
  static void Fold(__m256i (&s16)[V][C], int32_t (*u32)[C][8]) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int v = 0; v < V; ++v) {
      for (int j = 0; j < C; ++j) {
        __m256i* u = reinterpret_cast<__m256i*>(u32[v][j]);
        _mm256_store_si256(
            u, _mm256_add_epi32(_mm256_load_si256(u), _mm256_madd_epi16(s16[v][j], ones)));
        s16[v][j] = _mm256_setzero_si256();
      }
    }
  }

  template <int V, int C>
  static void Tile(const DirectTileArgs& a) {
    const DirectLayout& l = a.pk->l;
    const int8_t* xs = a.Xs();
    const uint8_t* cq = a.Cq();
    const int64_t* col = a.Col();
    const int64_t fold = FoldQuads(a.g->g_bits, a.g->a_bits, a.z);
    __m256i s16[V][C];
    alignas(32) int32_t u32[V][C][8] = {};
    for (int v = 0; v < V; ++v)
      for (int j = 0; j < C; ++j) s16[v][j] = _mm256_setzero_si256();
    int64_t left = fold;
    for (int64_t oy = 0; oy < a.g->oh; ++oy) {
      for (int64_t q = 0; q < l.qw; ++q) {
        const int64_t quad = oy * l.qw + q, pix = oy * l.wp + 4 * q;
        __m256i cv[V];
        for (int v = 0; v < V; ++v)
          cv[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cq + (v * l.pq + quad) * 32));
        for (int j = 0; j < C; ++j) {
          int32_t run;
          std::memcpy(&run, xs + col[j] + pix, 4);
          const __m256i xv = _mm256_set1_epi32(run);
          for (int v = 0; v < V; ++v)
            s16[v][j] = _mm256_add_epi16(s16[v][j], _mm256_maddubs_epi16(cv[v], xv));
        }
        if (--left == 0) {
          Fold<V, C>(s16, u32);
          left = fold;
        }
      }
    }
    Fold<V, C>(s16, u32);
    const uint32_t* zc = a.Zc();
    const uint32_t* nx = a.Nx();
    const __m256d scale = _mm256_set1_pd(a.scale);
    for (int v = 0; v < V; ++v) {
      const __m256i zcv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zc + v * 8));
      for (int j = 0; j < C; ++j) {
        const __m256i u = _mm256_load_si256(reinterpret_cast<const __m256i*>(u32[v][j]));
        const __m256i twice = _mm256_slli_epi32(_mm256_add_epi32(u, zcv), 1);
        const __m256i s = _mm256_sub_epi32(twice, _mm256_set1_epi32(static_cast<int32_t>(nx[j])));
        if (a.s != nullptr) {
          alignas(32) int32_t lanes[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
          a.StoreS(v, j, lanes);
          continue;
        }
        double* acc = a.acc + j * kVectors * kLanes + v * 8;
        const __m256d lo = _mm256_cvtepi32_pd(_mm256_castsi256_si128(s));
        const __m256d hi = _mm256_cvtepi32_pd(_mm256_extracti128_si256(s, 1));
        _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_mul_pd(scale, lo)));
        _mm256_storeu_pd(acc + 4,
                         _mm256_add_pd(_mm256_loadu_pd(acc + 4), _mm256_mul_pd(scale, hi)));
      }
    }
  }
};

struct Avx2Outer {  // 6 channels x 2 vectors of 4 doubles
  static constexpr int kRows = 6, kVecs = 2, kWidth = 4;
  using Vec = __m256d;
  static Vec Zero() { return _mm256_setzero_pd(); }
  static Vec Load(const double* p) { return _mm256_loadu_pd(p); }
  static Vec Set1(double v) { return _mm256_set1_pd(v); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_pd(a, b, c); }
  static void Store(double* p, Vec v) { _mm256_storeu_pd(p, v); }
};

}  // namespace

uint32_t WeightGradDirectAvx2(const WgradGeom& g, const uint8_t* c, const uint8_t* x, int32_t z,
                              const WgradOutput& out, int threads) {
  if (OuterApplies(g, out)) return WeightGradOuterWith<Avx2Outer>(g, c, x, out, threads);
  return WeightGradDirectWith<Avx2Direct>(g, c, x, z, out, threads);
}

}  // namespace dorefa
