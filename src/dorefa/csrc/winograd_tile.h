// The Winograd tile rows of conv_float_winograd.h for one vector ISA (WinogradRows<Isa>: float
// rows; WinogradCodeRows<Isa>: their codes), F(2, 3) and F(2, 4) (the structs F23, F24).
//
// Isa provides kLanes (tiles per vector), kOuts (channels a pass of the sums), Vec, Load, Store,
// Set1, Add, Sub, Fma(a, b, c) = a b + c and Fnma(a, b, c) = c - a b (one rounding each),
// Interleave(y0, y1, ncols, dst): the lanes of y0 and y1 alternated (y0[0], y1[0], y0[1], ...)
// to dst[0 .. ncols), ncols <= 2 L, and Codes(v, count, b, e, levels, dst): the codes of count
// <= L floats proved against e (float_codes_simd.h), the mask of those not proved.
// Every lane runs the same operations in the same order, so every width gives the same bits.
// Internal linkage, one copy per ISA file (as lut_tile.h).
#ifndef DOREFA_CSRC_WINOGRAD_TILE_H_
#define DOREFA_CSRC_WINOGRAD_TILE_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "conv_float_winograd.h"
#include "unroll.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

// The first three steps of A^T m shared by F(2, 4) and F(2, 3) (their first two rows of A^T
// start 1 1 1 / 0 1 -1): y0 = (m0 + m1) + m2, y1 = m1 - m2; j < 3.
template <class Isa>
inline void AddAFirst(int j, typename Isa::Vec m, typename Isa::Vec* y0, typename Isa::Vec* y1) {
  if (j == 0) {
    *y0 = m;
  } else if (j == 1) {
    *y0 = Isa::Add(*y0, m);
    *y1 = m;
  } else {
    *y0 = Isa::Add(*y0, m);
    *y1 = Isa::Sub(*y1, m);
  }
}

// F(2, 4): a tile's patch 5 x 5 (conv_float_winograd.h).
struct F24 {
  static constexpr int kN = 5;
  // v = B^T d, 5 subtractions and 4 FMAs (2 x is exact):
  //   v0 = 2 (d0 - d2) + (d3 - d1)   v1 = (d3 - d2) - 2 d1   v2 = 2 (d1 - d2) + (d3 - d2)
  //   v3 = d3 - d1                   v4 = (d4 - d2) - 2 (d3 - d1)
  template <class Isa>
  static void TransformB(const typename Isa::Vec (&d)[kN], typename Isa::Vec (&v)[kN]) {
    const typename Isa::Vec two = Isa::Set1(2.0f);
    const auto s31 = Isa::Sub(d[3], d[1]), s32 = Isa::Sub(d[3], d[2]);
    v[0] = Isa::Fma(two, Isa::Sub(d[0], d[2]), s31);
    v[1] = Isa::Fnma(two, d[1], s32);
    v[2] = Isa::Fma(two, Isa::Sub(d[1], d[2]), s32);
    v[3] = s31;
    v[4] = Isa::Fnma(two, s31, Isa::Sub(d[4], d[2]));
  }
  // (y0, y1) = A^T m, one m_j at a time (AddA(j, m_j, ..), j = 0 .. 4, in order):
  //   y0 = ((m0 + m1) + m2) + m3,   y1 = ((m1 - m2) + 2 m3) + m4.
  template <class Isa>
  static void AddA(int j, typename Isa::Vec m, typename Isa::Vec* y0, typename Isa::Vec* y1) {
    if (j < 3) {
      AddAFirst<Isa>(j, m, y0, y1);
    } else if (j == 3) {
      *y0 = Isa::Add(*y0, m);
      *y1 = Isa::Fma(Isa::Set1(2.0f), m, *y1);
    } else {
      *y1 = Isa::Add(*y1, m);
    }
  }
};

// F(2, 3): a tile's patch 4 x 4 (conv_float_winograd.h).
struct F23 {
  static constexpr int kN = 4;
  // v = B^T d: v0 = d0 - d2, v1 = d1 + d2, v2 = d2 - d1, v3 = d1 - d3.
  template <class Isa>
  static void TransformB(const typename Isa::Vec (&d)[kN], typename Isa::Vec (&v)[kN]) {
    v[0] = Isa::Sub(d[0], d[2]);
    v[1] = Isa::Add(d[1], d[2]);
    v[2] = Isa::Sub(d[2], d[1]);
    v[3] = Isa::Sub(d[1], d[3]);
  }
  // (y0, y1) = A^T m, in order: y0 = (m0 + m1) + m2, y1 = (m1 - m2) - m3.
  template <class Isa>
  static void AddA(int j, typename Isa::Vec m, typename Isa::Vec* y0, typename Isa::Vec* y1) {
    if (j < 3)
      AddAFirst<Isa>(j, m, y0, y1);
    else
      *y1 = Isa::Sub(*y1, m);
  }
};

// R for padded-input rows of phase row u in [u0, u0 + nu) of image n, stride S: r[((k * 2 +
// par) * nu + u - u0) * rt + t] = P_k[u][2t + par], t < rt (zero past the padded input), k =
// (c S + pi) S + pj. Column 2 S t + m of an input row goes to pj = m % S, par = m / S: one pass
// over the row into its 2 S planes.
template <int S>
void PhasePlanes(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t u0, int64_t nu,
                 int64_t rt, float* r) {
  constexpr int kM = 2 * S;
  const int64_t whole = std::min(rt, p.wp / kM);  // t with all 2 S columns inside the row
  for (int64_t c = 0; c < g.c; ++c) {
    const float* img = p.xf + (n * g.c + c) * p.hp * p.wp;
    for (int pi = 0; pi < S; ++pi) {
      for (int64_t u = u0; u < u0 + nu; ++u) {
        float* dst[kM];
        for (int m = 0; m < kM; ++m)
          dst[m] = r + ((((c * S + pi) * S + m % S) * 2 + m / S) * nu + u - u0) * rt;
        const int64_t row = S * u + pi;
        int64_t t = 0;
        if (row < p.hp) {
          const float* src = img + row * p.wp;
          for (; t < whole; ++t)
            DOREFA_UNROLL for (int m = 0; m < kM; ++m) dst[m][t] = src[kM * t + m];
          for (int m = 0; m < kM; ++m)
            for (int64_t i = t; i < rt; ++i) dst[m][i] = kM * i + m < p.wp ? src[kM * i + m] : 0.0f;
        } else {
          for (int m = 0; m < kM; ++m) std::fill(dst[m], dst[m] + rt, 0.0f);
        }
      }
    }
  }
}

// What every block of a band of tile rows reads and writes (WinogradRowsF).
struct WinogradBand {
  const FloatConvGeom* g;
  const WinogradPlan* w;
  const ConvRows* dst;
  const float* r;       // the band's phase planes (PhasePlanes)
  int64_t rt, nu, ty0;  // their row length and rows; the band's first tile row
  float* vb;            // V of the block: (N^2, K, L)
  float* sb;            // A^T along j of the block's sums: (N, 2, op, L)
  uint32_t* vmax;       // nullptr, or (N^2): the bits of max |V| over the row's blocks
};

// vmax[xi] = max(vmax[xi], max |v|) over a block's V (as bits: MaxAbsBits).
inline void MaxAbsV(const float* vb, int xis, int64_t per_xi, uint32_t* vmax) {
  for (int xi = 0; xi < xis; ++xi) vmax[xi] = MaxAbsBits(vb + xi * per_xi, per_xi, vmax[xi]);
}

// The tiles [t0, t0 + Isa::kLanes) of tile row ty: V, the sums, Y (tiles past tw are computed
// from the zero padding of the planes and not stored).
template <class Isa, class F>
void WinogradBlock(const WinogradBand& band, int64_t ty, int64_t t0) {
  constexpr int kWinoN = F::kN;
  constexpr int64_t L = Isa::kLanes;
  using Vec = typename Isa::Vec;
  const FloatConvGeom& g = *band.g;
  const WinogradPlan& w = *band.w;
  const int64_t K = w.k;
  float* vb = band.vb;
  float* sb = band.sb;
  // V_k = B^T d_k B for every phase channel: rows, then columns.
  for (int64_t k = 0; k < K; ++k) {
    Vec rows[kWinoN][kWinoN];  // rows[a'][j] = (B^T applied along b') of patch row a'
    DOREFA_UNROLL for (int a = 0; a < kWinoN; ++a) {
      Vec d[kWinoN];
      DOREFA_UNROLL for (int b = 0; b < kWinoN; ++b) d[b] = Isa::Load(
          band.r + ((k * 2 + b % 2) * band.nu + 2 * (ty - band.ty0) + a) * band.rt + t0 + b / 2);
      F::template TransformB<Isa>(d, rows[a]);
    }
    DOREFA_UNROLL for (int j = 0; j < kWinoN; ++j) {
      Vec col[kWinoN];
      DOREFA_UNROLL for (int a = 0; a < kWinoN; ++a) col[a] = rows[a][j];
      Vec v[kWinoN];
      F::template TransformB<Isa>(col, v);
      DOREFA_UNROLL for (int i = 0; i < kWinoN; ++i)
          Isa::Store(vb + ((i * kWinoN + j) * K + k) * L, v[i]);
    }
  }
  if (band.vmax != nullptr) MaxAbsV(vb, kWinoN * kWinoN, K * L, band.vmax);
  // Per row i of the positions and Isa::kOuts channels: M[i][j][o] = sum_k U[i j][k][o]
  // V[i j][k] (FMAs in k order), then (s0, s1)[i][o] = A^T along j, in registers.
  constexpr int kO = Isa::kOuts;
  for (int i = 0; i < kWinoN; ++i) {
    for (int64_t ob = 0; ob < w.op; ob += kO) {
      Vec s0[kO], s1[kO];
      DOREFA_UNROLL for (int j = 0; j < kWinoN; ++j) {
        const int xi = i * kWinoN + j;
        const float* u = w.u.data() + xi * K * w.op + ob;
        const float* v = vb + xi * K * L;
        Vec acc[kO];
        DOREFA_UNROLL for (int o = 0; o < kO; ++o) acc[o] = Isa::Set1(0.0f);
        for (int64_t k = 0; k < K; ++k) {
          const Vec vk = Isa::Load(v + k * L);
          DOREFA_UNROLL for (int o = 0; o < kO; ++o) acc[o] =
              Isa::Fma(Isa::Set1(u[k * w.op + o]), vk, acc[o]);
        }
        DOREFA_UNROLL for (int o = 0; o < kO; ++o) F::template AddA<Isa>(j, acc[o], &s0[o], &s1[o]);
      }
      DOREFA_UNROLL for (int o = 0; o < kO; ++o) {
        Isa::Store(sb + ((i * 2) * w.op + ob + o) * L, s0[o]);
        Isa::Store(sb + ((i * 2 + 1) * w.op + ob + o) * L, s1[o]);
      }
    }
  }
  // Y = A^T S + bias per channel (along i), the tiles' two columns interleaved.
  const int64_t ncols = std::min<int64_t>(2 * L, g.ow - 2 * t0);
  for (int64_t o = 0; o < g.o; ++o) {
    Vec y00, y10, y01, y11;  // y[r][s]: row 2 ty + r, column 2 tx + s
    DOREFA_UNROLL for (int i = 0; i < kWinoN; ++i) {
      F::template AddA<Isa>(i, Isa::Load(sb + ((i * 2) * w.op + o) * L), &y00, &y10);
      F::template AddA<Isa>(i, Isa::Load(sb + ((i * 2 + 1) * w.op + o) * L), &y01, &y11);
    }
    const Vec b = Isa::Set1(w.bias[o]);
    Isa::Interleave(Isa::Add(y00, b), Isa::Add(y01, b), ncols, band.dst->Row(o, 2 * ty) + 2 * t0);
    if (2 * ty + 1 < g.oh)
      Isa::Interleave(Isa::Add(y10, b), Isa::Add(y11, b), ncols,
                      band.dst->Row(o, 2 * ty + 1) + 2 * t0);
  }
}

// The tile rows [ty0, ty1) of image n: the band's phase planes, then every row's blocks of
// Isa::kLanes tiles; a row's last few tiles, if Isa::Half (narrower vectors, the same
// operations a lane) holds them, in one Half block (ResNet's stem: 56 tiles a row = 3 x 16 on
// zmm + 8 on ymm, not 4 x 16).
template <class Isa, class F>
void WinogradRowsF(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w, int64_t n,
                   int64_t ty0, int64_t ty1, const ConvRows& dst, const TileRowDone* done,
                   uint32_t* vmax) {
  using Half = typename Isa::Half;
  constexpr int64_t L = Isa::kLanes;
  const int64_t K = w.k, xis = int64_t{F::kN} * F::kN;
  const int64_t rt = (w.tw + L - 1) / L * L + 2;  // the last block reads 2 past its tiles
  const int64_t nu = 2 * (ty1 - ty0) + F::kN - 2;
  static thread_local std::vector<float> rbuf, vbuf, sbuf;
  rbuf.resize(static_cast<size_t>(K * 2 * nu * rt));
  vbuf.resize(static_cast<size_t>(xis * K * L));
  sbuf.resize(static_cast<size_t>(F::kN * 2 * w.op * L));
  if (w.s == 4)
    PhasePlanes<4>(g, p, n, 2 * ty0, nu, rt, rbuf.data());
  else
    PhasePlanes<2>(g, p, n, 2 * ty0, nu, rt, rbuf.data());
  const WinogradBand band{&g, &w, &dst, rbuf.data(), rt, nu, ty0, vbuf.data(), sbuf.data(), vmax};
  for (int64_t ty = ty0; ty < ty1; ++ty) {
    for (int64_t t0 = 0; t0 < w.tw; t0 += L) {
      if constexpr (!std::is_void_v<Half>) {
        if (w.tw - t0 <= Half::kLanes) {
          WinogradBlock<Half, F>(band, ty, t0);
          continue;
        }
      }
      WinogradBlock<Isa, F>(band, ty, t0);
    }
    if (done != nullptr) (*done)(ty);
  }
}

// FloatWinogradFn (conv_float_winograd.h) on Isa: F(2, 3) or F(2, 4) by the plan; vmax
// (nullptr: none) collects max |V| of each tile row's blocks for `done`.
template <class Isa>
void WinogradRows(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w, int64_t n,
                  int64_t ty0, int64_t ty1, const ConvRows& dst, const TileRowDone* done,
                  uint32_t* vmax = nullptr) {
  if (w.n == F23::kN)
    WinogradRowsF<Isa, F23>(g, p, w, n, ty0, ty1, dst, done, vmax);
  else
    WinogradRowsF<Isa, F24>(g, p, w, n, ty0, ty1, dst, done, vmax);
}

// FloatWinogradCodesFn (conv_float_winograd.h) on Isa: each tile row's two conv rows into a
// ring, then their codes, each proved by the row's E (WinogradRowBounds, from the row's max |V|)
// or queued in p.pending.
template <class Isa>
void WinogradCodeRows(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                      int64_t n, int64_t ty0, int64_t ty1, uint8_t* out) {
  static thread_local std::vector<float> ring, eps;
  ring.resize(static_cast<size_t>(g.o * 2 * g.ow));
  eps.resize(static_cast<size_t>(w.op));
  const ConvRows rows{ring.data(), 2 * g.ow, g.ow, 2};
  const float levels = static_cast<float>((1 << g.bits) - 1);
  const int64_t plane = g.oh * g.ow;
  uint32_t vmax[kMaxWinoXi] = {};
  const TileRowDone done = [&](int64_t ty) {
    WinogradRowBounds(w, vmax, p.eps, eps.data());
    std::fill(vmax, vmax + kMaxWinoXi, 0u);
    for (int64_t y = 2 * ty; y < std::min(g.oh, 2 * ty + 2); ++y)
      for (int64_t o = 0; o < g.o; ++o) {
        const float* v = rows.Row(o, y);
        uint8_t* d = out + o * plane + y * g.ow;
        for (int64_t x0 = 0; x0 < g.ow; x0 += Isa::kLanes) {
          uint32_t bad = Isa::Codes(v + x0, std::min<int64_t>(Isa::kLanes, g.ow - x0), p.bias[o],
                                    eps[o], levels, d + x0);
          for (; bad != 0; bad &= bad - 1) {
            const int64_t x = x0 + __builtin_ctz(bad);
            p.pending->Add(n, o, y, x, d + x);
          }
        }
      }
  };
  WinogradRows<Isa>(g, p, w, n, ty0, ty1, rows, &done, vmax);
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_WINOGRAD_TILE_H_
