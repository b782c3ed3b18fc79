// The float finishing passes of integer training's products, each one pass split over threads.
// Input gradient (dorefa/kernels/training.py, conv_input_grad; spec:
// reference_grad.input_grad_float):
//   dx[b, c, y, x] = float32(scale[b] * double(2 K1[b, c, y, x] - n_g K2[c, y, x]))
// D = 2 K1 - n_g K2 exact (formed in double: every term and the difference < 2^40), one double
// product, one rounding to float32.
// Forward (dorefa/engine.py): y[i] = float32(scale * double(D[i])), the same single rounding.
#ifndef DOREFA_CSRC_INPUT_GRAD_H_
#define DOREFA_CSRC_INPUT_GRAD_H_

#include <cstdint>

namespace dorefa {

// k1 (n, chw), k2 (chw), scale (n), dx (n, chw); rows split over threads.
void InputGradFinish(const int32_t* k1, const int32_t* k2, int64_t n, int64_t chw, int64_t ng,
                     const double* scale, float* dx, int threads);

// d (len), y (len).
void ScaleToFloat(const int32_t* d, int64_t len, double scale, float* y, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_INPUT_GRAD_H_
