// BatchNorm2d of integer training (dorefa/engine_bn.py) over float32 (N, C, H, W), per channel
// c over its M = N H W values, in training mode (the batch's statistics):
//
//   forward:  mean = sum x / M, var = sum (x - mean)^2 / M (both summed in float64 across the
//             planes), invstd = 1 / sqrt(var + eps); y = x a + b with a = w invstd,
//             b = bias - mean a (float32);
//   backward: sdy = sum dy, sdx = sum dy (x - mean) (float64 across the planes);
//             dw = sdx invstd, dbias = sdy,
//             dx = a (dy - sdy / M - (x - mean) invstd^2 sdx / M).
//
// The same formulas as torch's CPU kernels, not the same order of the sums: results within
// float32 rounding of torch's, not bit for bit.
#ifndef DOREFA_CSRC_BN_TRAIN_H_
#define DOREFA_CSRC_BN_TRAIN_H_

#include <cstdint>

namespace dorefa {

// mean, var (biased), invstd: (C) float64 outputs.
void BatchNormTrainForward(const float* x, int64_t n, int64_t c, int64_t hw, const float* weight,
                           const float* bias, double eps, float* y, double* mean, double* var,
                           double* invstd, int threads);

// dw, dbias: (C) float32 outputs.
void BatchNormTrainBackward(const float* x, const float* dy, int64_t n, int64_t c, int64_t hw,
                            const float* weight, const double* mean, const double* invstd,
                            float* dx, float* dw, float* dbias, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_BN_TRAIN_H_
