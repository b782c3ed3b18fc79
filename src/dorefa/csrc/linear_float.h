// A float linear layer, y[n, o] = dot(x[n], w[o]) + b[o], float32, without BLAS: the runtime's
// last layers are small GEMMs, and a BLAS thread pool would spin beside the kernels' own pool
// (docs/runtime.md).
//
// The order of every sum is fixed, so the AVX2 path and the portable one give the same bits:
//   p_j = fma(x[c], w[c], p_j) for c = j, j + 8, j + 16, ... (8 partial sums, from +0.0),
//   dot = ((p0 + p4) + (p2 + p6)) + ((p1 + p5) + (p3 + p7)),   y = dot + b.
// That is a float32 dot product with its own rounding (within gamma_C sum |x w| of the exact
// one, as any summation order).
#ifndef DOREFA_CSRC_LINEAR_FLOAT_H_
#define DOREFA_CSRC_LINEAR_FLOAT_H_

#include <cstdint>

namespace dorefa {

// Rows y[n, o0 .. o0 + count - 1] of every n (count in 1..kLinearOuts).
using LinearFn = void (*)(const float* x, const float* w, const float* b, int64_t n, int64_t c,
                          int64_t o, int64_t o0, int64_t count, float* y);
constexpr int64_t kLinearOuts = 4;

// x (N, C), w (O, C), b (O), y (N, O), all C-contiguous; outputs split over threads.
// `vector`: the AVX2 path if the CPU has AVX2 and FMA (and it is not forced off), else the
// portable one.
void LinearFloat(const float* x, const float* w, const float* b, int64_t n, int64_t c, int64_t o,
                 float* y, bool vector, int threads);

#ifdef DOREFA_HAVE_X86_KERNELS
void LinearRowsAvx2(const float* x, const float* w, const float* b, int64_t n, int64_t c, int64_t o,
                    int64_t o0, int64_t count, float* y);
#endif

}  // namespace dorefa

#endif  // DOREFA_CSRC_LINEAR_FLOAT_H_
