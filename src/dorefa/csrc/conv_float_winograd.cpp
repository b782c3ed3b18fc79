// The call-wide part of conv_float_winograd.h: U = G w_k G^T for every phase channel and output
// channel, in double, rounded once to float32.
#include "conv_float_winograd.h"

#include <algorithm>

namespace dorefa {

void MakeWinogradPlan(const FloatConvGeom& g, const float* weight, const float* bias,
                      WinogradPlan* w) {
  static constexpr double kG[5][4] = {{0.5, 0.0, 0.0, 0.0},
                                      {-0.5, -0.5, -0.5, -0.5},
                                      {-1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 6},
                                      {1.0 / 6, 1.0 / 3, 2.0 / 3, 4.0 / 3},
                                      {0.0, 0.0, 0.0, 1.0}};
  w->k = 4 * g.c;
  w->op = (g.o + 15) / 16 * 16;
  w->th = (g.oh + 1) / 2;
  w->tw = (g.ow + 1) / 2;
  w->u.assign(static_cast<size_t>(25 * w->k * w->op), 0.0f);
  w->bias.assign(static_cast<size_t>(w->op), 0.0f);
  std::copy(bias, bias + g.o, w->bias.begin());
  for (int64_t o = 0; o < g.o; ++o) {
    for (int64_t c = 0; c < g.c; ++c) {
      for (int pi = 0; pi < 2; ++pi) {
        for (int pj = 0; pj < 2; ++pj) {
          double wk[4][4] = {};  // w_k[a][b] = w[o][c][2a + pi][2b + pj], 0 past the kernel
          for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b)
              if (2 * a + pi < g.kh && 2 * b + pj < g.kw)
                wk[a][b] = weight[((o * g.c + c) * g.kh + 2 * a + pi) * g.kw + 2 * b + pj];
          const int64_t k = (c * 2 + pi) * 2 + pj;
          for (int i = 0; i < 5; ++i) {
            for (int j = 0; j < 5; ++j) {
              double s = 0.0;
              for (int a = 0; a < 4; ++a)
                for (int b = 0; b < 4; ++b) s += kG[i][a] * wk[a][b] * kG[j][b];
              w->u[static_cast<size_t>(((i * 5 + j) * w->k + k) * w->op + o)] =
                  static_cast<float>(s);
            }
          }
        }
      }
    }
  }
}

}  // namespace dorefa
