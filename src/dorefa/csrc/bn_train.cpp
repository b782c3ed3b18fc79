// BatchNorm2d of integer training (bn_train.h has the formulas). Work: channels split over
// the threads; per channel two passes over its N planes (the statistics, then the outputs).
// Each plane's sums run in 16 float32 lanes (vectorized by the compiler; a plane has at most a
// few thousand values) and are added to the channel's float64 sums. Loop bodies compiled for
// AVX-512, AVX2 and the baseline, the CPU's best taken at run time.
#include "bn_train.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "cpu_features.h"
#include "thread_pool.h"

namespace dorefa {
namespace {

constexpr int kLanes = 16;

// sum of p[0 .. m) and of (p[i] - mu)^2, in 16 float32 lanes, returned as float64.
inline __attribute__((always_inline)) std::pair<double, double> PlaneSums(const float* p, int64_t m,
                                                                          float mu) {
  float s[kLanes] = {}, q[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= m; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float d = p[i + j] - mu;
      s[j] += p[i + j];
      q[j] += d * d;
    }
  double ss = 0.0, qq = 0.0;
  for (; i < m; ++i) {
    const float d = p[i] - mu;
    ss += p[i];
    qq += static_cast<double>(d) * d;
  }
  for (int j = 0; j < kLanes; ++j) ss += s[j], qq += q[j];
  return {ss, qq};
}

// sum of dy and of dy (x - mu) over a plane.
inline __attribute__((always_inline)) std::pair<double, double> GradSums(const float* x,
                                                                         const float* dy, int64_t m,
                                                                         float mu) {
  float s[kLanes] = {}, q[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= m; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      s[j] += dy[i + j];
      q[j] += dy[i + j] * (x[i + j] - mu);
    }
  double ss = 0.0, qq = 0.0;
  for (; i < m; ++i) ss += dy[i], qq += static_cast<double>(dy[i]) * (x[i] - mu);
  for (int j = 0; j < kLanes; ++j) ss += s[j], qq += q[j];
  return {ss, qq};
}

struct Geom {
  int64_t n, c, hw;
};

// Channels [c0, c1) of the forward.
inline __attribute__((always_inline)) void ForwardBody(const float* x, Geom g, const float* w,
                                                       const float* bias, double eps, float* y,
                                                       double* mean, double* var, double* invstd,
                                                       int64_t c0, int64_t c1) {
  const double m = static_cast<double>(g.n * g.hw);
  for (int64_t ch = c0; ch < c1; ++ch) {
    double s = 0.0;
    for (int64_t b = 0; b < g.n; ++b) s += PlaneSums(x + (b * g.c + ch) * g.hw, g.hw, 0.0f).first;
    const double mu = s / m;
    double q = 0.0;
    for (int64_t b = 0; b < g.n; ++b)
      q += PlaneSums(x + (b * g.c + ch) * g.hw, g.hw, static_cast<float>(mu)).second;
    // (x - mu32)^2 summed: correct it to the sum about mu itself
    const double d = mu - static_cast<float>(mu);
    const double v = std::max(0.0, q / m - d * d);
    const double is = 1.0 / std::sqrt(v + eps);
    mean[ch] = mu, var[ch] = v, invstd[ch] = is;
    const auto a = static_cast<float>(w[ch] * is);
    const auto sh = static_cast<float>(bias[ch] - mu * w[ch] * is);
    for (int64_t b = 0; b < g.n; ++b) {
      const float* src = x + (b * g.c + ch) * g.hw;
      float* dst = y + (b * g.c + ch) * g.hw;
      for (int64_t i = 0; i < g.hw; ++i) dst[i] = src[i] * a + sh;
    }
  }
}

inline __attribute__((always_inline)) void BackwardBody(const float* x, const float* dy, Geom g,
                                                        const float* w, const double* mean,
                                                        const double* invstd, float* dx, float* dw,
                                                        float* dbias, int64_t c0, int64_t c1) {
  const double m = static_cast<double>(g.n * g.hw);
  for (int64_t ch = c0; ch < c1; ++ch) {
    const auto mu = static_cast<float>(mean[ch]);
    double sdy = 0.0, sdx = 0.0;
    for (int64_t b = 0; b < g.n; ++b) {
      const int64_t at = (b * g.c + ch) * g.hw;
      const auto [s, q] = GradSums(x + at, dy + at, g.hw, mu);
      sdy += s, sdx += q;
    }
    sdx -= (mean[ch] - mu) * sdy;  // the sum about mean itself
    const double is = invstd[ch];
    dw[ch] = static_cast<float>(sdx * is);
    dbias[ch] = static_cast<float>(sdy);
    const auto a = static_cast<float>(w[ch] * is);
    const auto k2 = static_cast<float>(sdy / m);
    const auto k3 = static_cast<float>(is * is * sdx / m);
    for (int64_t b = 0; b < g.n; ++b) {
      const int64_t at = (b * g.c + ch) * g.hw;
      for (int64_t i = 0; i < g.hw; ++i) dx[at + i] = a * (dy[at + i] - k2 - (x[at + i] - mu) * k3);
    }
  }
}

using ForwardFn = void (*)(const float*, Geom, const float*, const float*, double, float*, double*,
                           double*, double*, int64_t, int64_t);
using BackwardFn = void (*)(const float*, const float*, Geom, const float*, const double*,
                            const double*, float*, float*, float*, int64_t, int64_t);

#define DOREFA_BN_COPIES(SUFFIX, TARGET)                                                       \
  TARGET void Forward##SUFFIX(const float* x, Geom g, const float* w, const float* bias,       \
                              double eps, float* y, double* mean, double* var, double* invstd, \
                              int64_t c0, int64_t c1) {                                        \
    ForwardBody(x, g, w, bias, eps, y, mean, var, invstd, c0, c1);                             \
  }                                                                                            \
  TARGET void Backward##SUFFIX(const float* x, const float* dy, Geom g, const float* w,        \
                               const double* mean, const double* invstd, float* dx, float* dw, \
                               float* dbias, int64_t c0, int64_t c1) {                         \
    BackwardBody(x, dy, g, w, mean, invstd, dx, dw, dbias, c0, c1);                            \
  }

DOREFA_BN_COPIES(Base, )
#ifdef DOREFA_HAVE_X86_KERNELS
DOREFA_BN_COPIES(Avx2, __attribute__((target("avx2,fma"))))
DOREFA_BN_COPIES(Avx512, __attribute__((target("avx512f,avx512bw,avx512vl,fma"))))
#endif
#undef DOREFA_BN_COPIES

}  // namespace

void BatchNormTrainForward(const float* x, int64_t n, int64_t c, int64_t hw, const float* weight,
                           const float* bias, double eps, float* y, double* mean, double* var,
                           double* invstd, int threads) {
  const ForwardFn fn = DOREFA_PICK_COPY(Forward);
  ParallelForOrThrow(threads, c, [&](int64_t c0, int64_t c1) {
    fn(x, Geom{n, c, hw}, weight, bias, eps, y, mean, var, invstd, c0, c1);
  });
}

void BatchNormTrainBackward(const float* x, const float* dy, int64_t n, int64_t c, int64_t hw,
                            const float* weight, const double* mean, const double* invstd,
                            float* dx, float* dw, float* dbias, int threads) {
  const BackwardFn fn = DOREFA_PICK_COPY(Backward);
  ParallelForOrThrow(threads, c, [&](int64_t c0, int64_t c1) {
    fn(x, dy, Geom{n, c, hw}, weight, mean, invstd, dx, dw, dbias, c0, c1);
  });
}

}  // namespace dorefa
