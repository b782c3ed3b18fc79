// The AVX2 register tiles of the direct weight gradient (wgrad_direct.h) and of the one-pixel
// outer-product sum (wgrad_outer.h), and the AVX2 kernel's `direct` entry.
//
// Direct tile: up to 2 vectors of 8 channels x 6 columns = 12 ymm of int16 sums. Per pixel quad
// and accumulator, VPMADDUBSW (a broadcast u8 run of a strip x s8 gradient factors 2c - n_g ->
// int16 pair sums) and VPADDW; every `fold` quads the int16 sums are widened by VPMADDWD (x 1)
// into int32 sums kept in L1. Exact: a pair sum is within B = 2 n_g n_a <= 32767 (DirectFits),
// so `fold` = floor(32767 / B) quads never leave int16 (W1A2G6: B = 378, fold = 86 quads).
// Outer tile: 6 channels x 8 columns (2 ymm of 4 doubles), one FMA per (sample, output).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "unroll.h"
#include "wgrad.h"
#include "wgrad_direct.h"
#include "wgrad_outer.h"

namespace dorefa {
namespace {

// Quads whose int16 pair sums can be added without leaving int16 (see above).
int64_t FoldQuads(int g_bits, int a_bits) {
  const int64_t ng = (1 << g_bits) - 1, na = (1 << a_bits) - 1;
  return std::max<int64_t>(1, 32767 / (2 * ng * na));
}

struct Avx2Direct {
  static constexpr int kLanes = 8;           // channels per ymm
  static constexpr int kVectors = 2;         // channel vectors per register tile
  static constexpr int kCols = 6;            // columns per register tile
  static constexpr int kChunk = 24;          // columns per work tile
  static constexpr bool kIntScales = false;  // no int32 finish (DirectMode::kInt)
  // Packed gradient bytes of a batch block (wgrad_direct.h): an eighth of a 32 KiB L1 data
  // cache. The block's gradients are re-read by each register tile of the work tile, while
  // each sample brings the lines of its strips' runs (6-12 a register tile) through L1: 16
  // KiB blocks were evicted on the way (Zen 4, AVX2 path, same-process A/B against 16 KiB:
  // 1.10-1.12x on svhn's 7x7 maps, 1.07x on 9x9, 1.01-1.04x on 18x18; 2 and 8 KiB no faster
  // than 4; prefetching the next sample's runs 0.93-0.99x).
  static constexpr int64_t kBlockBytes = 4096;

  // The strip planes of n channels of one tap column (wgrad_direct.h), one by one.
  static void StripPlanes(const uint8_t* src, int64_t n, int64_t h, int64_t w, int64_t p,
                          int64_t first, int64_t last, int64_t shift, uint8_t* dst, int64_t step,
                          int64_t ow, int64_t hp) {
    for (int64_t i = 0; i < n; ++i)
      StripPlane(src + i * h * w, h, w, p, first, last, shift, dst + i * step, ow, hp);
  }

  // One strip plane: zeroed, then the data columns of each row copied.
  static void StripPlane(const uint8_t* src, int64_t h, int64_t w, int64_t p, int64_t first,
                         int64_t last, int64_t shift, uint8_t* dst, int64_t ow, int64_t hp) {
    std::memset(dst, 0, static_cast<size_t>(hp * ow));
    const int64_t n = last - first;
    for (int64_t y = 0; y < h && n > 0; ++y)
      CopyRow(src + y * w + first + shift, n, dst + (y + p) * ow + first);
  }

  // n bytes: 16-byte steps, the last one overlapping the one before; two overlapping 8- or
  // 4-byte steps for shorter rows, bytes below 4.
  static void CopyRow(const uint8_t* src, int64_t n, uint8_t* dst) {
    if (n >= 16) {
      for (int64_t i = 0;; i += 16) {
        const int64_t at = i + 16 <= n ? i : n - 16;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + at),
                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + at)));
        if (at + 16 >= n) break;
      }
    } else if (n >= 8) {
      CopyOverlapped<uint64_t>(src, n, dst);
    } else if (n >= 4) {
      CopyOverlapped<uint32_t>(src, n, dst);
    } else {
      std::memcpy(dst, src, static_cast<size_t>(n));
    }
  }

  // n bytes (sizeof(Word) <= n <= 2 sizeof(Word)) as a first and a last word, overlapping.
  template <class Word>
  static void CopyOverlapped(const uint8_t* src, int64_t n, uint8_t* dst) {
    Word lo, hi;
    std::memcpy(&lo, src, sizeof(Word));
    std::memcpy(&hi, src + n - sizeof(Word), sizeof(Word));
    std::memcpy(dst, &lo, sizeof(Word));
    std::memcpy(dst + n - sizeof(Word), &hi, sizeof(Word));
  }

  // g = 2c - n_g of one sample into 8-channel x 4-pixel vectors: per 8 channels and 8 quads,
  // 8 rows of 32 code bytes (0 past P and past O; the last run of a row through a zeroed
  // buffer), transformed, then transposed as an 8 x 8 matrix of 4-byte quads.
  static void PackGrads(const WgradGeom& g, const DirectLayout& l, const uint8_t* c, int8_t* gq) {
    const int64_t p_count = g.P();
    const __m256i ng = _mm256_set1_epi8(static_cast<char>((1 << g.g_bits) - 1));
    const __m256i index =
        _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                         21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int64_t v = 0; v < l.ov; ++v) {
      for (int64_t q0 = 0; q0 < l.pq; q0 += 8) {
        const int64_t n = std::min<int64_t>(32, p_count - q0 * 4);  // code bytes of each row
        const __m256i live = _mm256_cmpgt_epi8(_mm256_set1_epi8(static_cast<char>(n)), index);
        __m256i r[8];
        for (int i = 0; i < 8; ++i) {
          const int64_t o = v * 8 + i;
          if (o >= g.o) {
            r[i] = _mm256_setzero_si256();
            continue;
          }
          const uint8_t* src = c + o * p_count + q0 * 4;
          alignas(32) uint8_t tail[32] = {};
          if (n < 32) src = static_cast<const uint8_t*>(std::memcpy(tail, src, n));
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
          r[i] = _mm256_and_si256(live, _mm256_sub_epi8(_mm256_add_epi8(x, x), ng));
        }
        __m256i t[8], u[8];
        for (int i = 0; i < 8; i += 2) {
          t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
          t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
          u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
          u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
          u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
          u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
        }
        const int64_t quads = std::min<int64_t>(8, l.pq - q0);
        for (int64_t j = 0; j < quads; ++j) {  // quad j: u[j % 4] and u[j % 4 + 4], one half
          const int k = static_cast<int>(j % 4);
          const __m256i out = j < 4 ? _mm256_permute2x128_si256(u[k], u[k + 4], 0x20)
                                    : _mm256_permute2x128_si256(u[k], u[k + 4], 0x31);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(gq + (v * l.pq + q0 + j) * 32), out);
        }
      }
    }
  }

  // The int16 sums widened (VPMADDWD by 1) into the int32 sums u32: stored on the first fold,
  // added after it; the int16 sums cleared.
  template <int V, int C>
  static void Fold(__m256i (&s16)[V][C], int32_t (*u32)[C][8], bool first) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int v = 0; v < V; ++v) {
      for (int j = 0; j < C; ++j) {
        __m256i* u = reinterpret_cast<__m256i*>(u32[v][j]);
        const __m256i w = _mm256_madd_epi16(s16[v][j], ones);
        _mm256_store_si256(u, first ? w : _mm256_add_epi32(_mm256_load_si256(u), w));
        s16[v][j] = _mm256_setzero_si256();
      }
    }
  }

  template <int V, int C>
  static void Tile(const DirectTileArgs& a) {
    const int64_t fold = FoldQuads(a.g->g_bits, a.g->a_bits);
    switch (a.Mode()) {
      case DirectMode::kS:
        for (int64_t b = a.b0; b < a.b1; ++b) Sample<V, C, DirectMode::kS>(a, b, fold);
        return;
      case DirectMode::kFma:
        for (int64_t b = a.b0; b < a.b1; ++b) Sample<V, C, DirectMode::kFma>(a, b, fold);
        return;
      case DirectMode::kMulAdd:
      case DirectMode::kInt:  // not planned for this ISA (kIntScales)
        for (int64_t b = a.b0; b < a.b1; ++b) Sample<V, C, DirectMode::kMulAdd>(a, b, fold);
        return;
    }
  }

  // Sample b's sums of the tile, then as M says (wgrad_direct.h): stored, or their float64
  // terms added to the tile's sums in L1.
  template <int V, int C, DirectMode M>
  static void Sample(const DirectTileArgs& a, int64_t b, int64_t fold) {
    const int64_t pq = a.pk->l.pq;
    const uint8_t* xs = a.Xs(b);
    const int8_t* gq = a.Gq(b);
    const int64_t* col = a.Col();
    __m256i s16[V][C];
    alignas(32) int32_t u32[V][C][8];  // the int32 sums of the runs folded so far
    DOREFA_UNROLL for (int v = 0; v < V; ++v) {
      DOREFA_UNROLL for (int j = 0; j < C; ++j) s16[v][j] = _mm256_setzero_si256();
    }
    // Runs of `fold` quads, folded after each but the last (a fold inside the quad loop made
    // GCC move the int16 sums through the stack at every quad); the last run's sums are
    // widened in registers below.
    bool folded = false;
    for (int64_t q0 = 0; q0 < pq; q0 += fold) {
      const int64_t q1 = std::min(pq, q0 + fold);
      for (int64_t q = q0; q < q1; ++q) {
        __m256i gv[V];
        DOREFA_UNROLL for (int v = 0; v < V; ++v) gv[v] =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gq + (v * pq + q) * 32));
        DOREFA_UNROLL for (int j = 0; j < C; ++j) {
          int32_t run;
          std::memcpy(&run, xs + col[j] + 4 * q, 4);
          const __m256i xv = _mm256_set1_epi32(run);
          DOREFA_UNROLL for (int v = 0; v < V; ++v) s16[v][j] =
              _mm256_add_epi16(s16[v][j], _mm256_maddubs_epi16(xv, gv[v]));
        }
      }
      if (q1 < pq) {
        Fold<V, C>(s16, u32, !folded);
        folded = true;
      }
    }
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256d scale = _mm256_set1_pd(M == DirectMode::kS ? 0.0 : a.out->scale[b]);
    DOREFA_UNROLL for (int v = 0; v < V; ++v) {
      DOREFA_UNROLL for (int j = 0; j < C; ++j) {
        __m256i s = _mm256_madd_epi16(s16[v][j], ones);
        if (folded)
          s = _mm256_add_epi32(s, _mm256_load_si256(reinterpret_cast<const __m256i*>(u32[v][j])));
        if constexpr (M == DirectMode::kS) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(u32[v][j]), s);
          a.StoreS(b, v, j, u32[v][j]);
        } else {
          double* acc = a.acc + j * kVectors * kLanes + v * 8;
          const __m256d lo = _mm256_cvtepi32_pd(_mm256_castsi256_si128(s));
          const __m256d hi = _mm256_cvtepi32_pd(_mm256_extracti128_si256(s, 1));
          if constexpr (M == DirectMode::kFma) {
            _mm256_storeu_pd(acc, _mm256_fmadd_pd(scale, lo, _mm256_loadu_pd(acc)));
            _mm256_storeu_pd(acc + 4, _mm256_fmadd_pd(scale, hi, _mm256_loadu_pd(acc + 4)));
          } else {
            _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_mul_pd(scale, lo)));
            _mm256_storeu_pd(acc + 4,
                             _mm256_add_pd(_mm256_loadu_pd(acc + 4), _mm256_mul_pd(scale, hi)));
          }
        }
      }
    }
  }
};

struct Avx2Outer {  // 6 channels x 2 vectors of 4 doubles
  static constexpr int kRows = 6, kVecs = 2, kWidth = 4;
  using Vec = __m256d;
  static Vec Zero() { return _mm256_setzero_pd(); }
  static Vec LoadX(const int32_t* p) {
    return _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static Vec Set1(double v) { return _mm256_set1_pd(v); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_pd(a, b, c); }
  static void Store(double* p, Vec v) { _mm256_storeu_pd(p, v); }
};

}  // namespace

uint32_t WeightGradDirectAvx2(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                              const WgradOutput& out, int threads) {
  if (OuterApplies(g, out)) return WeightGradOuterWith<Avx2Outer>(g, c, x, out, threads);
  return WeightGradDirectWith<Avx2Direct>(g, c, x, out, threads);
}

}  // namespace dorefa
