// Integer training's float finishing passes (input_grad.h).
#include "input_grad.h"

#include "thread_pool.h"

namespace dorefa {

void InputGradFinish(const int32_t* k1, const int32_t* k2, int64_t n, int64_t chw, int64_t ng,
                     const double* scale, float* dx, int threads) {
  constexpr int64_t kChunk = 4096;  // elements per work item
  const int64_t chunks = (chw + kChunk - 1) / kChunk;
  ParallelFor(threads, n * chunks, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, i0 = item % chunks * kChunk;
      const int64_t i1 = i0 + kChunk < chw ? i0 + kChunk : chw;
      const int32_t* a = k1 + b * chw;
      float* out = dx + b * chw;
      const double s = scale[b];
      // D in double, exactly: |2 K1| < 2^32 and |n_g K2| < 2^39 are exact, and so is their
      // difference (< 2^40); int32 -> double converts in vectors, int64 -> double did not.
      const double two = 2.0, g = static_cast<double>(ng);
      for (int64_t i = i0; i < i1; ++i) {
        const double d = two * static_cast<double>(a[i]) - g * static_cast<double>(k2[i]);
        out[i] = static_cast<float>(s * d);
      }
    }
  });
}

void ScaleToFloat(const int32_t* d, int64_t len, double scale, float* y, int threads) {
  constexpr int64_t kChunk = 16384;  // elements per work item
  const int64_t chunks = (len + kChunk - 1) / kChunk;
  ParallelFor(len > 4 * kChunk ? threads : 1, chunks, [&](int64_t begin, int64_t end) {
    const int64_t i1 = end * kChunk < len ? end * kChunk : len;
    for (int64_t i = begin * kChunk; i < i1; ++i)
      y[i] = static_cast<float>(scale * static_cast<double>(d[i]));
  });
}

}  // namespace dorefa
