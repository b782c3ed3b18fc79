// Weight gradient of a layer with one output pixel (P = 1: the last conv of a network, a
// linear layer) as a float64 outer-product sum (wgrad.h has the sums), the driver shared by the
// AVX-512 and AVX2 files:
//
//   S_b[o, k] = (2 c_b[o] - n_g) X_b[k],   dW[o, k] = sum_b scale_b S_b[o, k]  (batch order)
//
// With one pixel there is nothing to reduce in integers; the cost is the batch sum itself, one
// float64 step per (sample, output). When every scale_b is a float32 value (24 significant
// bits), A_b[o] = scale_b (2 c_b[o] - n_g) is exact in double (24 + 9 bits), and so is
// A_b[o] X_b[k] = scale_b S_b[o, k] (+ 8 bits): then acc + scale_b S_b, rounded once, is one
// FMA, and dW is a register-blocked double GEMM over the batch in order that equals the spec's
// multiply-then-add bit for bit. Training passes integers below 2^24 (the scales' grid; on
// VNNI the digit route takes them first, wgrad_digits.h); other scales take the general path.
//
// Isa gives the register tile (kRows channels x kVecs vectors of kWidth doubles) and its vector
// operations (Vec, Zero, LoadX: kWidth int32 codes as doubles, Set1, Fma, Store). Internal linkage
// for the same reason as wgrad_direct.h.
#ifndef DOREFA_CSRC_WGRAD_OUTER_H_
#define DOREFA_CSRC_WGRAD_OUTER_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "thread_pool.h"
#include "wgrad.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

bool OuterApplies(const WgradGeom& g, const WgradOutput& out) {
  return g.P() == 1 && out.s == nullptr && Float32Scales(g, out);
}

int64_t OuterRoundUp(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// One register tile: kRows channels x kVecs kWidth columns, the whole batch in order,
// accumulators in registers, into acc. `at` holds the tile's rows of A sample after sample
// (n x kRows), `xt` its columns of X (n x kVecs kWidth): each read in order (rows of A and X
// read across samples at their full pitch, 4 KiB and 25 KiB apart on svhn's conv6, fell in a
// few cache sets and missed L1 at every sample).
template <class Isa>
void OuterTile(const double* at, const int32_t* xt, int64_t n, double* acc) {
  constexpr int kRows = Isa::kRows, kVecs = Isa::kVecs, kWidth = Isa::kWidth;
  typename Isa::Vec s[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) s[r][v] = Isa::Zero();
  for (int64_t b = 0; b < n; ++b) {
    const int32_t* xb = xt + b * kVecs * kWidth;
    typename Isa::Vec xv[kVecs];
    for (int v = 0; v < kVecs; ++v) xv[v] = Isa::LoadX(xb + v * kWidth);
    const double* ab = at + b * kRows;
    for (int r = 0; r < kRows; ++r) {
      const typename Isa::Vec av = Isa::Set1(ab[r]);
      for (int v = 0; v < kVecs; ++v) s[r][v] = Isa::Fma(av, xv[v], s[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) Isa::Store(acc + (r * kVecs + v) * kWidth, s[r][v]);
}

template <class Isa>
uint32_t WeightGradOuterWith(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                             const WgradOutput& out, int threads) {
  constexpr int64_t kRows = Isa::kRows, kCols = Isa::kVecs * Isa::kWidth;
  const int64_t op = OuterRoundUp(g.o, kRows), kp = OuterRoundUp(g.K(), kCols);
  // A and X tile by tile: A[o][b] at a[(o / kRows) n kRows + b kRows + o % kRows], X[k][b] at
  // xd[(k / kCols) n kCols + b kCols + k % kCols] (padding 0).
  // X as int32 (converted in the tile, beside the FMAs: half the bytes of doubles).
  std::vector<double> a(static_cast<size_t>(g.n * op), 0.0);
  std::vector<int32_t> xd(static_cast<size_t>(g.n * kp), 0);
  const double ng = static_cast<double>((1 << g.g_bits) - 1);
  const uint32_t ors = PackSamples<std::vector<uint8_t>>(threads, g.n, [&](int64_t b, auto& row) {
    uint32_t mine = 0;
    for (int64_t o = 0; o < g.o; ++o) {
      const uint8_t v = c[b * g.o + o];
      mine |= v;
      // exact: see the top of the file
      a[(o / kRows * g.n + b) * kRows + o % kRows] = out.scale[b] * (2.0 * v - ng);
    }
    row.resize(static_cast<size_t>(g.K()));
    const uint8_t* xb = OnePixelWindow(g, x, b, row.data());
    for (int64_t k0 = 0; k0 < g.K(); k0 += kCols) {
      int32_t* dst = xd.data() + (k0 / kCols * g.n + b) * kCols;
      const int64_t m = std::min(kCols, g.K() - k0);
      for (int64_t j = 0; j < m; ++j) dst[j] = xb[k0 + j];
    }
    // every code of x counts towards the OR, including pixels no window reaches
    for (int64_t i = 0; i < g.c * g.h * g.w; ++i) mine |= uint32_t{x[b * g.c * g.h * g.w + i]} << 8;
    return mine;
  });
  const int64_t row_tiles = op / kRows, col_tiles = kp / kCols;
  ParallelForOrThrow(threads, row_tiles * col_tiles, [&](int64_t begin, int64_t end) {
    alignas(64) double acc[kRows * kCols];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o0 = (t % row_tiles) * kRows, k0 = (t / row_tiles) * kCols;
      OuterTile<Isa>(a.data() + o0 * g.n, xd.data() + k0 * g.n, g.n, acc);
      const int64_t rows = std::min<int64_t>(kRows, g.o - o0);
      const int64_t cols = std::min<int64_t>(kCols, g.K() - k0);
      for (int64_t r = 0; r < rows; ++r) out.Write((o0 + r) * g.K() + k0, acc + r * kCols, cols);
    }
  });
  return ors;
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_WGRAD_OUTER_H_
