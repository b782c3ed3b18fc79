// Stride-1 (or one-output-pixel) weight gradient that reads the activations in place, the
// driver shared by the VNNI and AVX2 files (wgrad.h has the sums; this is the same S and dW
// without the window matrix). With n_g <= 127 the signed gradient factor g = 2c - n_g fits
// int8 and the activation codes x fit uint8, so the multiply-add instructions (u8 x s8) sum S
// itself, with no correction terms:
//
//   S[o, k] = sum_{q, i} g[o, 4q + i] * X_t[ci, r OW + 4q + i],   k = (ci, r, t),
//
// over the output pixels p = oy OW + ox in quads of 4, with X_t the strip plane of tap column t:
// X_t[ci, y, ox] = x[ci, y - padding, ox + t - padding] (0 outside the input) for the
// H + 2 padding rows, row pitch OW. Column k's operand over all pixels is one contiguous run of
// X_t from row r (output row oy reads input row oy + r), so a quad may span output rows and a
// sample has ceil(P / 4) quads (quads per output row would waste 3 of 8 lanes on a 5-wide map).
// The last quad reads up to 3 bytes past P (the next plane, or the buffer's slack): g is 0 for
// those pixels. g is packed as L channels x 4 pixels per vector (L = 16 for a zmm, 8 for a
// ymm; 0 for pixels past P and channels past O); one multiply-add instruction takes a
// broadcast 4-byte run of a strip and a vector of L channels' quads.
//
// Work: tiles of (Isa::kVectors * L) channels x Isa::kChunk columns; each runs the batch in
// order, in blocks of samples whose packed gradients take at most Isa::kBlockBytes, calling the
// register tiles Isa::Tile<V, C> (up to kVectors vectors x kCols columns) once per block. Per
// sample a register tile adds its sums S to float64 sums acc[k][o] = acc[k][o] +
// scale_b * double(S) (multiply, then add: -ffp-contract=off, the spec's float steps; one FMA
// where that product is exact, see DirectExactProducts), or stores S (S mode).
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

#include "buffers.h"
#include "thread_pool.h"
#include "wgrad.h"
#include "wgrad_digits.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA, see above

constexpr int64_t kDirectSlack = 64;

struct DirectLayout {
  int64_t lanes, plane, pq, ov, xs_size, gq_size;  // strips and quads per sample
  DirectLayout(const WgradGeom& g, int64_t l)
      : lanes(l),
        plane((g.h + 2 * g.padding) * g.ow),
        pq(g.PQ()),
        ov((g.o + l - 1) / l),
        xs_size(g.kw * g.c * plane + kDirectSlack),
        gq_size(ov * pq * 4 * l) {}
  int64_t VectorBytes() const { return 4 * lanes; }
};

// True when every term scale_b * S_b is exact in float64 (scale_b a float32 value: 24
// significant bits; |S_b| <= P n_g n_a < 2^29), so acc + scale_b S_b rounded once (one FMA)
// equals the spec's multiply-then-add.
inline bool DirectExactProducts(const WgradGeom& g, const WgradOutput& out) {
  if (out.s != nullptr) return false;
  const int64_t bound = g.P() * ((int64_t{1} << g.g_bits) - 1) * ((int64_t{1} << g.a_bits) - 1);
  return bound < (int64_t{1} << 29) && Float32Scales(g, out);
}

struct DirectPacked {
  DirectLayout l;
  bool exact;                // DirectExactProducts
  int64_t int_flush = 0;     // IntScalePlan's flush where the ISA's tiles take it (kInt)
  PoolScratch<uint8_t> xs;   // [N][KW][C][H + 2 padding][OW] strips of x (padding 0), slack
  PoolScratch<int8_t> gq;    // [N][OV][PQ][L][4] g = 2c - n_g
  std::vector<int64_t> col;  // [K] offset of column k's strip in a sample's xs
  DirectPacked(const WgradGeom& g, int64_t lanes, const WgradOutput& out)
      : l(g, lanes),
        exact(DirectExactProducts(g, out)),
        xs(static_cast<size_t>(g.n * l.xs_size)),
        gq(static_cast<size_t>(g.n * l.gq_size)),
        col(static_cast<size_t>(g.K())) {
    int64_t k = 0;
    for (int64_t ci = 0; ci < g.c; ++ci)
      for (int64_t r = 0; r < g.kh; ++r)
        for (int64_t t = 0; t < g.kw; ++t) col[k++] = (t * g.c + ci) * l.plane + r * g.ow;
  }
};

// The strips of one sample: Isa::StripPlanes(src, n, h, w, p, first, last, shift, dst, step,
// ow, hp) writes the planes of n channels of one tap column, plane i from src + i h w to
// dst + i step: hp rows of ow bytes, row y + p = x row y at columns [first, last) (read from
// src + y w + ox + shift), zeros elsewhere. Plane (t, ci) goes to xs + (t C + ci) stride (the
// sample's own buffer: stride = l.plane, its slack zeroed; wgrad_amx.cpp's digits interleave
// the samples' planes).
// Only channels [c0, c1) when c1 > 0 (wgrad_amx.cpp's threads pack their own).
template <class Isa>
void PackDirectInput(const WgradGeom& g, const DirectLayout& l, const uint8_t* __restrict x,
                     uint8_t* __restrict xs, int64_t stride = 0, int64_t c0 = 0, int64_t c1 = 0) {
  const int64_t h = g.h, w = g.w, p = g.padding, ow = g.ow, hp = h + 2 * p;
  const int64_t step = stride > 0 ? stride : l.plane, c_end = c1 > 0 ? c1 : g.c;
  for (int64_t t = 0; t < g.kw; ++t) {
    // output columns whose input column ox + t - p is inside [0, w)
    const int64_t first = std::max<int64_t>(0, p - t),
                  last = std::max(first, std::min(ow, w + p - t));
    Isa::StripPlanes(x + c0 * h * w, c_end - c0, h, w, p, first, last, t - p,
                     xs + (t * g.c + c0) * step, step, ow, hp);
  }
  if (stride == 0) std::memset(xs + l.xs_size - kDirectSlack, 0, kDirectSlack);
}

// Isa::PackGrads(g, l, c, gq) packs one sample's g = 2c - n_g (n_g <= 127: no overflow) as
// above, 0 for pixels past P and channels past O (by register transposes of 4-byte quads).

// The OR of n bytes.
inline uint8_t OrBytes(const uint8_t* p, int64_t n) {
  uint64_t acc = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    acc |= v;
  }
  for (; i < n; ++i) acc |= p[i];
  for (int s = 32; s >= 8; s /= 2) acc |= acc >> s;
  return static_cast<uint8_t>(acc);
}

// What a register tile does with a sample's sums S: store them (S mode), or add scale_b * S to
// the float64 sums by one FMA where that product is exact (DirectExactProducts), else by a
// multiply, then an add (the spec's steps); or, on training's integer scales where the ISA's
// tiles have it, sum q_lo S and q_hi S in int32 (kInt: wgrad_digits.h's IntScalePlan).
enum class DirectMode { kS, kMulAdd, kFma, kInt };

// One register tile over a block of samples: channel vectors v0 .. v0 + V - 1, columns
// k0 .. k0 + C - 1, samples b0 .. b1 - 1 in order.
struct DirectTileArgs {
  const WgradGeom* g;
  const DirectPacked* pk;
  const WgradOutput* out;
  int64_t b0, b1, v0, k0;
  double* acc;  // dW mode: acc[j][v * L + lane] for the tile's columns j, row stride kVectors L

  // Sample b's inputs of the tile: its strips, its first vector of gradient quads; the
  // columns' offsets.
  const uint8_t* Xs(int64_t b) const { return pk->xs.data() + b * pk->l.xs_size; }
  const int8_t* Gq(int64_t b) const {
    return pk->gq.data() + b * pk->l.gq_size + v0 * pk->l.pq * pk->l.VectorBytes();
  }
  const int64_t* Col() const { return pk->col.data() + k0; }
  DirectMode Mode() const {
    if (out->s != nullptr) return DirectMode::kS;
    if (pk->int_flush > 0) return DirectMode::kInt;
    return pk->exact ? DirectMode::kFma : DirectMode::kMulAdd;
  }
  // S mode: the L lanes of vector v, column j, of sample b stored into S (N, O, K).
  void StoreS(int64_t b, int v, int j, const int32_t* lanes) const {
    const int64_t o0 = (v0 + v) * pk->l.lanes, n = std::min<int64_t>(pk->l.lanes, g->o - o0);
    int32_t* s = out->s + b * g->o * g->K();
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

// Work tile: channel vectors [v0, v0 + nv), columns [k0, k0 + nk); the whole batch in order,
// in blocks of samples.
template <class Isa>
void RunDirectWorkTile(const WgradGeom& g, const DirectPacked& pk, const WgradOutput& out,
                       int64_t v0, int nv, int64_t k0, int nk, std::vector<double>& acc) {
  constexpr int64_t kStride = Isa::kVectors * Isa::kLanes;
  static constexpr auto kTiles = DirectTable<Isa>(std::make_integer_sequence<int, Isa::kVectors>{});
  std::fill(acc.begin(), acc.end(), 0.0);
  const int64_t block =
      std::max<int64_t>(1, Isa::kBlockBytes / (nv * pk.l.pq * pk.l.VectorBytes()));
  for (int64_t b0 = 0; b0 < g.n; b0 += block) {
    for (int j0 = 0; j0 < nk; j0 += Isa::kCols) {
      const DirectTileArgs a{&g,
                             &pk,
                             &out,
                             b0,
                             std::min(g.n, b0 + block),
                             v0,
                             k0 + j0,
                             out.s != nullptr ? nullptr : acc.data() + j0 * kStride};
      kTiles[nv - 1][std::min(Isa::kCols, nk - j0) - 1](a);
    }
  }
  if (out.s != nullptr) return;
  const int64_t o_end = std::min(g.o, (v0 + nv) * Isa::kLanes);
  for (int64_t o = v0 * Isa::kLanes; o < o_end; ++o)
    out.Write(o * g.K() + k0, acc.data() + (o - v0 * Isa::kLanes), nk, kStride);
}

// The whole direct weight gradient on Isa's register tiles (n_g <= 127; DirectFits).
template <class Isa>
uint32_t WeightGradDirectWith(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                              const WgradOutput& out, int threads) {
  DirectPacked pk(g, Isa::kLanes, out);
  if constexpr (Isa::kIntScales) pk.int_flush = PlanIntScales(g, out).flush;
  const DirectLayout& l = pk.l;
  struct None {};
  const uint32_t ors = PackSamples<None>(threads, g.n, [&](int64_t b, None&) {
    const uint8_t* cb = c + b * g.o * g.P();
    const uint8_t* xb = x + b * g.c * g.h * g.w;
    Isa::PackGrads(g, l, cb, pk.gq.data() + b * l.gq_size);
    PackDirectInput<Isa>(g, l, xb, pk.xs.data() + b * l.xs_size);
    return uint32_t{OrBytes(cb, g.o * g.P())} | uint32_t{OrBytes(xb, g.c * g.h * g.w)} << 8;
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
      RunDirectWorkTile<Isa>(g, pk, out, v0, nv, k0, nk, acc);
    }
  });
  return ors;
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_WGRAD_DIRECT_H_
