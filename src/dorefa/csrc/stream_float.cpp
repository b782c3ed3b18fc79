// The float stream's elementwise operations (stream_float.h has the spec): loops the compiler
// vectorizes, SSE2 for the quantization and 2x2 average pools; built with -ffp-contract=off
// (CMakeLists.txt).
#include "stream_float.h"

#include <algorithm>
#include <functional>

#include "cpu_features.h"
#include "thread_pool.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace dorefa {
namespace {

// Elements a thread takes at least (fewer threads for small arrays: waking one costs more; 32 K
// before 2026-12-05, lowered with bitconv.cpp's threshold: ResNet-18's deep BatchNorms now split).
constexpr int64_t kMinPerThread = 8 << 10;

// Up to `threads` shares of `items` items of `size` elements each, at least kMinPerThread
// elements a share.
void Split(int threads, int64_t items, int64_t size,
           const std::function<void(int64_t, int64_t)>& body) {
  const int64_t most = std::max<int64_t>(1, items * size / kMinPerThread);
  ParallelFor(static_cast<int>(std::min<int64_t>(threads, most)), items, body);
}

// NumPy's clip(v, 0, 1): v unless it is below 0 or above 1 (NaN and -0 kept).
inline float Clip01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

// A per-channel value seen from a run of elements (PlaneRuns): one channel's (Same) or one per
// element (Each).
struct Same {
  float v;
  float operator[](int64_t) const { return v; }
};
struct Each {
  const float* v;
  float operator[](int64_t i) const { return v[i]; }
};

// Planes [first, last) of an (N, C, HW) array as runs of elements: op(e, m, a, b) for elements
// e .. e + m - 1, a[i] and b[i] the per-channel values (alpha, beta) of element e + i's channel.
// hw > 1: a run per plane (Same values); hw == 1 ((N, C) values, e.g. a layer with a 1 x 1
// output): a run along an image's channels (Each), so the loop vectorizes over the channels
// instead of paying a plane's setup for every value (32 x 512 values: 36 -> 7 us a call).
template <class Op>
void PlaneRuns(int64_t first, int64_t last, int64_t c, int64_t hw, const float* alpha,
               const float* beta, const Op& op) {
  if (hw == 1) {
    for (int64_t p = first; p < last;) {
      const int64_t ch = p % c, m = std::min(c - ch, last - p);
      op(p, m, Each{alpha + ch}, Each{beta + ch});
      p += m;
    }
    return;
  }
  int64_t ch = first % c;
  for (int64_t p = first; p < last; ++p) {
    op(p * hw, hw, Same{alpha[ch]}, Same{beta[ch]});
    if (++ch == c) ch = 0;
  }
}

void QuantizeRange(const float* x, int64_t count, int bits, uint8_t* codes) {
  const auto n = static_cast<float>((1 << bits) - 1);
  constexpr float kRound = 8388608.0f;  // 2^23
  int64_t i = 0;
#if defined(__SSE2__)
  // The same operations on 4 lanes (the compiler leaves the loop below scalar and branchy).
  const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
  const __m128 vn = _mm_set1_ps(n), round = _mm_set1_ps(kRound);
  for (; i + 16 <= count; i += 16) {
    __m128i q[4];
    for (int k = 0; k < 4; ++k) {
      __m128 v = _mm_loadu_ps(x + i + 4 * k);
      v = _mm_andnot_ps(_mm_cmplt_ps(v, zero), v);  // v < 0 -> +0
      const __m128 above = _mm_cmpgt_ps(v, one);
      v = _mm_or_ps(_mm_andnot_ps(above, v), _mm_and_ps(above, one));
      v = _mm_mul_ps(v, vn);
      v = _mm_and_ps(_mm_cmpord_ps(v, v), v);  // NaN -> 0
      q[k] = _mm_cvttps_epi32(_mm_sub_ps(_mm_add_ps(v, round), round));
    }
    const __m128i bytes =
        _mm_packus_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), bytes);
  }
#endif
  for (; i < count; ++i) {
    float v = Clip01(x[i]) * n;
    v = v == v ? v : 0.0f;  // NaN -> code 0
    codes[i] = static_cast<uint8_t>(static_cast<int32_t>((v + kRound) - kRound));
  }
}

using QuantizeRangeFn = void (*)(const float*, int64_t, int, uint8_t*);

// The rows QuantizeFloat runs (stream_float.h).
QuantizeRangeFn QuantizeRows(bool vector) {
#ifdef DOREFA_HAVE_X86_KERNELS
  constexpr uint32_t kNeeds = kAvx512F | kAvx512Bw | kAvx512Vl;  // the masked byte store
  if (vector && (CpuFeatures() & kNeeds) == kNeeds) return &QuantizeRangeAvx512;
#endif
  (void)vector;
  return &QuantizeRange;
}

}  // namespace

void QuantizeFloat(const float* x, int64_t count, int bits, uint8_t* codes, bool vector,
                   int threads) {
  constexpr int64_t kChunk = 4096;
  const QuantizeRangeFn rows = QuantizeRows(vector);
  Split(threads, (count + kChunk - 1) / kChunk, kChunk, [&](int64_t first, int64_t last) {
    const int64_t begin = first * kChunk, end = std::min(count, last * kChunk);
    rows(x + begin, end - begin, bits, codes + begin);
  });
}

void AffineFloat(const float* x, int64_t n, int64_t c, int64_t hw, const float* scale,
                 const float* shift, float* y, int threads) {
  Split(threads, n * c, hw, [&](int64_t first, int64_t last) {
    PlaneRuns(first, last, c, hw, scale, shift, [&](int64_t e, int64_t m, auto a, auto b) {
      for (int64_t i = 0; i < m; ++i) y[e + i] = x[e + i] * a[i] + b[i];
    });
  });
}

void ScaleIntFloat(const int32_t* d, int64_t n, int64_t c, int64_t hw, const float* alpha,
                   const float* beta, bool clip, const float* residual, float* y, int threads) {
  Split(threads, n * c, hw, [&](int64_t first, int64_t last) {
    PlaneRuns(first, last, c, hw, alpha, beta, [&](int64_t e, int64_t m, auto a, auto b) {
      const int32_t* src = d + e;
      float* dst = y + e;
      if (clip) {
        for (int64_t i = 0; i < m; ++i) dst[i] = Clip01(static_cast<float>(src[i]) * a[i] + b[i]);
      } else if (residual != nullptr) {
        const float* r = residual + e;
        for (int64_t i = 0; i < m; ++i) dst[i] = (static_cast<float>(src[i]) * a[i] + b[i]) + r[i];
      } else {
        for (int64_t i = 0; i < m; ++i) dst[i] = static_cast<float>(src[i]) * a[i] + b[i];
      }
    });
  });
}

void AffineQuantizeFloat(const float* x, int64_t n, int64_t c, int64_t hw, const float* scale,
                         const float* shift, int bits, uint8_t* codes, bool vector, int threads) {
  constexpr int64_t kChunk = 1024;  // the affine values of a chunk, then its codes (in L1)
  const QuantizeRangeFn rows = QuantizeRows(vector);
  Split(threads, n * c, hw, [&](int64_t first, int64_t last) {
    float y[kChunk];
    PlaneRuns(first, last, c, hw, scale, shift, [&](int64_t e, int64_t m, auto a, auto b) {
      for (int64_t i0 = 0; i0 < m; i0 += kChunk) {
        const int64_t k = std::min(kChunk, m - i0);
        const float* src = x + e + i0;
        for (int64_t i = 0; i < k; ++i) y[i] = src[i] * a[i0 + i] + b[i0 + i];
        rows(y, k, bits, codes + e + i0);
      }
    });
  });
}

// A padding tap adds +0, which changes no sum: a sum from +0 is never -0 (x + -x is +0 when
// rounding to nearest), and s + 0 = s for every other float, NaN and inf included. So only the
// taps inside the image are added, over each tap's range of output columns, no test per tap.
void AvgPoolFloat(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t s,
                  int64_t p, float* y, int threads) {
  const int64_t oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  const auto area = static_cast<float>(k * k);
  Split(threads, n * c, h * w, [&](int64_t first, int64_t last) {
    for (int64_t nc = first; nc < last; ++nc) {
      const float* src = x + nc * h * w;
      for (int64_t oy = 0; oy < oh; ++oy) {
        float* __restrict__ out = y + (nc * oh + oy) * ow;
        int64_t done = 0;  // columns finished by the vector case
#if defined(__SSE2__)
        if (k == 2 && s == 2 && p == 0) {  // 4 outputs from 8 columns of 2 rows, the same adds
          const float* r0 = src + 2 * oy * w;
          const float* r1 = r0 + w;
          const __m128 a = _mm_set1_ps(area);
          for (; done + 4 <= ow; done += 4) {
            const __m128 u0 = _mm_loadu_ps(r0 + 2 * done), u1 = _mm_loadu_ps(r0 + 2 * done + 4);
            const __m128 v0 = _mm_loadu_ps(r1 + 2 * done), v1 = _mm_loadu_ps(r1 + 2 * done + 4);
            __m128 sum = _mm_add_ps(_mm_setzero_ps(), _mm_shuffle_ps(u0, u1, 0x88));  // + x_00
            sum = _mm_add_ps(sum, _mm_shuffle_ps(u0, u1, 0xDD));                      // + x_01
            sum = _mm_add_ps(sum, _mm_shuffle_ps(v0, v1, 0x88));                      // + x_10
            sum = _mm_add_ps(sum, _mm_shuffle_ps(v0, v1, 0xDD));                      // + x_11
            _mm_storeu_ps(out + done, _mm_div_ps(sum, a));
          }
        }
#endif
        for (int64_t ox = done; ox < ow; ++ox) out[ox] = 0.0f;
        for (int64_t i = 0; i < k; ++i) {
          const int64_t iy = oy * s + i - p;
          if (iy < 0 || iy >= h) continue;
          for (int64_t j = 0; j < k; ++j) {
            // ox with 0 <= ox * s + j - p < w
            const int64_t lo = std::max<int64_t>(0, (p - j + s - 1) / s);
            const int64_t last = w - 1 + p - j;  // ox * s <= last; none when it is < 0
            const int64_t hi = last < 0 ? 0 : std::min<int64_t>(ow, last / s + 1);
            const float* __restrict__ r = src + iy * w;  // column ox * s + j - p of row iy
            for (int64_t ox = std::max(lo, done); ox < hi; ++ox) out[ox] += r[ox * s + j - p];
          }
        }
        for (int64_t ox = done; ox < ow; ++ox) out[ox] /= area;
      }
    }
  });
}

}  // namespace dorefa
