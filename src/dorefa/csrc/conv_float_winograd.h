// Winograd F(2x2, 4x4) for the float-output first conv of stride 2 and a 7x7 or 8x8 kernel
// (ResNet's stem), about half the multiplies of the direct sums (conv_float.h).
//
// Phases. With the input zero padded (xf, C x HP x WP) and i = 2a + pi, j = 2b + pj,
//   out[o][y][x] = sum_{c,i,j} w[o][c][i][j] xf[c][2y + i][2x + j]
//                = sum_k sum_{a,b < 4} w_k[o][a][b] P_k[y + a][x + b],
// k = (c, pi, pj) one of 4C phase channels, w_k[o][a][b] = w[o][c][2a + pi][2b + pj] (0 past
// the kernel), P_k[u][v] = xf[c][2u + pi][2v + pj] (0 past the padded input): a stride-1 4x4
// correlation of 4C channels.
//
// Winograd (Lavin and Gray's F(m, r) from the points 0, 1, -1, 2 and infinity, m = 2, r = 4):
// for each 2x2 tile of outputs (rows 2ty, 2ty + 1, columns 2tx, 2tx + 1) and its 5x5 patch d_k
// of each phase channel (P_k[2ty + a'][2tx + b'], a', b' < 5),
//   Y = A^T [ sum_k U_k (.) V_k ] A,   U_k = G w_k G^T (per o),   V_k = B^T d_k B,
// with (x) the product of two 5x5 arrays element by element, the 25 positions xi = (i, j):
//   B^T = [ 2 -1 -2  1  0 ]   G = [  1/2    0     0     0  ]   A^T = [ 1  1  1  1  0 ]
//         [ 0 -2 -1  1  0 ]       [ -1/2 -1/2  -1/2  -1/2  ]         [ 0  1 -1  2  1 ]
//         [ 0  2 -3  1  0 ]       [ -1/6  1/6  -1/6   1/6  ]
//         [ 0 -1  0  1  0 ]       [  1/6  1/3   2/3   4/3  ]
//         [ 0  2 -1 -2  1 ]       [   0    0     0     1   ]
// per tile 25 x 4C x O multiplies against 4 x 49 C x O: 0.51x.
// U is computed once per call in double and rounded to float32; the rest is float32. Its
// rounding differs from the direct sums' (the float-output conv is compared within rounding:
// conv_float.h); Winograd with these points is as accurate as the direct float32 sums on the
// stem (max error 5.5e-7 of the largest output, 5e-7 direct).
//
// Vectors hold L neighbouring tiles of one tile row (16 on zmm, 8 on ymm), every step per lane,
// so both widths give the same bits. Per block of L tiles: the phase patches come from R, the
// phase planes split by column parity, R[k][par][u][t] = P_k[u][2t + par], so the L values of
// d_k[a'][b'] are L consecutive floats (R[k][b' % 2][2ty + a'][tx + b' / 2]); V_k transformed
// in registers to Vb[xi][k][L]; per row i of positions and a few channels o (8 on zmm, 4 on
// ymm), M[i][j][o] = sum_k U[i j][k][o] V[i j][k] (FMAs in k order, U broadcast) and A^T along
// j in registers to S[i][s][o]; per channel Y = A^T S + bias along i, the two columns of each
// tile interleaved, two rows of 2L outputs stored.
#ifndef DOREFA_CSRC_CONV_FLOAT_WINOGRAD_H_
#define DOREFA_CSRC_CONV_FLOAT_WINOGRAD_H_

#include <cstdint>
#include <vector>

#include "conv_float.h"

namespace dorefa {

// The layers it runs: stride 2, kernel 7 or 8 in both directions (phase kernels of 4 x 4).
inline bool WinogradFits(const FloatConvGeom& g) {
  return g.stride == 2 && g.kh >= 7 && g.kh <= 8 && g.kw >= 7 && g.kw <= 8;
}

// What every tile row of a call reads: U, the sizes, the bias.
struct WinogradPlan {
  int64_t k = 0;            // phase channels: 4 C
  int64_t op = 0;           // O rounded up to 16
  int64_t th = 0;           // tile rows: ceil(OH / 2)
  int64_t tw = 0;           // tiles per row: ceil(OW / 2)
  std::vector<float> u;     // (25, k, op): G w_k G^T, zero past O
  std::vector<float> bias;  // (op)
};
void MakeWinogradPlan(const FloatConvGeom& g, const float* weight, const float* bias,
                      WinogradPlan* w);

// Where conv row r of channel o goes: base + o * o_stride + (ring ? r % ring : r) * ow.
struct ConvRows {
  float* base = nullptr;
  int64_t o_stride = 0, ow = 0, ring = 0;
  float* Row(int64_t o, int64_t r) const {
    return base + o * o_stride + (ring ? r % ring : r) * ow;
  }
};

// FloatWinogradFn (conv_float.h): conv rows 2 ty .. 2 ty + 1 (those < OH) of image n for the
// tile rows [ty0, ty1), every channel, + bias, to dst; p.xf the padded input (FloatConvPlan).
// `done` (if given) is called with ty after each tile row (a fused pool takes the rows it
// completes). Per ISA: WinogradRows<Isa> (winograd_tile.h).

#ifdef DOREFA_HAVE_X86_KERNELS
void ConvFloatWinogradAvx512(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                             int64_t n, int64_t ty0, int64_t ty1, const ConvRows& dst,
                             const TileRowDone* done);
void ConvFloatWinogradAvx2(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                           int64_t n, int64_t ty0, int64_t ty1, const ConvRows& dst,
                           const TileRowDone* done);
#endif

}  // namespace dorefa

#endif  // DOREFA_CSRC_CONV_FLOAT_WINOGRAD_H_
