// Max-pools of the runtime's values: uint8 codes (padding = code 0) and float32 maps (padding
// -inf, NaN propagating). The same results as dorefa/kernels/reference.py's maxpool_codes and
// maxpool_float (a max is exact, so any order of the taps gives the same value; NaN handling
// is the only place where the order could show, and the float pool keeps NumPy's).
#ifndef DOREFA_CSRC_POOL_H_
#define DOREFA_CSRC_POOL_H_

#include <cstdint>

namespace dorefa {

// Max-pool of uint8 codes x (N, C, H, W) -> out (N, C, OH, OW), kernel k, stride s, padding p
// (padding = code 0, which is <= every code; OH = (H + 2p - k) / s + 1).
void MaxPoolCodes(const uint8_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                  int64_t s, int64_t p, uint8_t* out);

// Max-pool of float32 x (N, C, H, W) -> out (N, C, OH, OW), padding -inf, NaN propagating;
// planes split over up to `threads` threads.
void MaxPoolFloat(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t s,
                  int64_t p, float* out, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_POOL_H_
