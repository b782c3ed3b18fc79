// Integer training's float finishing passes (input_grad.h). The loops are written for the
// compiler to vectorize and compiled for AVX-512, AVX2 and the baseline (the CPU's best taken
// at run time, cpu_features.h): the same IEEE steps in every copy (int32 -> double exact, every
// product and difference of D an exact integer, one rounding in the scale's product, one to
// float32), so every copy gives the same bits. (Built for the baseline alone, SSE2 with two
// doubles a vector, the input gradient's finish of svhn's conv1 at batch 128 took 1.5 ms.)
#include "input_grad.h"

#include "cpu_features.h"
#include "thread_pool.h"

namespace dorefa {
namespace {

// dx[i] for i in [i0, i1) of sample row a (k1's), k2 shared.
inline __attribute__((always_inline)) void FinishBody(const int32_t* a, const int32_t* k2,
                                                      int64_t i0, int64_t i1, double ng, double s,
                                                      float* out) {
  // D in double, exactly: |2 K1| < 2^32 and |n_g K2| < 2^39 are exact, and so is their
  // difference (< 2^40); int32 -> double converts in vectors, int64 -> double did not.
  for (int64_t i = i0; i < i1; ++i) {
    const double d = 2.0 * static_cast<double>(a[i]) - ng * static_cast<double>(k2[i]);
    out[i] = static_cast<float>(s * d);
  }
}

inline __attribute__((always_inline)) void ScaleBody(const int32_t* d, int64_t i0, int64_t i1,
                                                     double scale, float* y) {
  for (int64_t i = i0; i < i1; ++i) y[i] = static_cast<float>(scale * static_cast<double>(d[i]));
}

using FinishFn = void (*)(const int32_t*, const int32_t*, int64_t, int64_t, double, double, float*);
using ScaleFn = void (*)(const int32_t*, int64_t, int64_t, double, float*);

#define DOREFA_FINISH_COPIES(SUFFIX, TARGET)                                                    \
  TARGET void Finish##SUFFIX(const int32_t* a, const int32_t* k2, int64_t i0, int64_t i1,       \
                             double ng, double s, float* out) {                                 \
    FinishBody(a, k2, i0, i1, ng, s, out);                                                      \
  }                                                                                             \
  TARGET void Scale##SUFFIX(const int32_t* d, int64_t i0, int64_t i1, double scale, float* y) { \
    ScaleBody(d, i0, i1, scale, y);                                                             \
  }

DOREFA_DEFINE_COPIES(DOREFA_FINISH_COPIES)
#undef DOREFA_FINISH_COPIES

}  // namespace

void InputGradFinish(const int32_t* k1, const int32_t* k2, int64_t n, int64_t chw, int64_t ng,
                     const double* scale, float* dx, int threads) {
  constexpr int64_t kChunk = 4096;  // elements per work item
  const int64_t chunks = (chw + kChunk - 1) / kChunk;
  const FinishFn fn = DOREFA_PICK_COPY(Finish);
  ParallelFor(threads, n * chunks, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, i0 = item % chunks * kChunk;
      const int64_t i1 = i0 + kChunk < chw ? i0 + kChunk : chw;
      fn(k1 + b * chw, k2, i0, i1, static_cast<double>(ng), scale[b], dx + b * chw);
    }
  });
}

void ScaleToFloat(const int32_t* d, int64_t len, double scale, float* y, int threads) {
  constexpr int64_t kChunk = 16384;  // elements per work item
  const int64_t chunks = (len + kChunk - 1) / kChunk;
  const ScaleFn fn = DOREFA_PICK_COPY(Scale);
  ParallelFor(len > 4 * kChunk ? threads : 1, chunks, [&](int64_t begin, int64_t end) {
    fn(d, begin * kChunk, end * kChunk < len ? end * kChunk : len, scale, y);
  });
}

}  // namespace dorefa
