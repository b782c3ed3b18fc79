// The call-wide part of conv_float_winograd.h: U = G w_k G^T for every phase channel and output
// channel, in double, rounded once to float32; the codes' error bounds.
#include "conv_float_winograd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace dorefa {
namespace {

// One F(2, r): its G (N x r), |B^T|'s row sums and |A^T| (2 x N), N = r + 1.
struct Transform {
  int r, n;
  double g[5][4];
  double b_abs[5];
  double a_abs[2][5];
};
constexpr Transform kF23{3,
                         4,
                         {{1.0, 0.0, 0.0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0.0, 0.0, 1.0}},
                         {2, 2, 2, 2},
                         {{1, 1, 1, 0}, {0, 1, 1, 1}}};
constexpr Transform kF24{4,
                         5,
                         {{0.5, 0.0, 0.0, 0.0},
                          {-0.5, -0.5, -0.5, -0.5},
                          {-1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 6},
                          {1.0 / 6, 1.0 / 3, 2.0 / 3, 4.0 / 3},
                          {0.0, 0.0, 0.0, 1.0}},
                         {6, 4, 6, 2, 6},
                         {{1, 1, 1, 1, 0}, {0, 1, 1, 2, 1}}};
const Transform& TransformOf(const FloatConvGeom& g) {
  return WinogradPhaseKernel(g) == 3 ? kF23 : kF24;
}

// Phase kernel w_k[a][b] = w[o][c][s a + pi][s b + pj] of phase channel k = (c s + pi) s + pj,
// 0 past the kernel, to wk[a][b] (a, b < r).
void PhaseKernel(const FloatConvGeom& g, const float* weight, int r, int64_t o, int64_t k,
                 double (&wk)[4][4]) {
  const int64_t s = g.stride, c = k / (s * s), pi = k / s % s, pj = k % s;
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b) {
      const int64_t i = s * a + pi, j = s * b + pj;
      wk[a][b] = a < r && b < r && i < g.kh && j < g.kw
                     ? weight[((o * g.c + c) * g.kh + i) * g.kw + j]
                     : 0.0;
    }
}

// (G w G^T)[i][j] for every position of one r x r kernel wk: G w (N x r), then times G^T; with
// G's entries as given or (abs) their absolute values (wk then >= 0).
void Sandwich(const Transform& t, const double (&wk)[4][4], bool abs, double (&out)[5][5]) {
  double gw[5][4];
  for (int i = 0; i < t.n; ++i)
    for (int b = 0; b < t.r; ++b) {
      double s = 0.0;
      for (int a = 0; a < t.r; ++a) s += (abs ? std::fabs(t.g[i][a]) : t.g[i][a]) * wk[a][b];
      gw[i][b] = s;
    }
  for (int i = 0; i < t.n; ++i)
    for (int j = 0; j < t.n; ++j) {
      double s = 0.0;
      for (int b = 0; b < t.r; ++b) s += gw[i][b] * (abs ? std::fabs(t.g[j][b]) : t.g[j][b]);
      out[i][j] = s;
    }
}

}  // namespace

void MakeWinogradPlan(const FloatConvGeom& g, const float* weight, const float* bias,
                      WinogradPlan* w) {
  const Transform& t = TransformOf(g);
  w->s = g.stride;
  w->n = t.n;
  w->k = g.stride * g.stride * g.c;
  w->op = (g.o + 15) / 16 * 16;
  w->th = (g.oh + 1) / 2;
  w->tw = (g.ow + 1) / 2;
  const int64_t xis = int64_t{t.n} * t.n;
  w->u.assign(static_cast<size_t>(xis * w->k * w->op), 0.0f);
  w->bias.assign(static_cast<size_t>(w->op), 0.0f);
  if (bias != nullptr) std::copy(bias, bias + g.o, w->bias.begin());
  w->tmax.assign(static_cast<size_t>(g.o), 0.0);
  w->wa.assign(static_cast<size_t>(4 * xis * w->op), 0.0f);
  w->row_unit = static_cast<float>(1.01 * static_cast<double>(w->k + 7) * std::ldexp(1.0, -24));
  for (int64_t o = 0; o < g.o; ++o) {
    double wabs[4][4] = {};  // sum_k |w_k|: sum_k |G| |w_k| |G^T| = |G| (sum_k |w_k|) |G^T|
    double uabs[5][5] = {};  // sum_k |U'_k| (the float32 U)
    for (int64_t k = 0; k < w->k; ++k) {
      double wk[4][4], uk[5][5];
      PhaseKernel(g, weight, t.r, o, k, wk);
      Sandwich(t, wk, false, uk);
      for (int i = 0; i < t.n; ++i)
        for (int j = 0; j < t.n; ++j) {
          const float u = static_cast<float>(uk[i][j]);
          w->u[static_cast<size_t>(((i * t.n + j) * w->k + k) * w->op + o)] = u;
          uabs[i][j] += std::fabs(static_cast<double>(u));
        }
      for (int a = 0; a < t.r; ++a)
        for (int b = 0; b < t.r; ++b) wabs[a][b] += std::fabs(wk[a][b]);
    }
    for (int rs = 0; rs < 4; ++rs)
      for (int i = 0; i < t.n; ++i)
        for (int j = 0; j < t.n; ++j) {
          const double a = t.a_abs[rs / 2][i] * t.a_abs[rs % 2][j] * uabs[i][j];
          w->wa[static_cast<size_t>((rs * xis + i * t.n + j) * w->op + o)] =
              std::nextafter(static_cast<float>(a), std::numeric_limits<float>::infinity());
        }
    double ut[5][5];
    Sandwich(t, wabs, true, ut);
    for (int rr = 0; rr < 2; ++rr)  // the largest T / X of a tile's four outputs
      for (int ss = 0; ss < 2; ++ss) {
        double s = 0.0;
        for (int i = 0; i < t.n; ++i)
          for (int j = 0; j < t.n; ++j)
            s += t.a_abs[rr][i] * t.a_abs[ss][j] * t.b_abs[i] * t.b_abs[j] * ut[i][j];
        w->tmax[static_cast<size_t>(o)] = std::max(w->tmax[static_cast<size_t>(o)], s);
      }
  }
}

void WinogradErrorBounds(const FloatConvGeom& g, const WinogradPlan& w, double xmax, float* eps) {
  const double taps = static_cast<double>(g.c * g.kh * g.kw);
  const double unit = 1.01 * (4.0 * std::ldexp(1.0, -24) + taps * std::ldexp(1.0, -53));
  for (int64_t o = 0; o < g.o; ++o) {
    const double e = unit * w.tmax[static_cast<size_t>(o)] * xmax + 1e-30;
    eps[o] = std::nextafter(static_cast<float>(e), std::numeric_limits<float>::infinity());
  }
}

void WinogradRowBounds(const WinogradPlan& w, const uint32_t* vmax, const float* eps, float* out) {
  const int xis = w.n * w.n;
  const int64_t op = w.op;
  static thread_local std::vector<float> acc;
  acc.assign(static_cast<size_t>(4 * op), 0.0f);
  for (int rs = 0; rs < 4; ++rs)
    for (int xi = 0; xi < xis; ++xi) {
      float v;
      std::memcpy(&v, vmax + xi, sizeof v);
      const float* wa = w.wa.data() + (rs * xis + xi) * op;
      float* a = acc.data() + rs * op;
      for (int64_t o = 0; o < op; ++o) a[o] += v * wa[o];
    }
  // Sums of non-negative float32 terms (at most 26 roundings, each < 2^-24 relative) and the
  // final two: 1.001 covers them.
  for (int64_t o = 0; o < op; ++o) {
    const float m =
        std::max(std::max(acc[o], acc[op + o]), std::max(acc[2 * op + o], acc[3 * op + o]));
    out[o] = (eps[o] + w.row_unit * m) * 1.001f;
  }
}

}  // namespace dorefa
