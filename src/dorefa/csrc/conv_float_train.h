// The float first layer's products in training (dorefa/engine_float.py), stride 1, for float32
// x (N, C, H, W), weights w (O, C, KH, KW), bias b (O) and dy (N, O, OH, OW):
//
//   forward:  y[n, o, y, x] = b[o] + sum_{c, ky, kx} w[o, c, ky, kx] xp[n, c, y + ky, x + kx],
//   weights:  dW[o, c, ky, kx] = sum_{n, y, x} dy[n, o, y, x] * xp[n, c, y + ky, x + kx],
//   bias:     db[o] = sum_{n, y, x} dy[n, o, y, x],
//
// xp being x zero padded by `padding` on every side. Float32 sums, as torch's conv2d,
// conv2d_weight and dy.sum((0, 2, 3)) make them, in another order: within float32 rounding of
// torch's, not bit for bit. The order is fixed (conv_float_train.cpp), so a call gives the
// same floats for any thread count.
#ifndef DOREFA_CSRC_CONV_FLOAT_TRAIN_H_
#define DOREFA_CSRC_CONV_FLOAT_TRAIN_H_

#include <cstdint>

namespace dorefa {

struct FloatTrainGeom {
  int64_t n = 0, c = 0, h = 0, w = 0, o = 0, kh = 0, kw = 0, pad = 0;
  int64_t oh = 0, ow = 0;  // h + 2 pad - kh + 1, w + 2 pad - kw + 1

  FloatTrainGeom(int64_t n_, int64_t c_, int64_t h_, int64_t w_, int64_t o_, int64_t kh_,
                 int64_t kw_, int64_t pad_)
      : n(n_),
        c(c_),
        h(h_),
        w(w_),
        o(o_),
        kh(kh_),
        kw(kw_),
        pad(pad_),
        oh(h_ + 2 * pad_ - kh_ + 1),
        ow(w_ + 2 * pad_ - kw_ + 1) {}
};

// True where this CPU and shape have the native paths: AVX-512 (F, BW, VL), a 3x3 or 5x5
// kernel, at most 4 input channels (a first layer). Elsewhere the engine keeps conv_float and
// torch's gradients.
bool ConvFloatTrainFits(const FloatTrainGeom& g);

// dw (O, C, KH, KW); db (O) when not null. Only where ConvFloatTrainFits.
void ConvFloatWeightGrad(const FloatTrainGeom& g, const float* x, const float* dy, float* dw,
                         float* db, int threads);

// y (N, O, OH, OW). Only where ConvFloatTrainFits.
void ConvFloatTrainForward(const FloatTrainGeom& g, const float* x, const float* w, const float* b,
                           float* y, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_CONV_FLOAT_TRAIN_H_
