// The float first layer of a network, fused: conv (no bias) -> max-pool k x k / k ->
// + bias -> f_a quantization to `bits`-bit codes, for float32 input (N, C, H, W).
//
// Exactness. Each conv output is accumulated in double, sequentially over (c, kh, kw) from 0.0:
// a product of two floats is exact in double (24 + 24 bits < 53), so every step is one
// rounding whether or not it is fused (FMA), and the vector and scalar paths give identical
// bits. The sum is then rounded to float32, pooled (max; rounding is monotone, so pooling
// before or after it is the same), and, in float32 as torch/numpy do it:
//   z = pooled + bias;  code = rint(clip(z, 0, 1) * (2^bits - 1))   (rint: half to even).
// The spec is conv_float_quantize in dorefa/kernels/reference.py.
#ifndef DOREFA_CSRC_CONV_FLOAT_H_
#define DOREFA_CSRC_CONV_FLOAT_H_

#include <cstdint>

namespace dorefa {

struct FloatConvGeom {
  int64_t n = 0, c = 0, h = 0, w = 0, o = 0, kh = 0, kw = 0;
  int64_t stride = 1, pad = 0, pool = 1;
  int64_t oh = 0, ow = 0;  // conv output size (before pooling)
  int64_t ph = 0, pw = 0;  // pooled output size: floor(oh / pool), floor(ow / pool)
  int bits = 1;
};

// One pooled output pixel (py, px) of image `img` (padded double (C, HP, WP)), all channels:
// weights wt in double, tap-major (taps, ostride >= O rounded up to 8, zero-filled), codes to
// dst (O, PH, PW) of that image. The vector paths below; the kernel table (kernel_table.h)
// says which one a kernel uses.
using FloatConvPixelFn = void (*)(const FloatConvGeom& g, const double* img, int64_t hp,
                                  int64_t wp, const double* wt, int64_t ostride,
                                  const float* bias, int64_t py, int64_t px, uint8_t* dst);

// out (N, O, PH, PW) uint8 codes. `pixel` is the vector path (the caller checks CPU support),
// nullptr the portable scalar rows. threads > 1 splits pooled pixels (vector path) or
// (image, channel) pairs (scalar rows).
void ConvFloatQuantize(const FloatConvGeom& g, const float* x, const float* weight,
                       const float* bias, uint8_t* out, FloatConvPixelFn pixel, int threads);

// Max-pool of uint8 codes x (N, C, H, W) -> out (N, C, OH, OW), kernel k, stride s, padding p
// (padding = code 0, which is <= every code; OH = (H + 2p - k) / s + 1).
void MaxPoolCodes(const uint8_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                  int64_t s, int64_t p, uint8_t* out);

#ifdef DOREFA_HAVE_X86_KERNELS
// AVX-512F (8 doubles per zmm, 48 channels per group).
void ConvPoolQuantizeAvx512(const FloatConvGeom& g, const double* img, int64_t hp, int64_t wp,
                            const double* wt, int64_t ostride, const float* bias, int64_t py,
                            int64_t px, uint8_t* dst);
// AVX2 + FMA (4 doubles per ymm, 12 channels per group).
void ConvPoolQuantizeAvx2(const FloatConvGeom& g, const double* img, int64_t hp, int64_t wp,
                          const double* wt, int64_t ostride, const float* bias, int64_t py,
                          int64_t px, uint8_t* dst);
#endif

}  // namespace dorefa

#endif  // DOREFA_CSRC_CONV_FLOAT_H_
