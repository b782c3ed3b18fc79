// f_a of integer training (act_train.h has the rules). One loop body per pass, written without
// branches so that the compiler vectorizes it, compiled three times: for AVX-512, AVX2 and the
// baseline, the CPU's best taken at run time. The clip is two comparisons and selects (so NaN
// and -0.0 pass as through torch's clamp), the rounding adds and subtracts 2^23 (round to
// nearest even, exact for 0 <= c n <= 255; -0.0's sign put back). Compiled with
// -ffp-contract=off (the product c n is rounded before the rounding, as torch's two ops do)
// and -fno-trapping-math (the comparisons of every element may run, vectorized; nothing here
// reads the floating-point exception flags).
#include "act_train.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#include "cpu_features.h"
#include "thread_pool.h"

namespace dorefa {
namespace {

constexpr int64_t kChunk = 16384;  // elements per work item

// Elements [begin, end); returns true if one is NaN.
inline __attribute__((always_inline)) bool ForwardBody(const float* __restrict x, int64_t begin,
                                                       int64_t end, float n, float* __restrict y,
                                                       uint8_t* __restrict codes) {
  const float shift = 8388608.0f;  // 2^23
  int32_t nan = 0;
  for (int64_t i = begin; i < end; ++i) {
    const float v = x[i];
    const bool below = v < 0.0f, above = v > 1.0f, is_nan = v != v;
    const float c = below ? 0.0f : (above ? 1.0f : v);
    const float code = std::copysign((c * n + shift) - shift, c);
    nan |= is_nan;
    y[i] = code / n;
    codes[i] = static_cast<uint8_t>(static_cast<int32_t>(is_nan ? 0.0f : code));
  }
  return nan != 0;
}

inline __attribute__((always_inline)) void BackwardBody(const float* __restrict x,
                                                        const float* __restrict dy, int64_t begin,
                                                        int64_t end, float* __restrict dx) {
  for (int64_t i = begin; i < end; ++i) {
    const float v = x[i];
    const bool inside = (v >= 0.0f) & (v <= 1.0f);
    dx[i] = dy[i] * (inside ? 1.0f : 0.0f);
  }
}

using ForwardFn = bool (*)(const float*, int64_t, int64_t, float, float*, uint8_t*);
using BackwardFn = void (*)(const float*, const float*, int64_t, int64_t, float*);

bool ForwardBase(const float* x, int64_t b, int64_t e, float n, float* y, uint8_t* c) {
  return ForwardBody(x, b, e, n, y, c);
}
void BackwardBase(const float* x, const float* dy, int64_t b, int64_t e, float* dx) {
  BackwardBody(x, dy, b, e, dx);
}
#ifdef DOREFA_HAVE_X86_KERNELS
__attribute__((target("avx2"))) bool ForwardAvx2(const float* x, int64_t b, int64_t e, float n,
                                                 float* y, uint8_t* c) {
  return ForwardBody(x, b, e, n, y, c);
}
__attribute__((target("avx2"))) void BackwardAvx2(const float* x, const float* dy, int64_t b,
                                                  int64_t e, float* dx) {
  BackwardBody(x, dy, b, e, dx);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) bool ForwardAvx512(const float* x, int64_t b,
                                                                        int64_t e, float n,
                                                                        float* y, uint8_t* c) {
  return ForwardBody(x, b, e, n, y, c);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) void BackwardAvx512(const float* x,
                                                                         const float* dy, int64_t b,
                                                                         int64_t e, float* dx) {
  BackwardBody(x, dy, b, e, dx);
}
#endif

}  // namespace

bool ActQuantTrainForward(const float* x, int64_t count, int bits, float* y, uint8_t* codes,
                          int threads) {
  const auto n = static_cast<float>((1 << bits) - 1);
  const ForwardFn fn = DOREFA_PICK_COPY(Forward);
  std::atomic<bool> nan{false};
  ParallelForOrThrow(threads, (count + kChunk - 1) / kChunk, [&](int64_t b, int64_t e) {
    if (fn(x, b * kChunk, std::min(count, e * kChunk), n, y, codes)) nan = true;
  });
  return nan.load();
}

void ActQuantTrainBackward(const float* x, const float* dy, int64_t count, float* dx, int threads) {
  const BackwardFn fn = DOREFA_PICK_COPY(Backward);
  ParallelForOrThrow(threads, (count + kChunk - 1) / kChunk, [&](int64_t b, int64_t e) {
    fn(x, dy, b * kChunk, std::min(count, e * kChunk), dx);
  });
}

}  // namespace dorefa
