// The AVX-512 register tiles of the direct weight gradient (wgrad_direct.h) and of the
// one-pixel outer-product sum (wgrad_outer.h), and the VNNI kernel's `direct` entry.
//
// Direct tile: up to 4 vectors of 16 channels x 6 columns = 24 zmm accumulators; per pixel quad,
// one VPDPBUSD (u8 gradient codes x s8 x', int32 sums, no saturation) per accumulator.
// Outer tile: 6 channels x 32 columns (4 zmm of 8 doubles), one FMA per (sample, output).
#include <immintrin.h>

#include <cstring>

#include "wgrad.h"
#include "wgrad_direct.h"
#include "wgrad_outer.h"

namespace dorefa {
namespace {

struct VnniDirect {
  static constexpr int kLanes = 16;   // channels per zmm
  static constexpr int kVectors = 4;  // channel vectors per register tile
  static constexpr int kCols = 6;     // columns per register tile
  static constexpr int kChunk = 24;   // columns per work tile (its double sums stay in L1)

  static uint8_t CopyShifted(const uint8_t* src, int64_t n, int8_t shift, int8_t* dst) {
    const __m512i z = _mm512_set1_epi8(shift);
    __m512i any = _mm512_setzero_si512();
    for (int64_t i = 0; i < n; i += 64) {
      const __mmask64 m = n - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (n - i)) - 1;
      const __m512i v = _mm512_maskz_loadu_epi8(m, src + i);
      any = _mm512_or_si512(any, v);
      _mm512_mask_storeu_epi8(dst + i, m, _mm512_sub_epi8(v, z));
    }
    const __m256i a =
        _mm256_or_si256(_mm512_castsi512_si256(any), _mm512_extracti64x4_epi64(any, 1));
    const __m128i b = _mm_or_si128(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    return OrLanes(b);
  }

  template <int V, int C>
  static void Tile(const DirectTileArgs& a) {
    const DirectLayout& l = a.pk->l;
    const int8_t* xs = a.Xs();
    const uint8_t* cq = a.Cq();
    const int64_t* col = a.Col();
    __m512i u[V][C];
    for (int v = 0; v < V; ++v)
      for (int j = 0; j < C; ++j) u[v][j] = _mm512_setzero_si512();
    for (int64_t oy = 0; oy < a.g->oh; ++oy) {
      for (int64_t q = 0; q < l.qw; ++q) {
        const int64_t quad = oy * l.qw + q, pix = oy * l.wp + 4 * q;
        __m512i cv[V];
        for (int v = 0; v < V; ++v) cv[v] = _mm512_loadu_si512(cq + (v * l.pq + quad) * 64);
        for (int j = 0; j < C; ++j) {
          int32_t run;
          std::memcpy(&run, xs + col[j] + pix, 4);
          const __m512i xv = _mm512_set1_epi32(run);
          for (int v = 0; v < V; ++v) u[v][j] = _mm512_dpbusd_epi32(u[v][j], cv[v], xv);
        }
      }
    }
    const uint32_t* zc = a.Zc();
    const uint32_t* nx = a.Nx();
    const __m512d scale = _mm512_set1_pd(a.scale);
    for (int v = 0; v < V; ++v) {
      const __m512i zcv = _mm512_loadu_si512(zc + v * 16);
      for (int j = 0; j < C; ++j) {
        const __m512i twice = _mm512_slli_epi32(_mm512_add_epi32(u[v][j], zcv), 1);
        const __m512i s = _mm512_sub_epi32(twice, _mm512_set1_epi32(static_cast<int32_t>(nx[j])));
        if (a.s != nullptr) {
          alignas(64) int32_t lanes[16];
          _mm512_store_si512(lanes, s);
          a.StoreS(v, j, lanes);
          continue;
        }
        double* acc = a.acc + j * kVectors * kLanes + v * 16;
        const __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(s));
        const __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(s, 1));
        _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_loadu_pd(acc), _mm512_mul_pd(scale, lo)));
        _mm512_storeu_pd(acc + 8,
                         _mm512_add_pd(_mm512_loadu_pd(acc + 8), _mm512_mul_pd(scale, hi)));
      }
    }
  }
};

struct Avx512Outer {  // 6 channels x 4 vectors of 8 doubles
  static constexpr int kRows = 6, kVecs = 4, kWidth = 8;
  using Vec = __m512d;
  static Vec Zero() { return _mm512_setzero_pd(); }
  static Vec Load(const double* p) { return _mm512_loadu_pd(p); }
  static Vec Set1(double v) { return _mm512_set1_pd(v); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_pd(a, b, c); }
  static void Store(double* p, Vec v) { _mm512_storeu_pd(p, v); }
};

}  // namespace

uint32_t WeightGradDirectVnni(const WgradGeom& g, const uint8_t* c, const uint8_t* x, int32_t z,
                              const WgradOutput& out, int threads) {
  if (OuterApplies(g, out)) return WeightGradOuterWith<Avx512Outer>(g, c, x, out, threads);
  return WeightGradDirectWith<VnniDirect>(g, c, x, z, out, threads);
}

}  // namespace dorefa
