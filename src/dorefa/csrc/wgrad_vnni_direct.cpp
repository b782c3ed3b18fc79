// Stride-1 (or one-output-pixel) weight gradient on AVX-512 VNNI that reads the activations in
// place (wgrad.h has the sums; this is the same S and dW without the window matrix):
//
//   U[o, k] = sum_{oy, q, i} c[o, oy, 4q + i] * x'[ci, oy + r, 4q + i + t],   k = (ci, r, t),
//
// x' the input zero-padded by `padding` and shifted by z (int8, as the packed path), c packed as
// 16 channels x 4 pixels per 64-byte vector (0 for pixels past OW and channels past O). One
// VPDPBUSD multiplies a vector of 16 channels' gradient quads by one broadcast 4-byte run of
// x' read at any alignment: a column k is an offset into x', never a copy. The last quad of a
// row reads up to 3 bytes past the row (into the next row, or the buffer's slack): c is 0 for
// those pixels. Xsum[k] (the window sums) comes from each channel's summed-area table.
//
// Work: tiles of 64 channels x 24 columns, each running the whole batch in order; per sample,
// 4 register tiles of (4 vectors x 6 columns) = 24 zmm accumulators, finished in registers:
//   S = 2 (U + z Csum[o]) - n_g Xsum[k];   acc[k][o] = acc[k][o] + scale_b * double(S)
// (multiply, then add: -ffp-contract=off, the spec's float steps) or S stored (S mode).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "thread_pool.h"
#include "wgrad.h"

namespace dorefa {
namespace {

constexpr int kVectors = 4;  // channel vectors (16 channels each) per register tile
constexpr int kCols = 6;     // columns per register tile
constexpr int kChunk = 24;   // columns per work tile (its double accumulators stay in L1)
constexpr int64_t kSlack = 64;

struct Layout {
  int64_t hp, wp, qw, pq, ov, xs_size, cq_size;  // padded input, quads per row / sample
  explicit Layout(const WgradGeom& g)
      : hp(g.h + 2 * g.padding),
        wp(g.w + 2 * g.padding),
        qw((g.ow + 3) / 4),
        pq(g.oh * qw),  // members initialise in declaration order
        ov((g.o + 15) / 16),
        xs_size(g.c * hp * wp + kSlack),
        cq_size(ov * pq * 64) {}
};

struct Packed {
  Layout l;
  std::vector<int8_t> xs;    // [N][C][HP][WP] x - z (padding: -z), then slack
  std::vector<uint8_t> cq;   // [N][OV][PQ][16][4]
  std::vector<uint32_t> zc;  // [N][OV * 16] z * Csum[o] (mod 2^32)
  std::vector<uint32_t> nx;  // [N][K] n_g * Xsum[k] (mod 2^32)
  std::vector<int64_t> col;  // [K] offset of column k's window in a sample's x'
  explicit Packed(const WgradGeom& g)
      : l(g),
        xs(static_cast<size_t>(g.n * l.xs_size)),
        cq(static_cast<size_t>(g.n * l.cq_size)),
        zc(static_cast<size_t>(g.n * l.ov * 16)),
        nx(static_cast<size_t>(g.n * g.K())),
        col(static_cast<size_t>(g.K())) {
    int64_t k = 0;
    for (int64_t ci = 0; ci < g.c; ++ci)
      for (int64_t r = 0; r < g.kh; ++r)
        for (int64_t t = 0; t < g.kw; ++t) col[k++] = (ci * l.hp + r) * l.wp + t;
  }
};

// dst[i] = src[i] - shift (int8 bits) for i < n; any |= the codes.
void CopyShifted(const uint8_t* src, int64_t n, int8_t shift, int8_t* dst, __m512i& any) {
  const __m512i z = _mm512_set1_epi8(shift);
  for (int64_t i = 0; i < n; i += 64) {
    const __mmask64 m = n - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (n - i)) - 1;
    const __m512i v = _mm512_maskz_loadu_epi8(m, src + i);
    any = _mm512_or_si512(any, v);
    _mm512_mask_storeu_epi8(dst + i, m, _mm512_sub_epi8(v, z));
  }
}

// cur[i] = above[i] + sum_{j <= i} row[j]: one row of a summed-area table.
void RowPrefix(const uint8_t* __restrict row, int64_t n, const uint32_t* __restrict above,
               uint32_t* __restrict cur) {
  uint32_t run = 0;
  for (int64_t i = 0; i < n; ++i) {
    run += row[i];
    cur[i] = above[i] + run;
  }
}

uint8_t OrBytes(__m512i v) {
  alignas(64) uint8_t b[64];
  _mm512_store_si512(b, v);
  uint8_t all = 0;
  for (uint8_t x : b) all |= x;
  return all;
}

// x' of one sample, and n_g * Xsum from each channel's summed-area table of the input (a
// window's box clipped to the input: padding codes are 0). Returns the OR of the codes.
uint8_t PackInput(const WgradGeom& g, const Layout& l, const uint8_t* __restrict x, int32_t z,
                  int8_t* __restrict xs, uint32_t* __restrict nx, std::vector<uint32_t>& sat) {
  const int64_t h = g.h, w = g.w, p = g.padding, wp = l.wp, hp = l.hp, sw = w + 1;
  const int8_t shift = static_cast<int8_t>(z);
  std::fill(xs, xs + l.xs_size - kSlack, static_cast<int8_t>(-shift));
  std::fill(xs + l.xs_size - kSlack, xs + l.xs_size, int8_t{0});
  const uint32_t ng = (1u << g.g_bits) - 1;
  sat.assign(static_cast<size_t>((h + 1) * sw), 0);  // sat[y][x]: rows < y, columns < x
  __m512i any = _mm512_setzero_si512();
  uint32_t* out = nx;
  for (int64_t ci = 0; ci < g.c; ++ci) {
    const uint8_t* src = x + ci * h * w;
    for (int64_t y = 0; y < h; ++y) {
      CopyShifted(src + y * w, w, shift, xs + (ci * hp + y + p) * wp + p, any);
      RowPrefix(src + y * w, w, sat.data() + y * sw + 1, sat.data() + (y + 1) * sw + 1);
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
  return OrBytes(any);
}

// c of one sample into 16-channel x 4-pixel vectors, and z * Csum. Returns the OR of the codes.
uint8_t PackGrads(const WgradGeom& g, const Layout& l, const uint8_t* __restrict c, int32_t z,
                  uint8_t* __restrict cq, uint32_t* __restrict zc) {
  const int64_t ow = g.ow, full = ow / 4, qw = l.qw;
  std::fill(cq, cq + l.cq_size, uint8_t{0});
  std::fill(zc, zc + l.ov * 16, 0u);
  uint8_t all = 0;
  for (int64_t o = 0; o < g.o; ++o) {
    uint8_t* lane = cq + (o / 16) * l.pq * 64 + (o % 16) * 4;
    const uint8_t* row = c + o * g.oh * ow;
    uint32_t sum = 0;
    for (int64_t i = 0; i < g.oh * ow; ++i) {
      all |= row[i];
      sum += row[i];
    }
    for (int64_t oy = 0; oy < g.oh; ++oy, row += ow) {
      uint8_t* dst = lane + oy * qw * 64;
      for (int64_t q = 0; q < full; ++q) std::memcpy(dst + q * 64, row + 4 * q, 4);
      for (int64_t i = full * 4; i < ow; ++i) dst[full * 64 + i - full * 4] = row[i];
    }
    zc[o] = static_cast<uint32_t>(z) * sum;
  }
  return all;
}

// One register tile of one sample: channel vectors v0 .. v0 + V - 1, columns k0 .. k0 + C - 1.
struct TileArgs {
  const WgradGeom* g;
  const Packed* pk;
  int64_t b, v0, k0;
  double scale;
  double* acc;  // dw mode: acc[j][v * 16 + lane] for the tile's columns j, row stride 64
  int32_t* s;   // S mode: S of sample b, (O, K)
};

template <int V, int C>
void Tile(const TileArgs& a) {
  const Layout& l = a.pk->l;
  const int8_t* xs = a.pk->xs.data() + a.b * l.xs_size;
  const uint8_t* cq = a.pk->cq.data() + a.b * l.cq_size + a.v0 * l.pq * 64;
  const int64_t* col = a.pk->col.data() + a.k0;
  __m512i u[V][C];
  for (int v = 0; v < V; ++v)
    for (int j = 0; j < C; ++j) u[v][j] = _mm512_setzero_si512();
  for (int64_t oy = 0; oy < a.g->oh; ++oy) {
    for (int64_t q = 0; q < l.qw; ++q) {
      const int64_t quad = oy * l.qw + q, pix = oy * l.wp + 4 * q;
      __m512i cv[V];
      for (int v = 0; v < V; ++v) cv[v] = _mm512_loadu_si512(cq + (v * l.pq + quad) * 64);
      for (int j = 0; j < C; ++j) {
        int32_t run;
        std::memcpy(&run, xs + col[j] + pix, 4);
        const __m512i xv = _mm512_set1_epi32(run);
        for (int v = 0; v < V; ++v) u[v][j] = _mm512_dpbusd_epi32(u[v][j], cv[v], xv);
      }
    }
  }
  const uint32_t* zc = a.pk->zc.data() + (a.b * l.ov + a.v0) * 16;
  const uint32_t* nx = a.pk->nx.data() + a.b * a.g->K() + a.k0;
  const __m512d scale = _mm512_set1_pd(a.scale);
  for (int v = 0; v < V; ++v) {
    const __m512i zcv = _mm512_loadu_si512(zc + v * 16);
    for (int j = 0; j < C; ++j) {
      const __m512i twice = _mm512_slli_epi32(_mm512_add_epi32(u[v][j], zcv), 1);
      const __m512i s = _mm512_sub_epi32(twice, _mm512_set1_epi32(static_cast<int32_t>(nx[j])));
      if (a.s != nullptr) {
        alignas(64) int32_t lanes[16];
        _mm512_store_si512(lanes, s);
        const int64_t o0 = (a.v0 + v) * 16, n = std::min<int64_t>(16, a.g->o - o0);
        for (int64_t i = 0; i < n; ++i) a.s[(o0 + i) * a.g->K() + a.k0 + j] = lanes[i];
        continue;
      }
      double* acc = a.acc + j * 64 + v * 16;
      const __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(s));
      const __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(s, 1));
      _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_loadu_pd(acc), _mm512_mul_pd(scale, lo)));
      _mm512_storeu_pd(acc + 8, _mm512_add_pd(_mm512_loadu_pd(acc + 8), _mm512_mul_pd(scale, hi)));
    }
  }
}

using TileFn = void (*)(const TileArgs&);
template <int V>
constexpr TileFn kRow[kCols] = {&Tile<V, 1>, &Tile<V, 2>, &Tile<V, 3>,
                                &Tile<V, 4>, &Tile<V, 5>, &Tile<V, 6>};
constexpr const TileFn* kTiles[kVectors] = {kRow<1>, kRow<2>, kRow<3>, kRow<4>};

// Work tile t: channel vectors [v0, v0 + nv), columns [k0, k0 + nk); the whole batch in order.
void RunWorkTile(const WgradGeom& g, const Packed& pk, const WgradOutput& out, int64_t v0, int nv,
                 int64_t k0, int nk, std::vector<double>& acc) {
  std::fill(acc.begin(), acc.end(), 0.0);
  for (int64_t b = 0; b < g.n; ++b) {
    for (int j0 = 0; j0 < nk; j0 += kCols) {
      TileArgs a{&g, &pk, b, v0, k0 + j0, 0.0, nullptr, nullptr};
      if (out.s != nullptr) {
        a.s = out.s + b * g.o * g.K();
      } else {
        a.scale = out.scale[b], a.acc = acc.data() + j0 * 64;
      }
      kTiles[nv - 1][std::min(kCols, nk - j0) - 1](a);
    }
  }
  if (out.s != nullptr) return;
  const int64_t o_end = std::min(g.o, (v0 + nv) * 16);
  for (int64_t o = v0 * 16; o < o_end; ++o)
    out.Write(o * g.K() + k0, acc.data() + (o - v0 * 16), nk, 64);
}

}  // namespace

uint32_t WeightGradDirectVnni(const WgradGeom& g, const uint8_t* c, const uint8_t* x, int32_t z,
                              const WgradOutput& out, int threads) {
  if (WeightGradOuterApplies(g, out)) return WeightGradOuter(g, c, x, out, threads);
  Packed pk(g);
  const uint32_t ors = PackSamples<std::vector<uint32_t>>(threads, g.n, [&](int64_t b, auto& sat) {
    const uint32_t cs = PackGrads(g, pk.l, c + b * g.o * g.P(), z, pk.cq.data() + b * pk.l.cq_size,
                                  pk.zc.data() + b * pk.l.ov * 16);
    const uint32_t xs = PackInput(g, pk.l, x + b * g.c * g.h * g.w, z,
                                  pk.xs.data() + b * pk.l.xs_size, pk.nx.data() + b * g.K(), sat);
    return cs | xs << 8;
  });
  const int64_t row_tiles = (pk.l.ov + kVectors - 1) / kVectors;
  const int64_t col_tiles = (g.K() + kChunk - 1) / kChunk;
  ParallelForOrThrow(threads, row_tiles * col_tiles, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(out.s != nullptr ? 0 : static_cast<size_t>(kChunk * 64));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t v0 = (t % row_tiles) * kVectors, k0 = (t / row_tiles) * kChunk;
      const int nv = static_cast<int>(std::min<int64_t>(kVectors, pk.l.ov - v0));
      const int nk = static_cast<int>(std::min<int64_t>(kChunk, g.K() - k0));
      RunWorkTile(g, pk, out, v0, nv, k0, nk, acc);
    }
  });
  return ors;
}

}  // namespace dorefa
