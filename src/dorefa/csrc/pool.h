// Max-pools of the runtime's values: uint8 codes (padding = code 0) and float32 maps (padding
// -inf, NaN propagating). The same results as dorefa/kernels/reference.py's maxpool_codes and
// maxpool_float (a max is exact, so any order of the taps gives the same value; NaN handling
// is the only place where the order could show, and the float pool keeps NumPy's).
#ifndef DOREFA_CSRC_POOL_H_
#define DOREFA_CSRC_POOL_H_

#include <cstdint>
#include <vector>

namespace dorefa {

// Max-pool of uint8 codes x (N, C, H, W) -> out (N, C, OH, OW), kernel k, stride s, padding p
// (padding = code 0, which is <= every code; OH = (H + 2p - k) / s + 1).
void MaxPoolCodes(const uint8_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                  int64_t s, int64_t p, uint8_t* out, int threads);

// Max-pool of float32 x (N, C, H, W) -> out (N, C, OH, OW), padding -inf, NaN propagating;
// planes split over up to `threads` threads.
void MaxPoolFloat(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t s,
                  int64_t p, float* out, int threads);

// One output row at a time of MaxPoolFloat (the same values) from the rows of its window that
// lie inside the plane, for a caller that makes those rows itself (a conv whose output only the
// pool reads: ConvFloatOutMaxPool); input rows w floats, a k x k / s window, padding p.
class MaxPoolFloatRows {
 public:
  // 3 x 3 / 2 windows with padding 1 on AVX-512 rows where the CPU has them (CpuFeatures).
  MaxPoolFloatRows(int64_t w, int64_t k, int64_t s, int64_t p);
  // out[0 .. OW) from rows[0 .. nrows), the window's rows inside the plane, in order.
  void Row(const float* const* rows, int nrows, float* out);

 private:
  int64_t w_, k_, s_, p_, ow_;
  bool avx512_;
  std::vector<float> buf_;  // one padded row of maxima, padding -inf
};

#ifdef DOREFA_HAVE_X86_KERNELS
// A 3 x 3 / 2 output row with padding 1 from rows[0 .. nrows) (nrows >= 1) of w floats;
// returns 1 if any value read is NaN or inf (the caller redoes the row NaN-aware).
// pool_avx512.cpp.
uint32_t PoolRow3x3Stride2Pad1Avx512(const float* const* rows, int nrows, int64_t w, int64_t ow,
                                     float* out);
#endif

}  // namespace dorefa

#endif  // DOREFA_CSRC_POOL_H_
