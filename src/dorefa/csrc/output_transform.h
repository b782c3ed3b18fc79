// Output transforms applied to the unsigned accumulators of a bit convolution.
//
// Signed dot product of a DoReFa layer. A k-bit weight is w = 2p / nw - 1 with code p and
// nw = 2^k - 1 (1-bit: w = E * (2p - 1), the same with nw = 1 up to the scale E), and an
// activation is a = q / (2^A - 1). Hence, over one receptive field,
//
//   sum w * a = (1 / (nw * (2^A - 1))) * sum (2p - nw) * q
//             = scale * D,   D = 2 * acc - nw * S,   acc = sum p * q,   S = sum q,
//
// so the integer D is all the layer needs; S (the activation codes summed over the receptive
// field, padding counting 0) comes from the packed planes as sum_m 2^m * popcount(c_m(x)).
//
// Re-quantisation. The next layer's input code is f(D) = quantize_k(clip(bn(scale * D), 0, 1))
// with a per-channel affine bn; f is a monotone step function of D (non-decreasing when the
// channel's BN slope is positive, non-increasing when negative). A monotone step function with
// values 0..T is fully described by its T step positions, so with integer thresholds t_j
// (computed at export time):
//   slope > 0 (direction +1): code = #{ j : D >= t_j },
//   slope < 0 (direction -1): code = #{ j : D <= t_j }.
#ifndef DOREFA_CSRC_OUTPUT_TRANSFORM_H_
#define DOREFA_CSRC_OUTPUT_TRANSFORM_H_

#include <cstdint>

#include "bitconv.h"

namespace dorefa {

// In place, for output pixels [pix0, pix1) (flattened n, oy, ox): acc (N, O, OH, OW) becomes
// D = 2 * acc - nw * S, nw = 2^w_bits - 1.
void SignedFromAcc(const ConvGeom& g, const uint64_t* xpk, int32_t* acc, int64_t pix0,
                   int64_t pix1);

// codes[n, o, y, x] = step count of d[n, o, y, x] against thresholds[o, 0..t-1] in the
// direction direction[o] (+1 or -1). t <= 255. `table`: theirs if built (else cached when
// searched).
void Requantize(const ConvGeom& g, const int32_t* d, const int32_t* thresholds, int64_t t,
                const int8_t* direction, const ThresholdTable* table, uint8_t* codes, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_OUTPUT_TRANSFORM_H_
