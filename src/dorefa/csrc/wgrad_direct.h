// Stride-1 (or one-output-pixel) weight gradient that reads the activations in place, the
// driver shared by the VNNI and AVX2 files (wgrad.h has the sums; this is the same S and dW
// without the window matrix):
//
//   U[o, k] = sum_{oy, q, i} c[o, oy, 4q + i] * x'[ci, oy + r, 4q + i + t],   k = (ci, r, t),
//
// x' the input zero-padded by `padding` and shifted by z (int8, as the packed path), c packed as
// L channels x 4 pixels per vector (L = 16 for a zmm, 8 for a ymm; 0 for pixels past OW and
// channels past O). One multiply-add instruction takes a vector of L channels' gradient quads
// and one broadcast 4-byte run of x' read at any alignment: a column k is an offset into x',
// never a copy. The last quad of a row reads up to 3 bytes past the row (into the next row, or
// the buffer's slack): c is 0 for those pixels. Xsum[k] (the window sums) comes from each
// channel's summed-area table.
//
// Work: tiles of (Isa::kVectors * L) channels x Isa::kChunk columns, each running the whole
// batch in order; per sample, register tiles of up to kVectors vectors x kCols columns
// (Isa::Tile<V, C>), finished in registers:
//   S = 2 (U + z Csum[o]) - n_g Xsum[k];   acc[k][o] = acc[k][o] + scale_b * double(S)
// (multiply, then add: -ffp-contract=off, the spec's float steps) or S stored (S mode).
//
// Every ISA's file compiles this header with its own flags, so everything here has internal
// linkage (the anonymous namespace): the linker must never merge an AVX-512 copy of a helper
// into the AVX2 path.
#ifndef DOREFA_CSRC_WGRAD_DIRECT_H_
#define DOREFA_CSRC_WGRAD_DIRECT_H_

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "thread_pool.h"
#include "wgrad.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA, see above

constexpr int64_t kDirectSlack = 64;

// The OR of 16 bytes.
inline uint8_t OrLanes(__m128i v) {
  alignas(16) uint8_t b[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(b), v);
  uint8_t all = 0;
  for (uint8_t x : b) all |= x;
  return all;
}

struct DirectLayout {
  int64_t lanes, hp, wp, qw, pq, ov, xs_size, cq_size;  // padded input, quads per row / sample
  DirectLayout(const WgradGeom& g, int64_t l)
      : lanes(l),
        hp(g.h + 2 * g.padding),
        wp(g.w + 2 * g.padding),
        qw((g.ow + 3) / 4),
        pq(g.oh * qw),  // members initialise in declaration order
        ov((g.o + l - 1) / l),
        xs_size(g.c * hp * wp + kDirectSlack),
        cq_size(ov * pq * 4 * l) {}
  int64_t VectorBytes() const { return 4 * lanes; }
};

struct DirectPacked {
  DirectLayout l;
  std::vector<int8_t> xs;    // [N][C][HP][WP] x - z (padding: -z), then slack
  std::vector<uint8_t> cq;   // [N][OV][PQ][L][4]
  std::vector<uint32_t> zc;  // [N][OV * L] z * Csum[o] (mod 2^32)
  std::vector<uint32_t> nx;  // [N][K] n_g * Xsum[k] (mod 2^32)
  std::vector<int64_t> col;  // [K] offset of column k's window in a sample's x'
  DirectPacked(const WgradGeom& g, int64_t lanes)
      : l(g, lanes),
        xs(static_cast<size_t>(g.n * l.xs_size)),
        cq(static_cast<size_t>(g.n * l.cq_size)),
        zc(static_cast<size_t>(g.n * l.ov * lanes)),
        nx(static_cast<size_t>(g.n * g.K())),
        col(static_cast<size_t>(g.K())) {
    int64_t k = 0;
    for (int64_t ci = 0; ci < g.c; ++ci)
      for (int64_t r = 0; r < g.kh; ++r)
        for (int64_t t = 0; t < g.kw; ++t) col[k++] = (ci * l.hp + r) * l.wp + t;
  }
};

// x' of one sample, and n_g * Xsum from each channel's summed-area table of the input (a
// window's box clipped to the input: padding codes are 0). Returns the OR of the codes.
// Isa::CopyShifted(src, n, shift, dst): dst[i] = src[i] - shift (int8 bits) for i < n; returns
// the OR of src (rows are short: 7-40 bytes, so a plain loop would run its scalar tail only).
template <class Isa>
uint8_t PackDirectInput(const WgradGeom& g, const DirectLayout& l, const uint8_t* __restrict x,
                        int32_t z, int8_t* __restrict xs, uint32_t* __restrict nx,
                        std::vector<uint32_t>& sat) {
  const int64_t h = g.h, w = g.w, p = g.padding, wp = l.wp, hp = l.hp, sw = w + 1;
  const int8_t shift = static_cast<int8_t>(z);
  std::fill(xs, xs + l.xs_size - kDirectSlack, static_cast<int8_t>(-shift));
  std::fill(xs + l.xs_size - kDirectSlack, xs + l.xs_size, int8_t{0});
  const uint32_t ng = (1u << g.g_bits) - 1;
  sat.assign(static_cast<size_t>((h + 1) * sw), 0);  // sat[y][x]: rows < y, columns < x
  uint8_t any = 0;
  uint32_t* out = nx;
  for (int64_t ci = 0; ci < g.c; ++ci) {
    const uint8_t* src = x + ci * h * w;
    for (int64_t y = 0; y < h; ++y) {
      const uint8_t* __restrict row = src + y * w;
      any |= Isa::CopyShifted(row, w, shift, xs + (ci * hp + y + p) * wp + p);
      const uint32_t* above = sat.data() + y * sw + 1;
      uint32_t* cur = sat.data() + (y + 1) * sw + 1;
      uint32_t run = 0;
      for (int64_t i = 0; i < w; ++i) {
        run += row[i];
        cur[i] = above[i] + run;
      }
    }
    for (int64_t r = 0; r < g.kh; ++r) {
      const int64_t y0 = std::clamp<int64_t>(r - p, 0, h);
      const int64_t y1 = std::clamp<int64_t>(r - p + g.oh, 0, h);
      for (int64_t t = 0; t < g.kw; ++t) {
        const int64_t x0 = std::clamp<int64_t>(t - p, 0, w);
        const int64_t x1 = std::clamp<int64_t>(t - p + g.ow, 0, w);
        const uint32_t box =  // modulo 2^32 (n_g Xsum is only needed modulo 2^32)
            sat[y1 * sw + x1] - sat[y0 * sw + x1] - sat[y1 * sw + x0] + sat[y0 * sw + x0];
        *out++ = ng * box;
      }
    }
  }
  return any;
}

// c of one sample into L-channel x 4-pixel vectors, and z * Csum. Returns the OR of the codes.
uint8_t PackDirectGrads(const WgradGeom& g, const DirectLayout& l, const uint8_t* __restrict c,
                        int32_t z, uint8_t* __restrict cq, uint32_t* __restrict zc) {
  const int64_t ow = g.ow, full = ow / 4, qw = l.qw, vb = l.VectorBytes();
  std::fill(cq, cq + l.cq_size, uint8_t{0});
  std::fill(zc, zc + l.ov * l.lanes, 0u);
  uint8_t all = 0;
  for (int64_t o = 0; o < g.o; ++o) {
    uint8_t* lane = cq + (o / l.lanes) * l.pq * vb + (o % l.lanes) * 4;
    const uint8_t* row = c + o * g.oh * ow;
    uint32_t sum = 0;
    for (int64_t i = 0; i < g.oh * ow; ++i) {
      all |= row[i];
      sum += row[i];
    }
    for (int64_t oy = 0; oy < g.oh; ++oy, row += ow) {
      uint8_t* dst = lane + oy * qw * vb;
      for (int64_t q = 0; q < full; ++q) std::memcpy(dst + q * vb, row + 4 * q, 4);
      for (int64_t i = full * 4; i < ow; ++i) dst[full * vb + i - full * 4] = row[i];
    }
    zc[o] = static_cast<uint32_t>(z) * sum;
  }
  return all;
}

// One register tile of one sample: channel vectors v0 .. v0 + V - 1, columns k0 .. k0 + C - 1.
struct DirectTileArgs {
  const WgradGeom* g;
  const DirectPacked* pk;
  int64_t b, v0, k0;
  double scale;
  double* acc;  // dw mode: acc[j][v * L + lane] for the tile's columns j, row stride kVectors L
  int32_t* s;   // S mode: S of sample b, (O, K)
  int32_t z;

  // The inputs of the tile: sample b's x', its first vector of gradient quads, the columns'
  // offsets, z * Csum of its first channel and n_g * Xsum of its first column.
  const int8_t* Xs() const { return pk->xs.data() + b * pk->l.xs_size; }
  const uint8_t* Cq() const {
    return pk->cq.data() + b * pk->l.cq_size + v0 * pk->l.pq * pk->l.VectorBytes();
  }
  const int64_t* Col() const { return pk->col.data() + k0; }
  const uint32_t* Zc() const { return pk->zc.data() + (b * pk->l.ov + v0) * pk->l.lanes; }
  const uint32_t* Nx() const { return pk->nx.data() + b * g->K() + k0; }
  // S mode: the L lanes of vector v, column j, stored into S.
  void StoreS(int v, int j, const int32_t* lanes) const {
    const int64_t o0 = (v0 + v) * pk->l.lanes, n = std::min<int64_t>(pk->l.lanes, g->o - o0);
    for (int64_t i = 0; i < n; ++i) s[(o0 + i) * g->K() + k0 + j] = lanes[i];
  }
};

using DirectTileFn = void (*)(const DirectTileArgs&);

// table[V - 1][C - 1] = Isa::Tile<V, C>, for V <= Isa::kVectors and C <= Isa::kCols.
template <class Isa, int V, int... J>
constexpr std::array<DirectTileFn, sizeof...(J)> DirectRow(std::integer_sequence<int, J...>) {
  return {&Isa::template Tile<V, J + 1>...};
}
template <class Isa, int... I>
constexpr auto DirectTable(std::integer_sequence<int, I...>) {
  return std::array{DirectRow<Isa, I + 1>(std::make_integer_sequence<int, Isa::kCols>{})...};
}

// Work tile: channel vectors [v0, v0 + nv), columns [k0, k0 + nk); the whole batch in order.
template <class Isa>
void RunDirectWorkTile(const WgradGeom& g, const DirectPacked& pk, int32_t z,
                       const WgradOutput& out, int64_t v0, int nv, int64_t k0, int nk,
                       std::vector<double>& acc) {
  constexpr int64_t kStride = Isa::kVectors * Isa::kLanes;
  static constexpr auto kTiles = DirectTable<Isa>(std::make_integer_sequence<int, Isa::kVectors>{});
  std::fill(acc.begin(), acc.end(), 0.0);
  for (int64_t b = 0; b < g.n; ++b) {
    for (int j0 = 0; j0 < nk; j0 += Isa::kCols) {
      DirectTileArgs a{&g, &pk, b, v0, k0 + j0, 0.0, nullptr, nullptr, z};
      if (out.s != nullptr) {
        a.s = out.s + b * g.o * g.K();
      } else {
        a.scale = out.scale[b], a.acc = acc.data() + j0 * kStride;
      }
      kTiles[nv - 1][std::min(Isa::kCols, nk - j0) - 1](a);
    }
  }
  if (out.s != nullptr) return;
  const int64_t o_end = std::min(g.o, (v0 + nv) * Isa::kLanes);
  for (int64_t o = v0 * Isa::kLanes; o < o_end; ++o)
    out.Write(o * g.K() + k0, acc.data() + (o - v0 * Isa::kLanes), nk, kStride);
}

// The whole direct weight gradient on Isa's register tiles.
template <class Isa>
uint32_t WeightGradDirectWith(const WgradGeom& g, const uint8_t* c, const uint8_t* x, int32_t z,
                              const WgradOutput& out, int threads) {
  DirectPacked pk(g, Isa::kLanes);
  const DirectLayout& l = pk.l;
  const uint32_t ors = PackSamples<std::vector<uint32_t>>(threads, g.n, [&](int64_t b, auto& sat) {
    const uint32_t cs = PackDirectGrads(g, l, c + b * g.o * g.P(), z, pk.cq.data() + b * l.cq_size,
                                        pk.zc.data() + b * l.ov * l.lanes);
    const uint32_t xs =
        PackDirectInput<Isa>(g, l, x + b * g.c * g.h * g.w, z, pk.xs.data() + b * l.xs_size,
                             pk.nx.data() + b * g.K(), sat);
    return cs | xs << 8;
  });
  const int64_t row_tiles = (l.ov + Isa::kVectors - 1) / Isa::kVectors;
  const int64_t col_tiles = (g.K() + Isa::kChunk - 1) / Isa::kChunk;
  ParallelForOrThrow(threads, row_tiles * col_tiles, [&](int64_t begin, int64_t end) {
    const int64_t acc_size = Isa::kChunk * Isa::kVectors * Isa::kLanes;
    std::vector<double> acc(out.s != nullptr ? 0 : static_cast<size_t>(acc_size));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t v0 = (t % row_tiles) * Isa::kVectors, k0 = (t / row_tiles) * Isa::kChunk;
      const int nv = static_cast<int>(std::min<int64_t>(Isa::kVectors, l.ov - v0));
      const int nk = static_cast<int>(std::min<int64_t>(Isa::kChunk, g.K() - k0));
      RunDirectWorkTile<Isa>(g, pk, z, out, v0, nv, k0, nk, acc);
    }
  });
  return ors;
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_WGRAD_DIRECT_H_
