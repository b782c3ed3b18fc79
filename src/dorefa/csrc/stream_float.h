// Elementwise float32 operations of the runtime's float stream (the values between layers that
// are not codes: a residual sum, a BatchNorm on it, a bit convolution's float output), each one
// pass over its array with the same float32 operations, in the same order, as its NumPy spec in
// kernels/reference.py, so every path gives the same bits:
//
//   QuantizeFloat:   code = rint(clip(x, 0, 1) * n),   n = 2^bits - 1, ties to even; NaN -> 0
//   AffineFloat:     y = x * scale[c] + shift[c]       (two roundings: built without FMA
//                                                       contraction)
//   ScaleIntFloat:   y = float(D) * alpha[c] + beta[c], then clip(y, 0, 1) when clip, or
//                    + residual when given (a residual add fused in: y = (...) + r)
//   AffineQuantizeFloat: the codes of AffineFloat's y (QuantizeFloat of it, fused: one pass)
//   AvgPoolFloat:    y = (((0 + x_00) + x_01) + ... + x_(k-1)(k-1)) / k^2, the window's taps
//                    row by row, a padding tap adding 0 (torch's count_include_pad)
//
// clip is NumPy's: x unless x < 0 (-> 0) or x > 1 (-> 1), so NaN and -0 pass unchanged. rint: v =
// clip(x) * n lies in [0, 255], and for 0 <= v < 2^23 the float32 sum (v + 2^23) has no bits below
// 1, so (v + 2^23) - 2^23 is v rounded to the nearest integer, ties to even (the rounding mode).
// Arrays are (N, C, HW) contiguous; scale, shift, alpha, beta have C entries. `threads` splits
// the elements (planes) over up to that many threads of the kernels' pool when there are
// enough of them; the result does not depend on it (each output is computed alone).
#ifndef DOREFA_CSRC_STREAM_FLOAT_H_
#define DOREFA_CSRC_STREAM_FLOAT_H_

#include <cstdint>

namespace dorefa {

// `vector`: the AVX-512 rows when the CPU has AVX-512F/BW/VL (CpuFeatures), else SSE2 (the same
// codes: tests compare every path with the NumPy spec).
void QuantizeFloat(const float* x, int64_t count, int bits, uint8_t* codes, bool vector,
                   int threads);
void AffineFloat(const float* x, int64_t n, int64_t c, int64_t hw, const float* scale,
                 const float* shift, float* y, int threads);
void AffineQuantizeFloat(const float* x, int64_t n, int64_t c, int64_t hw, const float* scale,
                         const float* shift, int bits, uint8_t* codes, bool vector, int threads);
// residual: nullptr, or (N, C, HW) float32 added last (not with clip).
void ScaleIntFloat(const int32_t* d, int64_t n, int64_t c, int64_t hw, const float* alpha,
                   const float* beta, bool clip, const float* residual, float* y, int threads);
// x (N, C, H, W) -> y (N, C, OH, OW), OH = (H + 2p - k) / s + 1.
void AvgPoolFloat(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t s,
                  int64_t p, float* y, int threads);

#ifdef DOREFA_HAVE_X86_KERNELS
// QuantizeFloat's codes of x[0 .. count) on 16 lanes (stream_float_avx512.cpp).
void QuantizeRangeAvx512(const float* x, int64_t count, int bits, uint8_t* codes);
#endif

}  // namespace dorefa

#endif  // DOREFA_CSRC_STREAM_FLOAT_H_
