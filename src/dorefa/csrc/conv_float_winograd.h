// Winograd F(2x2, 3x3) and F(2x2, 4x4) for float first convs of stride s = 2 or 4 whose kernel
// splits into phase kernels of 3 x 3 or 4 x 4 (ResNet's 7x7/2 stem: 4 x 4 over 4C phases;
// AlexNet's 12x12/4: 3 x 3 over 16C phases): 0.51x and 0.44x the multiplies of the direct sums
// (conv_float.h).
//
// Phases. With the input zero padded (xf, C x HP x WP) and i = s a + pi, j = s b + pj,
//   out[o][y][x] = sum_{c,i,j} w[o][c][i][j] xf[c][s y + i][s x + j]
//                = sum_k sum_{a,b < r} w_k[o][a][b] P_k[y + a][x + b],
// k = (c, pi, pj) one of s^2 C phase channels, w_k[o][a][b] = w[o][c][s a + pi][s b + pj] (0
// past the kernel), P_k[u][v] = xf[c][s u + pi][s v + pj] (0 past the padded input): a stride-1
// r x r correlation of s^2 C channels, r = ceil(kernel / s).
//
// Winograd (Lavin and Gray's F(m, r), m = 2, from the points 0, 1, -1 (, 2) and infinity): for
// each 2x2 tile of outputs (rows 2ty, 2ty + 1, columns 2tx, 2tx + 1) and its N x N patch d_k of
// each phase channel (P_k[2ty + a'][2tx + b'], a', b' < N = r + 1),
//   Y = A^T [ sum_k U_k (.) V_k ] A,   U_k = G w_k G^T (per o),   V_k = B^T d_k B,
// with (.) the product of two N x N arrays element by element, the N^2 positions xi = (i, j).
// F(2, 4), N = 5:
//   B^T = [ 2 -1 -2  1  0 ]   G = [  1/2    0     0     0  ]   A^T = [ 1  1  1  1  0 ]
//         [ 0 -2 -1  1  0 ]       [ -1/2 -1/2  -1/2  -1/2  ]         [ 0  1 -1  2  1 ]
//         [ 0  2 -3  1  0 ]       [ -1/6  1/6  -1/6   1/6  ]
//         [ 0 -1  0  1  0 ]       [  1/6  1/3   2/3   4/3  ]
//         [ 0  2 -1 -2  1 ]       [   0    0     0     1   ]
// F(2, 3), N = 4:
//   B^T = [ 1  0 -1  0 ]      G = [  1    0    0  ]          A^T = [ 1  1  1  0 ]
//         [ 0  1  1  0 ]          [ 1/2  1/2  1/2 ]                [ 0  1 -1 -1 ]
//         [ 0 -1  1  0 ]          [ 1/2 -1/2  1/2 ]
//         [ 0  1  0 -1 ]          [  0    0    1  ]
// per tile N^2 s^2 C O multiplies against 4 (s r)^2 C O.
// U is computed in double and rounded to float32 (once per weights: the calling thread keeps
// the last plan, conv_float.cpp); the rest is float32. Its
// rounding differs from the direct sums' (the float-output conv is compared within rounding:
// conv_float.h); Winograd with these points is as accurate as the direct float32 sums on the
// stem (max error 5.5e-7 of the largest output, 5e-7 direct).
//
// Codes (the fused first layer without a pool: ConvFloatQuantize). The float32 Winograd value
// M of an output is proved against the spec's as the direct float32 sums are (conv_float.h),
// with its own E. Every step above is a +, -, x or FMA rounded once (U's rounding from double one
// more): nB <= 4 roundings in V, 1 in U, K in the sum over phase channels, nA <= 6 in A. With V',
// U', M' the computed values and V, U the exact ones, the output's error is at most
//   gamma_nA sum alpha |M'| + sum alpha |M' - sum_k U' V'| + sum alpha sum_k |U' V' - U V|
// (sums over xi; |U' V' - U V| <= |U' - U| |V'| + |U| |V' - V|; alpha(xi) = |A^T|(r, i) |A^T|(s, j)
// for the tile's output (r, s)), so, with gamma_n <= 1.01 n u while n u < 0.0099 (K <= 16384 here):
//   E = 1.01 (K + 7) u max_rs sum_xi alpha(xi) Vmax(xi) sum_k |U'_k(xi)|      (the row's part)
//     + 1.01 (4 u + taps 2^-53) T + 1e-30                                       (the static part)
// where Vmax(xi) = max |V'_k(xi)| over the phase channels and the tile row's tiles (computed, so
// it follows the data), T the algorithm evaluated exactly on |d| <= X = max|x|, |U| and the
// absolute values of B, G and A (the rounding of V: gamma_nB |B^T| |d| |B| <= gamma_nB beta X;
// T >= S = sum |w x|, each aligned product's coefficients adding up to 1, so the spec's double
// sums, within gamma_taps(2^-53) S, are covered too); T <= X max over the 4 outputs of a tile of
// sum_xi alpha(xi) beta(xi) sum_k (|G| |w_k| |G^T|)(xi), beta(xi) the product of row i's and
// row j's absolute sums in B^T. M - E, M + E and Q are monotone roundings, so a code with
// Q(M - E) == Q(M + E) is the spec's; the others are recomputed from the spec's double sums
// (PendingCodes). The 1.01 leaves >= 0.009 of each gamma as slack, which covers U's own double
// error (~10 2^-53 |G| |w| |G^T|), the float32 sums of E itself (WinogradRowBounds rounds up)
// and, since T >= ||w_o||_1 X, the underflow of subnormal U or V entries unless ||w_o||_1 X <
// ~1e-30, when no sum can move fl(v + b) across a step of Q. Inputs with no finite bound (NaN,
// Inf, |x| or ||w_o||_1 > 1e15) take the spec's double sums for every code, as on the direct
// paths.
//
// Float output (ConvFloatOut): within rounding of the direct sums for finite inputs; a phase
// tap of zero weight reads input the direct sums skip, so an Inf input makes the whole 2 x 2
// tile NaN (0 x Inf, Inf - Inf in B^T d B) where the direct sums give +-Inf or a finite value.
//
// Vectors hold L neighbouring tiles of one tile row (16 on zmm, 8 on ymm), every step per lane,
// so both widths give the same bits. Per block of L tiles: the phase patches come from R, the
// phase planes split by column parity, R[k][par][u][t] = P_k[u][2t + par], so the L values of
// d_k[a'][b'] are L consecutive floats (R[k][b' % 2][2ty + a'][tx + b' / 2]); V_k transformed
// in registers to Vb[xi][k][L]; per row i of positions and 8 channels o, M[i][j][o] = sum_k
// U[i j][k][o] V[i j][k] (FMAs in k order, U broadcast) and A^T along j in registers to
// S[i][s][o]; per channel Y = A^T S + bias along i, the two columns of each tile interleaved,
// two rows of 2L outputs stored. On zmm a row's last 8 or fewer tiles take one ymm block.
#ifndef DOREFA_CSRC_CONV_FLOAT_WINOGRAD_H_
#define DOREFA_CSRC_CONV_FLOAT_WINOGRAD_H_

#include <cstdint>
#include <vector>

#include "conv_float.h"

namespace dorefa {

// The phase kernel size r (3 or 4) of the layers it runs, 0 for any other layer: stride 2 with
// kernels 7 and 8 (r = 4), stride 4 with kernels 9 to 12 (r = 3), in both directions.
inline int WinogradPhaseKernel(const FloatConvGeom& g) {
  if (g.stride == 2 && g.kh >= 7 && g.kh <= 8 && g.kw >= 7 && g.kw <= 8) return 4;
  if (g.stride == 4 && g.kh >= 9 && g.kh <= 12 && g.kw >= 9 && g.kw <= 12) return 3;
  return 0;
}
inline bool WinogradFits(const FloatConvGeom& g) { return WinogradPhaseKernel(g) != 0; }
constexpr int kMaxWinoXi = 25;  // transform positions of the larger tile, F(2, 4)

// What every tile row of a call reads: U, the sizes, the bias.
struct WinogradPlan {
  int64_t s = 0;             // stride
  int n = 0;                 // patch: N x N, N = r + 1
  int64_t k = 0;             // phase channels: s^2 C
  int64_t op = 0;            // O rounded up to 16
  int64_t th = 0;            // tile rows: ceil(OH / 2)
  int64_t tw = 0;            // tiles per row: ceil(OW / 2)
  std::vector<float> u;      // (N^2, k, op): G w_k G^T, zero past O
  std::vector<float> bias;   // (op)
  std::vector<double> tmax;  // (O): T / X of the codes' error bound (WinogradErrorBounds)
  std::vector<float> wa;  // (4, N^2, op): |A^T|(r, i) |A^T|(s, j) sum_k |U_k(xi)[o]|, rs = 2r + s
  float row_unit = 0.0f;  // 1.01 (K + 7) 2^-24 (WinogradRowBounds)
};
// bias nullptr: none (the codes add theirs after the conv).
void MakeWinogradPlan(const FloatConvGeom& g, const float* weight, const float* bias,
                      WinogradPlan* w);

// The part of E (header comment) that does not depend on V, for each channel o, to eps[o],
// rounded up; xmax = max|x|.
void WinogradErrorBounds(const FloatConvGeom& g, const WinogradPlan& w, double xmax, float* eps);
// E of one tile row for each channel o to out[o]: eps[o] + row_unit max_rs sum_xi vmax[xi]
// wa[rs][xi][o], rounded up; vmax the bits of the row's max |V| at each position.
void WinogradRowBounds(const WinogradPlan& w, const uint32_t* vmax, const float* eps, float* out);

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
// completes). Per ISA: WinogradRows<Isa, F> (winograd_tile.h).
//
// FloatWinogradCodesFn (conv_float.h): the codes (no pool) of the conv rows of tile rows
// [ty0, ty1) of image n to out (O, OH, OW) of that image, each proved by p.eps or queued in
// p.pending; w made without a bias (p.bias is added before Q).

#ifdef DOREFA_HAVE_X86_KERNELS
void ConvFloatWinogradAvx512(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                             int64_t n, int64_t ty0, int64_t ty1, const ConvRows& dst,
                             const TileRowDone* done);
void ConvFloatWinogradAvx2(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                           int64_t n, int64_t ty0, int64_t ty1, const ConvRows& dst,
                           const TileRowDone* done);
void WinogradCodesAvx512(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                         int64_t n, int64_t ty0, int64_t ty1, uint8_t* out);
void WinogradCodesAvx2(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                       int64_t n, int64_t ty0, int64_t ty1, uint8_t* out);
#endif

}  // namespace dorefa

#endif  // DOREFA_CSRC_CONV_FLOAT_WINOGRAD_H_
