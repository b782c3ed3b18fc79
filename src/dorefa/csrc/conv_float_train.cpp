// The float first layer's training products (conv_float_train.h) on AVX-512.
//
// Pixels flat, 16 to a vector. Per sample and input channel, KW shifted copies of the padded
// input with the output's row pitch, X_kx[r OW + x] = xp[r, x + kx] (r < OH + KH - 1), put
// every tap at a constant distance from the flat index: tap (ky, kx) of pixel p reads
// X_kx[p + ky OW].
//
// Forward: per pixel vector the KH KW tap vectors of an input channel in registers, then per
// output channel KH KW FMAs with its weights broadcast and one full-vector store into its
// plane (channels after the first add to what the one before stored). Samples split over the
// threads. svhn's 1->48 5x5 at batch 128, Zen 4, one thread: 4.6 ms (12.4 M FMAs, 3.4 ms at
// one a cycle; the rest not measured apart: it stores 32 MB), the runtime's conv_float 9.7 ms.
//
// Weight gradient: turned around, vector q of copy kx meets dy at p = q - ky OW for each ky:
// per q, KW copy loads and KH dy loads (dy read in place, its vectors that leave the plane
// masked) feed KH KW FMAs into as many lane sums, all in registers (25 + 5 + 1 zmm at 5x5).
// The ceiling is the FMAs: one zmm a cycle on Zen 4 (two 256-bit pipes), 2 on Sapphire
// Rapids; svhn's layer at batch 128 has 81 + 9 vectors a sample and channel, 13.8 M FMAs,
// 3.8 ms at 3.67 GHz. Measured on Zen 4, one thread: 4.85 ms (torch's conv2d_weight 8.3 ms
// and the bias's dy.sum 1.7 ms); copying dy into a zero-padded buffer first cost 2.6 ms of
// DRAM reads not overlapped with the FMAs. Order: the samples outer (a sample's copies stay
// in L1 across the output channels), the output channels split over the threads, each
// channel's lane sums kept in L1 between samples; per lane the products are added sample by
// sample, vector by vector, and at the end the 16 lanes in one fixed order: the same floats
// for any thread count (the forward's sums are per output element: any split gives them).
#include "conv_float_train.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "thread_pool.h"
#include "unroll.h"

namespace dorefa {
namespace {

constexpr int kLanes = 16;
constexpr int64_t kAhead = 16 * kLanes;  // dy floats prefetched ahead (16 lines)

#ifdef DOREFA_HAVE_X86_KERNELS
#define DOREFA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

// The lanes i < 16 with 0 <= p + i < n, as a mask.
inline uint32_t LaneMask(int64_t p, int64_t n) {
  const int64_t lo = std::max<int64_t>(0, -p), hi = std::min<int64_t>(16, n - p);
  return lo >= hi ? 0u : ((1u << hi) - 1) & ~((1u << lo) - 1);
}

// Floats from one shifted copy to the next: the copy (OH + KH - 1 rows of OW) and kLanes
// zeros, so the last vector of a copy reads up to kLanes - 1 floats past it.
inline int64_t CopyStride(const FloatTrainGeom& g) { return (g.oh + g.kh - 1) * g.ow + kLanes; }

// The KW shifted copies of sample b's C padded input planes, each followed by kLanes zeros:
// copy (c, kx) at dst + (c KW + kx) stride holds X[r OW + x] = xp[b, c, r, x + kx] for
// r < OH + KH - 1, zero outside the input.
void ShiftedCopies(const FloatTrainGeom& g, const float* x, int64_t b, int64_t stride, float* dst) {
  const int64_t rows = g.oh + g.kh - 1;
  for (int64_t c = 0; c < g.c; ++c) {
    const float* src = x + (b * g.c + c) * g.h * g.w;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      float* plane = dst + (c * g.kw + kx) * stride;
      // output columns whose input column x + kx - pad is inside [0, w)
      const int64_t lo = std::clamp<int64_t>(g.pad - kx, 0, g.ow),
                    hi = std::clamp<int64_t>(g.w + g.pad - kx, lo, g.ow);
      for (int64_t r = 0; r < rows; ++r) {
        float* row = plane + r * g.ow;
        const int64_t iy = r - g.pad;
        if (iy < 0 || iy >= g.h || lo == hi) {
          std::fill(row, row + g.ow, 0.0f);
          continue;
        }
        std::fill(row, row + lo, 0.0f);
        std::memcpy(row + lo, src + iy * g.w + lo + kx - g.pad,
                    static_cast<size_t>(hi - lo) * sizeof(float));
        std::fill(row + hi, row + g.ow, 0.0f);
      }
    }
  }
}

// The KH dy vectors of copy vector q: row ky's at pixel p = q - ky OW (kEdge: lanes outside
// [0, pixels) read as 0, never loaded).
template <int KH, bool kEdge>
DOREFA_AVX512 inline __attribute__((always_inline)) void DyRows(const float* d, int64_t q,
                                                                int64_t ow, int64_t pixels,
                                                                __m512 (&dv)[KH]) {
  DOREFA_UNROLL for (int ky = 0; ky < KH; ++ky) {
    const int64_t p = q - ky * ow;
    if constexpr (kEdge) {
      const __mmask16 m = static_cast<__mmask16>(LaneMask(p, pixels));
      dv[ky] = _mm512_maskz_loadu_ps(m, d + p);
    } else {
      dv[ky] = _mm512_loadu_ps(d + p);
    }
  }
}

// One sample's products for output channel o, input channel c: lane sums acc[KH KW] (and the
// bias's, bias != null) updated in place. xs: channel c's copies, `stride` apart; d: dy[b, o].
// Per vector q of a copy's flat index, tap (ky, kx) meets pixel p = q - ky OW: one load of
// copy kx serves the KH rows of taps, one load of dy at p each kx of them. dy is read in
// place (the vectors whose pixels all exist unmasked, the next lines prefetched).
template <int KH, int KW>
DOREFA_AVX512 void SampleSums(const FloatTrainGeom& g, const float* xs, int64_t stride,
                              const float* d, float* acc, float* bias) {
  constexpr int kTaps = KH * KW;
  const int64_t ow = g.ow, pixels = g.oh * ow, flat = pixels + (KH - 1) * ow;
  __m512 a[kTaps];
  DOREFA_UNROLL for (int t = 0; t < kTaps; ++t) a[t] = _mm512_loadu_ps(acc + t * kLanes);
  __m512 s = bias != nullptr ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  auto step = [&](int64_t q, const __m512(&dv)[KH])
                  __attribute__((always_inline, target("avx512f"))) {
                    DOREFA_UNROLL for (int kx = 0; kx < KW; ++kx) {
                      const __m512 xv = _mm512_loadu_ps(xs + kx * stride + q);
                      DOREFA_UNROLL for (int ky = 0; ky < KH; ++ky) a[ky * KW + kx] =
                          _mm512_fmadd_ps(dv[ky], xv, a[ky * KW + kx]);
                    }
                    s = _mm512_add_ps(s, dv[0]);
                  };
  // q whose KH vectors lie inside dy: q >= (KH - 1) OW and q + kLanes <= pixels
  const int64_t body0 = (KH - 1) * ow, body1 = pixels - kLanes;
  int64_t q = 0;
  for (; q < flat; q += kLanes) {
    __m512 dv[KH];
    if (q >= body0 && q <= body1) {
      _mm_prefetch(reinterpret_cast<const char*>(d + q + kAhead), _MM_HINT_T0);
      DyRows<KH, false>(d, q, ow, pixels, dv);
    } else {
      DyRows<KH, true>(d, q, ow, pixels, dv);
    }
    step(q, dv);
  }
  DOREFA_UNROLL for (int t = 0; t < kTaps; ++t) _mm512_storeu_ps(acc + t * kLanes, a[t]);
  if (bias != nullptr) _mm512_storeu_ps(bias, s);
}

using SampleFn = void (*)(const FloatTrainGeom&, const float*, int64_t, const float*, float*,
                          float*);

DOREFA_AVX512 float AddLanes(const float* lanes) {
  return _mm512_reduce_add_ps(_mm512_loadu_ps(lanes));
}

// Forward, one sample's pixels [16 q, 16 q + 16) of channels [o0, o1): the taps' copy vectors
// of input channel c in registers, then per output channel its KH KW weights broadcast into
// FMAs, the sum of channels c < this one (or the bias) from y. The copies' slack covers the
// last vector's lanes past the map; its stores are masked.
template <int KH, int KW>
DOREFA_AVX512 void ForwardSample(const FloatTrainGeom& g, const float* xs, int64_t stride,
                                 const float* w, const float* b, float* y) {
  constexpr int kTaps = KH * KW;
  const int64_t ow = g.ow, pixels = g.oh * ow;
  for (int64_t q = 0; q < pixels; q += kLanes) {
    const auto m = static_cast<__mmask16>(LaneMask(q, pixels));
    for (int64_t c = 0; c < g.c; ++c) {
      __m512 xv[kTaps];
      DOREFA_UNROLL for (int kx = 0; kx < KW; ++kx) {
        DOREFA_UNROLL for (int ky = 0; ky < KH; ++ky) xv[ky * KW + kx] =
            _mm512_loadu_ps(xs + (c * KW + kx) * stride + q + ky * ow);
      }
      for (int64_t o = 0; o < g.o; ++o) {
        float* out = y + o * pixels + q;
        __m512 acc = c == 0 ? _mm512_set1_ps(b[o]) : _mm512_maskz_loadu_ps(m, out);
        const float* wo = w + (o * g.c + c) * kTaps;
        DOREFA_UNROLL for (int t = 0; t < kTaps; ++t) acc =
            _mm512_fmadd_ps(xv[t], _mm512_set1_ps(wo[t]), acc);
        _mm512_mask_storeu_ps(out, m, acc);
      }
    }
  }
}

using ForwardFn = void (*)(const FloatTrainGeom&, const float*, int64_t, const float*, const float*,
                           float*);

void ForwardAvx512(const FloatTrainGeom& g, const float* x, const float* w, const float* b,
                   float* y, int threads) {
  const ForwardFn fn = g.kh == 5 ? &ForwardSample<5, 5> : &ForwardSample<3, 3>;
  const int64_t stride = CopyStride(g), pixels = g.oh * g.ow;
  ParallelForOrThrow(threads, g.n, [&](int64_t b0, int64_t b1) {
    std::vector<float> xs(static_cast<size_t>(g.c * g.kw * stride), 0.0f);
    for (int64_t n = b0; n < b1; ++n) {
      ShiftedCopies(g, x, n, stride, xs.data());
      fn(g, xs.data(), stride, w, b, y + n * g.o * pixels);
    }
  });
}

void WeightGradAvx512(const FloatTrainGeom& g, const float* x, const float* dy, float* dw,
                      float* db, int threads) {
  const SampleFn sums = g.kh == 5 ? &SampleSums<5, 5> : &SampleSums<3, 3>;
  const int64_t taps = g.kh * g.kw, pixels = g.oh * g.ow, stride = CopyStride(g);
  ParallelForOrThrow(threads, g.o, [&](int64_t o0, int64_t o1) {
    std::vector<float> xs(static_cast<size_t>(g.c * g.kw * stride), 0.0f);
    std::vector<float> acc(static_cast<size_t>((o1 - o0) * g.c * taps * kLanes), 0.0f);
    std::vector<float> bias(static_cast<size_t>((o1 - o0) * kLanes), 0.0f);
    for (int64_t b = 0; b < g.n; ++b) {
      ShiftedCopies(g, x, b, stride, xs.data());
      for (int64_t o = o0; o < o1; ++o) {
        const float* d = dy + (b * g.o + o) * pixels;
        for (int64_t c = 0; c < g.c; ++c) {
          float* bs = db != nullptr && c == 0 ? bias.data() + (o - o0) * kLanes : nullptr;
          sums(g, xs.data() + c * g.kw * stride, stride, d,
               acc.data() + ((o - o0) * g.c + c) * taps * kLanes, bs);
        }
      }
    }
    for (int64_t o = o0; o < o1; ++o) {
      for (int64_t k = 0; k < g.c * taps; ++k)
        dw[o * g.c * taps + k] = AddLanes(acc.data() + ((o - o0) * g.c * taps + k) * kLanes);
      if (db != nullptr) db[o] = AddLanes(bias.data() + (o - o0) * kLanes);
    }
  });
}
#endif

}  // namespace

bool ConvFloatTrainFits(const FloatTrainGeom& g) {
#ifdef DOREFA_HAVE_X86_KERNELS
  const uint32_t f = CpuFeatures();
  const bool avx512 = (f & kAvx512F) && (f & kAvx512Bw) && (f & kAvx512Vl);
  const bool shape = (g.kh == 3 || g.kh == 5) && g.kw == g.kh && g.c >= 1 && g.c <= 4;
  return avx512 && shape && g.n >= 1 && g.o >= 1 && g.oh >= 1 && g.ow >= 1;
#else
  (void)g;
  return false;
#endif
}

void ConvFloatTrainForward(const FloatTrainGeom& g, const float* x, const float* w, const float* b,
                           float* y, int threads) {
#ifdef DOREFA_HAVE_X86_KERNELS
  ForwardAvx512(g, x, w, b, y, threads);
#else
  (void)g, (void)x, (void)w, (void)b, (void)y, (void)threads;
#endif
}

void ConvFloatWeightGrad(const FloatTrainGeom& g, const float* x, const float* dy, float* dw,
                         float* db, int threads) {
#ifdef DOREFA_HAVE_X86_KERNELS
  WeightGradAvx512(g, x, dy, dw, db, threads);
#else
  (void)g, (void)x, (void)dy, (void)dw, (void)db, (void)threads;
#endif
}

}  // namespace dorefa
