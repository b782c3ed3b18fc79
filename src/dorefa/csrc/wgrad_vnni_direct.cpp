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

#include "dpbusd.h"
#include "unroll.h"
#include "wgrad.h"
#include "wgrad_digits.h"
#include "wgrad_direct.h"
#include "wgrad_direct_avx512.h"
#include "wgrad_outer.h"

namespace dorefa {
namespace {

struct VnniDirect : Avx512DirectPack {
  static constexpr int kLanes = 16;         // channels per zmm
  static constexpr int kVectors = 2;        // channel vectors per register tile
  static constexpr int kCols = 4;           // columns per register tile
  static constexpr int kChunk = 24;         // columns per work tile (its double sums stay in L1)
  static constexpr bool kIntScales = true;  // RunInt on training's integer scales
  // Packed gradient bytes of a batch block (wgrad_direct.h): the block's gradients are re-read
  // from L2 by the work tile's 6 register tiles (2 zmm loads per 8 VPDPBUSD) at no measured
  // cost, while each block ends with a drain of the tile's int32 sums into the float64 sums:
  // 256 KiB (the whole batch of 128 on svhn's 7x7 and 5x5 maps) ran conv3-conv5 1.07-1.11x
  // faster than L1-sized blocks of 16 KiB (Zen 4, same-process A/B of two -O2 builds; with
  // the in-place VPDPBUSD, the -O3 build 1.05-1.07x).
  static constexpr int64_t kBlockBytes = 262144;

  // Sample b's sums S of the tile: per pixel quad one VPDPBUSD per sum.
  template <int V, int C>
  static inline __attribute__((always_inline)) void Sums(const DirectTileArgs& a, int64_t b,
                                                         __m512i (&s)[V][C]) {
    const int64_t* col = a.Col();
    const int64_t pq = a.pk->l.pq;
    const uint8_t* xs = a.Xs(b);
    const int8_t* gq = a.Gq(b);
    for (int v = 0; v < V; ++v)
      for (int j = 0; j < C; ++j) s[v][j] = _mm512_setzero_si512();
    for (int64_t q = 0; q < pq; ++q) {
      __m512i gv[V];
      for (int v = 0; v < V; ++v) gv[v] = _mm512_loadu_si512(gq + (v * pq + q) * 64);
      for (int j = 0; j < C; ++j) {
        int32_t run;
        std::memcpy(&run, xs + col[j] + 4 * q, 4);
        const __m512i xv = _mm512_set1_epi32(run);
        for (int v = 0; v < V; ++v) DpbusdInPlace(s[v][j], xv, gv[v]);
      }
    }
  }

  template <int V, int C, DirectMode M>
  static void Run(const DirectTileArgs& a) {
    constexpr int64_t kRow = kVectors * kLanes;
    __m512d acc[V][C][2];
    for (int v = 0; v < V; ++v)
      for (int j = 0; j < C; ++j)
        for (int h = 0; h < 2; ++h)
          acc[v][j][h] = M == DirectMode::kS ? _mm512_setzero_pd()
                                             : _mm512_loadu_pd(a.acc + j * kRow + v * 16 + h * 8);
    for (int64_t b = a.b0; b < a.b1; ++b) {
      __m512i s[V][C];
      Sums<V, C>(a, b, s);
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

  // The integer finish (wgrad_digits.h, IntScalePlan): per sample and 16 outputs two
  // VPDPWSSD of S (|S| < 2^15: its low word is S, its high word the sign, times a 0 word)
  // and q_lo, q_hi into int32 sums held in registers, against two conversions and two FMAs;
  // every `flush` samples and at the end of the block they go into the float64 sums in L1.
  template <int V, int C>
  static void RunInt(const DirectTileArgs& a) {
    const int64_t flush = a.pk->int_flush;
    constexpr int64_t kRow = kVectors * kLanes;
    __m512i lo[V][C], hi[V][C];
    auto zero = [&] {
      for (int v = 0; v < V; ++v)
        for (int j = 0; j < C; ++j) lo[v][j] = hi[v][j] = _mm512_setzero_si512();
    };
    auto drain = [&] {  // acc += 4096 hi + lo, exact integers
      const __m512d base = _mm512_set1_pd(4096.0);
      auto add = [&](double* acc, __m256i l, __m256i u) {
        const __m512d sum = _mm512_fmadd_pd(base, _mm512_cvtepi32_pd(u), _mm512_cvtepi32_pd(l));
        _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_loadu_pd(acc), sum));
      };
      for (int v = 0; v < V; ++v)
        for (int j = 0; j < C; ++j) {
          double* acc = a.acc + j * kRow + v * 16;
          // (the extract's immediate written out: unoptimized builds do not unroll a loop)
          add(acc, _mm512_castsi512_si256(lo[v][j]), _mm512_castsi512_si256(hi[v][j]));
          add(acc + 8, _mm512_extracti64x4_epi64(lo[v][j], 1),
              _mm512_extracti64x4_epi64(hi[v][j], 1));
        }
      zero();
    };
    zero();
    int64_t count = 0;
    for (int64_t b = a.b0; b < a.b1; ++b) {
      __m512i s[V][C];
      Sums<V, C>(a, b, s);
      const auto q = static_cast<int32_t>(a.out->scale[b]);
      const __m512i q_lo = _mm512_set1_epi32(q & 4095), q_hi = _mm512_set1_epi32(q >> 12);
      for (int v = 0; v < V; ++v)
        for (int j = 0; j < C; ++j) {
          lo[v][j] = _mm512_dpwssd_epi32(lo[v][j], s[v][j], q_lo);
          hi[v][j] = _mm512_dpwssd_epi32(hi[v][j], s[v][j], q_hi);
        }
      if (++count == flush) drain(), count = 0;
    }
    drain();
  }

  template <int V, int C>
  static void Tile(const DirectTileArgs& a) {
    switch (a.Mode()) {
      case DirectMode::kInt:
        return RunInt<V, C>(a);
      case DirectMode::kS:
        return Run<V, C, DirectMode::kS>(a);
      case DirectMode::kFma:
        return Run<V, C, DirectMode::kFma>(a);
      case DirectMode::kMulAdd:
        return Run<V, C, DirectMode::kMulAdd>(a);
    }
  }
};

// The one-pixel weight gradient by digits (wgrad_digits.h): register tile kRows channels x
// kVecs vectors of 16 columns (8 zmm of int32 sums, 16 of float64 sums); per quad of samples
// kVecs loads, kRows broadcasts and kRows kVecs VPDPBUSD; per digit one conversion and one
// FMA per 8 outputs. (4 x 4 tiles with the float64 sums in L1 measured 13% slower.)
struct VnniDigits {
  static constexpr int kRows = 4, kVecs = 2;

  // Vector kv of digit d's operand: 16 columns (rows of xt, 0 past K) x nq quads of samples,
  // d_b X_b[k] as [quad][16 lanes][4 samples] (0 past N), by 16 x 16 transposes of quads.
  static void PackColumns(const uint8_t* xt, int64_t k_count, int64_t n, const uint8_t* d,
                          int64_t kv, int64_t nq, uint8_t* dst) {
    for (int64_t q0 = 0; q0 < nq; q0 += 16) {
      const __mmask64 m = ByteSpan(q0 * 4, n);
      const __m512i dv = _mm512_maskz_loadu_epi8(m, d + q0 * 4);
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t k = kv * 16 + i;
        r[i] = k < k_count ? MulBytes(_mm512_maskz_loadu_epi8(m, xt + k * n + q0 * 4), dv)
                           : _mm512_setzero_si512();
      }
      Transpose16Dwords(r);
      const int64_t count = std::min<int64_t>(16, nq - q0);
      for (int64_t j = 0; j < count; ++j) _mm512_storeu_si512(dst + (q0 + j) * 64, r[j]);
    }
  }
  // dW rows o0 .. o0 + rows - 1, columns 16 kv0 .. 16 kv0 + cols - 1: sum_j weight[j] T_j over
  // gt, the gradient factors [O][nq 4] (s8, 0 past N), and xv, the packed operands of all
  // digits; written as out.Write would (divided, rounded to float32 in dw32 mode), from the
  // registers.
  static void Tile(const int8_t* gt, const uint8_t* xv, int64_t nq, int64_t digit_bytes, int digits,
                   const double* weight, int64_t o0, int64_t kv0, int64_t rows, int64_t cols,
                   int64_t k_count, const WgradOutput& out) {
    __m512d acc[kRows][kVecs][2];
    DOREFA_UNROLL for (int r = 0; r < kRows; ++r) {
      DOREFA_UNROLL for (int v = 0; v < kVecs; ++v) acc[r][v][0] = acc[r][v][1] =
          _mm512_setzero_pd();
    }
    const int8_t* grow = gt + o0 * nq * 4;
    for (int j = 0; j < digits; ++j) {
      const uint8_t* xj = xv + j * digit_bytes + kv0 * nq * 64;
      __m512i s[kRows][kVecs];
      DOREFA_UNROLL for (int r = 0; r < kRows; ++r) {
        DOREFA_UNROLL for (int v = 0; v < kVecs; ++v) s[r][v] = _mm512_setzero_si512();
      }
      for (int64_t q = 0; q < nq; ++q) {
        __m512i xq[kVecs];
        DOREFA_UNROLL for (int v = 0; v < kVecs; ++v) xq[v] =
            _mm512_loadu_si512(xj + (v * nq + q) * 64);
        DOREFA_UNROLL for (int r = 0; r < kRows; ++r) {
          int32_t run;
          std::memcpy(&run, grow + r * nq * 4 + 4 * q, 4);
          const __m512i gb = _mm512_set1_epi32(run);
          DOREFA_UNROLL for (int v = 0; v < kVecs; ++v) DpbusdInPlace(s[r][v], xq[v], gb);
        }
      }
      const __m512d w = _mm512_set1_pd(weight[j]);  // w T_j and the sums: exact integers
      DOREFA_UNROLL for (int r = 0; r < kRows; ++r) {
        DOREFA_UNROLL for (int v = 0; v < kVecs; ++v) {
          const __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(s[r][v]));
          const __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(s[r][v], 1));
          acc[r][v][0] = _mm512_fmadd_pd(w, lo, acc[r][v][0]);
          acc[r][v][1] = _mm512_fmadd_pd(w, hi, acc[r][v][1]);
        }
      }
    }
    const __m512d divisor = _mm512_set1_pd(out.divisor);
    DOREFA_UNROLL for (int r = 0; r < kRows; ++r) {
      if (r >= rows) break;
      DOREFA_UNROLL for (int v = 0; v < kVecs; ++v) {
        DOREFA_UNROLL for (int h = 0; h < 2; ++h) {
          const int64_t col = v * 16 + h * 8, index = (o0 + r) * k_count + kv0 * 16 + col;
          if (col >= cols) continue;
          const auto m = static_cast<__mmask8>(cols - col >= 8 ? 0xFF : (1u << (cols - col)) - 1);
          if (out.dw32 != nullptr) {  // float(v / divisor), as WgradOutput::Write
            const __m256 f = _mm512_cvtpd_ps(_mm512_div_pd(acc[r][v][h], divisor));
            _mm256_mask_storeu_ps(out.dw32 + index, m, f);
          } else {
            _mm512_mask_storeu_pd(out.dw + index, m, acc[r][v][h]);
          }
        }
      }
    }
  }
};

uint32_t WeightGradDigitsVnni(const WgradGeom& g, const DigitPlan& plan, const uint8_t* c,
                              const uint8_t* x, const WgradOutput& out, int threads) {
  using T = VnniDigits;
  const int64_t n = g.n, nq = (n + 3) / 4, k_count = g.K();
  const int64_t kv_count = ((k_count + 15) / 16 + T::kVecs - 1) / T::kVecs * T::kVecs;
  const int64_t o_rows = (g.o + T::kRows - 1) / T::kRows * T::kRows;
  const int64_t digit_bytes = kv_count * nq * 64;
  PoolScratch<uint8_t> xt(static_cast<size_t>(k_count * n));
  OnePixelColumns(g, x, xt.data());
  const std::vector<uint8_t> d = ScaleDigits(g, plan, out);
  PoolScratch<uint8_t> xv(static_cast<size_t>(plan.digits * digit_bytes));
  ParallelForOrThrow(threads, plan.digits * kv_count, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t j = i / kv_count, kv = i % kv_count;
      T::PackColumns(xt.data(), k_count, n, d.data() + j * n, kv, nq,
                     xv.data() + j * digit_bytes + kv * nq * 64);
    }
  });
  // g = 2c - n_g as [O rows][nq 4] (0 past N and past O)
  PoolScratch<uint8_t> ct(static_cast<size_t>(g.o * n));
  TransposeBytes(c, n, g.o, ct.data());
  PoolScratch<int8_t> gt(static_cast<size_t>(o_rows * nq * 4));
  const int ng = (1 << g.g_bits) - 1;
  for (int64_t o = 0; o < o_rows; ++o)
    for (int64_t b = 0; b < nq * 4; ++b)
      gt.data()[o * nq * 4 + b] =
          o < g.o && b < n ? static_cast<int8_t>(2 * ct.data()[o * n + b] - ng) : 0;
  std::vector<double> weight(static_cast<size_t>(plan.digits));
  for (int j = 0; j < plan.digits; ++j)
    weight[static_cast<size_t>(j)] = j == 0 ? 1.0 : weight[j - 1] * static_cast<double>(plan.base);
  constexpr int64_t kWidth = T::kVecs * 16;
  ParallelForOrThrow(threads, kv_count / T::kVecs, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t kv0 = t * T::kVecs, cols = std::min(kWidth, k_count - kv0 * 16);
      for (int64_t o0 = 0; o0 < o_rows; o0 += T::kRows)
        T::Tile(gt.data(), xv.data(), nq, digit_bytes, plan.digits, weight.data(), o0, kv0,
                std::min<int64_t>(T::kRows, g.o - o0), cols, k_count, out);
    }
  });
  return uint32_t{OrBytes(c, n * g.o)} | uint32_t{OrBytes(x, n * g.c * g.h * g.w)} << 8;
}

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
  const DigitPlan plan = PlanDigits(g, out);
  if (plan.digits > 0) return WeightGradDigitsVnni(g, plan, c, x, out, threads);
  if (OuterApplies(g, out)) return WeightGradOuterWith<Avx512Outer>(g, c, x, out, threads);
  return WeightGradDirectWith<VnniDirect>(g, c, x, out, threads);
}

}  // namespace dorefa
