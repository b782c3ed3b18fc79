// Float linear layer (linear_float.h): the portable rows and the driver.
#include "linear_float.h"

#include <cmath>

#include "cpu_features.h"
#include "thread_pool.h"

namespace dorefa {
namespace {

float Dot(const float* x, const float* w, int64_t c) {
  float p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < c; ++i) p[i % 8] = std::fma(x[i], w[i], p[i % 8]);
  return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

void LinearRows(const float* x, const float* w, const float* b, int64_t n, int64_t c, int64_t o,
                int64_t o0, int64_t count, float* y) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = o0; k < o0 + count; ++k) y[i * o + k] = Dot(x + i * c, w + k * c, c) + b[k];
}

}  // namespace

void LinearFloat(const float* x, const float* w, const float* b, int64_t n, int64_t c, int64_t o,
                 float* y, bool vector, int threads) {
  LinearFn rows = &LinearRows;
#ifdef DOREFA_HAVE_X86_KERNELS
  if (vector && (CpuFeatures() & (kAvx2 | kFma)) == (kAvx2 | kFma)) rows = &LinearRowsAvx2;
#else
  (void)vector;
#endif
  const int64_t blocks = (o + kLinearOuts - 1) / kLinearOuts;
  ParallelFor(threads, blocks, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t o0 = blk * kLinearOuts;
      rows(x, w, b, n, c, o, o0, std::min(kLinearOuts, o - o0), y);
    }
  });
}

}  // namespace dorefa
