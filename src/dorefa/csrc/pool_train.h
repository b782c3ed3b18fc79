// Max-pool of integer training (dorefa/engine.py, IntMaxPool2d): non-overlapping windows
// (kernel k = stride, no padding, OH = H / k, OW = W / k) over float32 (N, C, H, W), with the
// position of each window's maximum for the backward pass; torch's CPU max_pool2d bit for bit:
//
//   forward:  scan the window row by row; m = -inf, i = 0; take (v, position) when v > m or v
//             is NaN (so the first maximum wins a tie, the last NaN wins over all);
//   backward: dx = 0 everywhere, then dx[window's position i] = 0 + dy (one term per input:
//             the windows do not overlap, so the sum torch forms is this one addition; it turns
//             a -0.0 gradient into +0.0 as torch's does).
#ifndef DOREFA_CSRC_POOL_TRAIN_H_
#define DOREFA_CSRC_POOL_TRAIN_H_

#include <cstdint>

namespace dorefa {

// x (planes, h, w) -> y, pos (planes, h / k, w / k); pos = r * k + t of the maximum (k <= 15).
void MaxPoolTrainForward(const float* x, int64_t planes, int64_t h, int64_t w, int64_t k, float* y,
                         uint8_t* pos, int threads);

// dy, pos (planes, h / k, w / k) -> dx (planes, h, w).
void MaxPoolTrainBackward(const float* dy, const uint8_t* pos, int64_t planes, int64_t h, int64_t w,
                          int64_t k, float* dx, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_POOL_TRAIN_H_
