// The epilogue of a weight-gradient block, shared by every ISA's file (each compiles it with
// its own flags, so the loops vectorize to that ISA; -ffp-contract=off keeps the multiply and
// the add separate, as the spec does them):
//   S = 2 (u + z Csum[o]) - n_g Xsum[k]                (mod 2^32; the true S fits int32)
//   dw mode:  acc[o, j] = acc[o, j] + scale_b * double(S)
//   s mode:   s[o, j] = S
#ifndef DOREFA_CSRC_WGRAD_FINISH_H_
#define DOREFA_CSRC_WGRAD_FINISH_H_

#include <cstdint>

namespace dorefa {

struct WgradFinish {
  const int32_t* u = nullptr;  // [nr][width]
  int nr = 0;
  int64_t width = 0, cols = 0;    // row stride of u and acc; columns to finish (<= width)
  const int32_t* csum = nullptr;  // Csum of the block's first channel
  const int32_t* xsum = nullptr;  // Xsum of the block's first column
  uint32_t z = 0, ng = 0;
  double scale = 0.0;
  double* acc = nullptr;  // dw mode: [nr][width]
  int32_t* s = nullptr;   // s mode: first output of the block
  int64_t s_stride = 0;   // s mode: row stride of s
};

inline void FinishBlock(const WgradFinish& f) {
  for (int r = 0; r < f.nr; ++r) {
    const uint32_t shift = f.z * static_cast<uint32_t>(f.csum[r]);
    const int32_t* u = f.u + r * f.width;
    if (f.s != nullptr) {
      int32_t* s = f.s + r * f.s_stride;
      for (int64_t j = 0; j < f.cols; ++j)
        s[j] = static_cast<int32_t>(2u * (static_cast<uint32_t>(u[j]) + shift) -
                                    f.ng * static_cast<uint32_t>(f.xsum[j]));
      continue;
    }
    double* acc = f.acc + r * f.width;
    for (int64_t j = 0; j < f.cols; ++j) {
      const int32_t s = static_cast<int32_t>(2u * (static_cast<uint32_t>(u[j]) + shift) -
                                             f.ng * static_cast<uint32_t>(f.xsum[j]));
      acc[j] = acc[j] + f.scale * static_cast<double>(s);
    }
  }
}

}  // namespace dorefa

#endif  // DOREFA_CSRC_WGRAD_FINISH_H_
