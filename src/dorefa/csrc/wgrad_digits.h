// Weight gradient of a layer with one output pixel (P = 1: the last conv of a network, a linear
// layer) whose batch scales are integers, as int8 multiply-adds over the batch: the plan and the
// packing (the VNNI tile is in wgrad_vnni_direct.cpp; wgrad.h has the sums, wgrad_outer.h the
// float64 route):
//
//   dW[o, k] = sum_b q_b S_b[o, k],   S_b[o, k] = g_b[o] X_b[k],   g = 2c - n_g.
//
// Training's scales are integers: q_b = rint(m_b Q / max m) in 0..Q, Q = 2^24 - 1
// (reference_grad.grid_scales). When every q_b is an integer in [0, 2^24) and
// N max(q) n_g n_a < 2^53, every partial sum of the spec's float64 batch-order sum is an exact
// integer, so the sum does not depend on its order and any exact integer evaluation equals it
// bit for bit. Write q_b in base beta = floor(255 / n_a) + 1, digits d_bj (j < D), so that
// d_bj X_b[k] <= 255 is an unsigned byte:
//
//   dW[o, k] = sum_j beta^j T_j[o, k],   T_j[o, k] = sum_b g_b[o] (d_bj X_b[k]).
//
// The tiles run T_j with the columns k in the vector lanes (16 in a zmm) and 4 samples in each
// lane's bytes: VPDPBUSD of the packed u8 operand d_bj X_b[k] and a broadcast of 4 samples'
// s8 gradient factors of one channel o; beta^j T_j (exact integers below 2^53) is added to
// float64 sums in registers, so a channel's row of dW leaves the tile as whole vectors. The
// batch sum runs at the multiply-add instruction's rate, D times over (A = 1: 3 digits, A = 2:
// 4, A = 4: 6), instead of one float64 FMA per (sample, output). No AVX2 tile: VPMADDUBSW +
// VPMADDWD per 32 products and digit would run 8 products a cycle at 4 digits, as the
// outer-product sum's 8 float64 FMAs do.
//
// Internal linkage for the same reason as wgrad_direct.h.
#ifndef DOREFA_CSRC_WGRAD_DIGITS_H_
#define DOREFA_CSRC_WGRAD_DIGITS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "buffers.h"
#include "byte_transpose.h"
#include "wgrad.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

// More digits than this: the float64 outer-product sum is as fast (8 float64 FMAs a cycle
// against 64 / D int8 multiply-adds).
constexpr int kMaxDigits = 6;

struct DigitPlan {
  int digits = 0;    // D (0: the route does not apply)
  int64_t base = 0;  // beta: (beta - 1) n_a <= 255
};

// The largest scale when every scale is an integer in [0, 2^24) (training's grid), else -1.
inline double IntegerScalesTop(const WgradGeom& g, const WgradOutput& out) {
  double top = 0.0;
  for (int64_t b = 0; b < g.n; ++b) {
    const double q = out.scale[b];
    if (!(q >= 0.0 && q < 16777216.0) || q != std::floor(q)) return -1.0;
    top = std::max(top, q);
  }
  return top;
}

// The plan over `terms` products per output (N P: the batch and the map, summed together), or
// digits = 0 when the route does not apply: dW mode, integer scales in [0, 2^24), exact
// partial sums (terms max(q) n_g n_a < 2^53), g an int8 (n_g <= 127), each T_j within int32
// (terms n_g 255 < 2^31), and D <= kMaxDigits.
inline DigitPlan PlanScaleDigits(const WgradGeom& g, const WgradOutput& out, int64_t terms) {
  DigitPlan plan;
  const int64_t ng = (int64_t{1} << g.g_bits) - 1, na = (int64_t{1} << g.a_bits) - 1;
  if (out.s != nullptr || g.n == 0 || ng > 127 || terms * ng * 255 >= (1LL << 31)) return plan;
  const double top = IntegerScalesTop(g, out);
  if (top < 0.0 ||
      static_cast<double>(terms) * top * static_cast<double>(ng * na) >= 9007199254740992.0)
    return plan;
  const int64_t base = 255 / na + 1;
  int digits = 1;
  for (double reach = static_cast<double>(base); reach <= top; reach *= static_cast<double>(base))
    ++digits;
  if (digits > kMaxDigits) return plan;
  plan.digits = digits, plan.base = base;
  return plan;
}

// The per-sample kernels' finish in integers (wgrad_vnni_direct.cpp, wgrad_amx.cpp): with
// q = 4096 q_hi + q_lo (both < 4096) and |S| <= P n_g n_a < 2^15 (an int16 word),
//
//   sum_b q_b S_b = 4096 sum_b q_hi,b S_b + sum_b q_lo,b S_b,
//
// each product an exact int32 from one VPDPWSSD / VPMADDWD of int16 words, added in int32 for
// `flush` samples (flush 4095 max|S| < 2^31), then into the float64 sums. Every partial sum is
// an integer below 2^53 (N max(q) max|S| < 2^53), so any order gives the spec's sum bit for
// bit. flush = 0: the route does not apply (S mode, other scales, |S| >= 2^15).
struct IntScalePlan {
  int64_t flush = 0;  // samples an int32 sum of q_lo S (or q_hi S) takes without overflow
};

inline IntScalePlan PlanIntScales(const WgradGeom& g, const WgradOutput& out) {
  IntScalePlan plan;
  const int64_t s_max = g.P() * ((int64_t{1} << g.g_bits) - 1) * ((int64_t{1} << g.a_bits) - 1);
  if (out.s != nullptr || s_max >= (1 << 15)) return plan;
  const double top = IntegerScalesTop(g, out);
  if (top < 0.0 ||
      static_cast<double>(g.n) * top * static_cast<double>(s_max) >= 9007199254740992.0)
    return plan;
  plan.flush = ((int64_t{1} << 31) - 1) / (4095 * s_max);  // >= 16
  return plan;
}

// The one-pixel layer's plan (P = 1: the batch is the sum).
inline DigitPlan PlanDigits(const WgradGeom& g, const WgradOutput& out) {
  return g.P() == 1 ? PlanScaleDigits(g, out, g.n) : DigitPlan{};
}

// The one-pixel layer's windows X (N, K) transposed: xt (K, N) (OnePixelWindow, wgrad.h).
inline void OnePixelColumns(const WgradGeom& g, const uint8_t* x, uint8_t* xt) {
  const int64_t n = g.n, k_count = g.K();
  if (WindowIsInput(g)) return TransposeBytes(x, n, k_count, xt);
  PoolScratch<uint8_t> gathered(static_cast<size_t>(n * k_count));
  for (int64_t b = 0; b < n; ++b) OnePixelWindow(g, x, b, gathered.data() + b * k_count);
  TransposeBytes(gathered.data(), n, k_count, xt);
}

// The digits of the scales: d[j * n + b] = digit j of q_b in base beta.
inline std::vector<uint8_t> ScaleDigits(const WgradGeom& g, const DigitPlan& plan,
                                        const WgradOutput& out) {
  std::vector<uint8_t> d(static_cast<size_t>(plan.digits * g.n));
  for (int64_t b = 0; b < g.n; ++b) {
    auto q = static_cast<int64_t>(out.scale[b]);
    for (int64_t j = 0; j < plan.digits; ++j, q /= plan.base)
      d[j * g.n + b] = static_cast<uint8_t>(q % plan.base);
  }
  return d;
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_WGRAD_DIGITS_H_
