// f_a of integer training (dorefa/engine_act.py): torch's quantize_activation bit for bit in
// one pass over a float32 map, with the codes the next integer layer reads.
//
//   forward:  c = clip(x, 0, 1) (NaN stays NaN, -0.0 stays -0.0, as torch's clamp),
//             code = rint(c * n) (float32 product, ties to even), y = code / n (float32);
//             codes[i] = code (0 where x is NaN; the call returns whether any x was NaN);
//   backward: dx = dy * (0 <= x <= 1 ? 1 : 0) (float32 product: torch's grad * mask, so an
//             inf or NaN gradient outside the window gives NaN, as there).
#ifndef DOREFA_CSRC_ACT_TRAIN_H_
#define DOREFA_CSRC_ACT_TRAIN_H_

#include <cstdint>

namespace dorefa {

// n = 2^bits - 1 (bits 1..8). Returns true if some x[i] is NaN.
bool ActQuantTrainForward(const float* x, int64_t count, int bits, float* y, uint8_t* codes,
                          int threads);

void ActQuantTrainBackward(const float* x, const float* dy, int64_t count, float* dx, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_ACT_TRAIN_H_
