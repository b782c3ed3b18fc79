// Winograd F(2x2, 3x3) and F(2x4, 3x3) on integers, AVX2: the 3x3, stride-1 layers of
// `int8-winograd-avx2` (its other layers run int8-avx2's tiles). Exact: every step is an
// integer sum.
//
// The maths (Lavin and Gray's F(2, 3), correlation as in a convolution layer). A 2 x 2 tile of
// outputs reads a 4 x 4 patch d of the packed activations x' = x - z (int8conv.h) per channel:
//   U = B^T d B,   V = G' g G'^T,   Y = A^T (sum_c U (.) V) A = 4 sum_c sum_taps x' w,
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G' = 2 G = [2 0 0; 1 1 1; 1 -1 1; 0 0 2],
//   A^T = [1 1 1 0; 0 1 -1 -1]
// (G' = 2 G keeps the weights' transform integral; hence the 4, shifted out at the end). 16
// products per tile and channel pair where the direct sum takes 36: 2.25x fewer multiplies.
//
// Tiles of 2 x 4 outputs (W = 4, where OW makes them pay: Wide) take Lavin and Gray's F(4, 3)
// along the row: a 4 x 6 patch, U = B2^T d B4, V = G2' g G4'^T with G4' = 24 G4 (rows 6 0 0,
// -4 -4 -4, -4 4 -4, 1 2 4, 1 -2 4, 0 0 24), B4^T rows 4 0 -5 0 1 0, 0 -4 -4 1 1 0, 0 4 -4 -1
// 1 0, 0 -2 -1 2 1 0, 0 2 -1 -2 1 0, 0 4 0 -5 0 1, A4^T rows 1 1 1 1 1 0, 0 1 -1 2 -2 0,
// 0 1 1 4 4 0, 0 1 -1 8 -8 1; Y = A2^T (sum_c U (.) V) A4 = 48 sum x' w. 24 products per 8
// outputs (3 an output against 4): |U| <= 2 * 10 a <= 2560, |V| <= 3 * 24 * 255 = 18360, pair
// sums < 2^31; raw from 48 raw modulo 2^32 (Inverse4) while 16 |raw| < 2^31: C up to 456 at
// W8A8. The weights are packed before the input size is known, so they carry both transforms.
//
// Ranges: |x'| <= a (a = 63, 64, 128 for x_bits <= 6, 7, 8: Shift) so |U| <= 4a <= 512, and
// 0 <= w <= 255 so |V| <= 9 * 255 = 2295: both int16. One VPMADDWD multiplies 16 pairs and sums
// them pairwise into int32 (exact: 2 * 512 * 2295 < 2^31). The sums over channels wrap modulo
// 2^32 like every int8 kernel's; the outputs are 4 raw, exact where 4 |raw| < 2^31, i.e. while
// 4 * 9 * cp * a * wmax < 2^31 (Packs, at a = 128: C up to 1824 at W8A8), then raw = Y >> 2 and
// the store adds z Wsum as for the tiles (int8conv_store.h). The padding and the channels past
// C hold -z as for the tiles, so the identity of int8conv.h holds with every tap summed.
//
// Layouts. Transformed weights v[pos][ob][g][lane][i] (pos = (W + 2) r + c of the 4 x (W + 2)
// transform; W = 2, then W = 4 where exact; ob a 16-channel block, g a group of 4 channels,
// lane < 16, i < 4: int16), made at packing from the packed int8 weights, whose groups are the
// same, and kept after them (the "int8wino" layout; at each call a 128 x 128 layer's transform
// took 31% of its batch-1 time). A band's
// transformed activations u[pos][k][cv] (k = its tile's slot, TileSlots; cv < cp rounded up to
// 16, int16) and its products m[k][pos][lane pair] (the VPMADDWD sums before adding a lane's two
// pairs).
//
// The product: per position, 8 output channels (two ymm of 4 lanes x 4 channels) by 6 tiles
// (each tile's 4 channels broadcast as a qword): 12 VPMADDWD + 12 VPADDD per 4 channels, 12
// accumulators, 2 weight vectors and a broadcast in 16 ymm. Ceiling: 2 VPMADDWD a cycle (Zen 2
// has one multiply pipe: 1) = 32 multiplies, 72 convolution MACs a cycle on 2 x 2 tiles, 96 on
// 2 x 4 (Zen 2: 36, 48; Zen 4's step measured 59.6 on 2 x 2) against the nibble tiles' 20.5 at
// W8A8 (docs/kernels.md).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "int8conv.h"
#include "int8conv_store.h"
#include "int8conv_store_avx2.h"
#include "unroll.h"

namespace dorefa {
namespace {

// A tile: 2 output rows (F(2, 3) down a column) by W = 2 or 4 columns (F(2, 3) or F(4, 3)
// along a row), from a 4 x (W + 2) patch: 4 (W + 2) positions.
constexpr int kPosH = 4;
template <int W>
constexpr int kPosW = W + 2;
template <int W>
constexpr int kPos = kPosH * kPosW<W>;
constexpr int kTileGroup = 6;       // tiles of a register tile
constexpr int64_t kBandTiles = 48;  // tiles of a band at most (u, m in L1 and L2)

// Whether a 3x3 kernel's sums stay exact at any x_bits (a <= 128) with a tile's outputs
// `scale` raw (4 for W = 2, 16 for W = 4: Inverse): scale * 9 * cp * 128 * wmax < 2^31.
bool Exact(const ConvGeom& g, int64_t scale) {
  if (g.kh != 3 || g.kw != 3) return false;
  const int64_t cp = Int8Geom(g).cp, wmax = (int64_t{1} << g.w_bits) - 1;
  return scale * 9 * cp * 128 * wmax < (int64_t{1} << 31);
}
bool Packs(const ConvGeom& g) { return Exact(g, 4); }

// Tiles of 4 output columns where their positions a tile row, 24 ceil(OW / 4), are at most 0.9x
// the 16 ceil(OW / 2) of tiles of 2 (18 columns: 0.83x, 13: 0.86x, 7: 0.75x; 5 columns: 1.0x,
// where the wider transforms made 128->128 0.85-0.92x as fast) and the sums stay exact.
bool Wide(const ConvGeom& g) {
  return 10 * 24 * ((g.ow + 3) / 4) <= 9 * 16 * ((g.ow + 1) / 2) && Exact(g, 16);
}

int64_t Groups(const Int8Conv& c) { return c.q.cp / 4; }
int64_t Cv(const Int8Conv& c) { return (c.q.cp + 15) / 16 * 16; }
template <int W>
int64_t TilesW(const ConvGeom& g) {
  return (g.ow + W - 1) / W;
}
int64_t TilesH(const ConvGeom& g) { return (g.oh + 1) / 2; }

// The weights are packed before the input size is known: both transforms, 2 then 4 (where
// exact), the tile width chosen at each call (Wide).
template <int W>
int64_t TransformElems(const Int8Geom& q) {  // int16 of one tile width's transformed weights
  return kPos<W> * q.ob * (q.cp / 4) * 64;
}
int64_t WeightElems(const ConvGeom& g) {
  const Int8Geom q(g);
  return TransformElems<2>(q) + (Exact(g, 16) ? TransformElems<4>(q) : 0);
}

// v = G2' g GW'^T of one quarter (4 lanes x 4 channels, int16) of a group, t the 9 taps.
template <int W>
void TransformQuarter(const __m256i* t, int16_t* v, int64_t pos_stride) {
  __m256i r[3][kPosW<W>], o[kPosH][kPosW<W>];
  for (int kh = 0; kh < 3; ++kh) {  // along the row: G2' = 2 G2, or G4' = 24 G4
    const __m256i a = t[3 * kh], b = t[3 * kh + 1], cc = t[3 * kh + 2];
    if constexpr (W == 2) {  // (2 a, a + b + c, a - b + c, 2 c)
      const __m256i ac = _mm256_add_epi16(a, cc);
      r[kh][0] = _mm256_add_epi16(a, a);
      r[kh][1] = _mm256_add_epi16(ac, b);
      r[kh][2] = _mm256_sub_epi16(ac, b);
      r[kh][3] = _mm256_add_epi16(cc, cc);
    } else {  // (6 a, -4 (a + b + c), -4 (a - b + c), a + 2 b + 4 c, a - 2 b + 4 c, 24 c)
      const __m256i ac = _mm256_add_epi16(a, cc),
                    a4c = _mm256_add_epi16(a, _mm256_slli_epi16(cc, 2));
      const __m256i b2 = _mm256_add_epi16(b, b);
      r[kh][0] = _mm256_mullo_epi16(a, _mm256_set1_epi16(6));
      r[kh][1] = _mm256_mullo_epi16(_mm256_add_epi16(ac, b), _mm256_set1_epi16(-4));
      r[kh][2] = _mm256_mullo_epi16(_mm256_sub_epi16(ac, b), _mm256_set1_epi16(-4));
      r[kh][3] = _mm256_add_epi16(a4c, b2);
      r[kh][4] = _mm256_sub_epi16(a4c, b2);
      r[kh][5] = _mm256_mullo_epi16(cc, _mm256_set1_epi16(24));
    }
  }
  for (int j = 0; j < kPosW<W>; ++j) {  // down the column, G2' = 2 G2
    const __m256i ac = _mm256_add_epi16(r[0][j], r[2][j]);
    o[0][j] = _mm256_add_epi16(r[0][j], r[0][j]);
    o[1][j] = _mm256_add_epi16(ac, r[1][j]);
    o[2][j] = _mm256_sub_epi16(ac, r[1][j]);
    o[3][j] = _mm256_add_epi16(r[2][j], r[2][j]);
  }
  for (int i = 0; i < kPosH; ++i)
    for (int j = 0; j < kPosW<W>; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(v + (kPosW<W> * i + j) * pos_stride), o[i][j]);
}

template <int W>
void TransformWeightsW(const ConvGeom& geom, const uint8_t* wq, int16_t* v) {
  const Int8Geom q(geom);
  const int64_t groups = q.cp / 4, pos_stride = q.ob * groups * 64;
  for (int64_t ob = 0; ob < q.ob; ++ob) {
    const uint8_t* w0 = wq + ob * q.gstride * 64;
    for (int64_t g = 0; g < groups; ++g) {
      for (int i = 0; i < 4; ++i) {  // lanes 4i .. 4i + 3
        __m256i t[9];
        for (int tap = 0; tap < 9; ++tap) {
          t[tap] = _mm256_cvtepu8_epi16(_mm_loadu_si128(
              reinterpret_cast<const __m128i*>(w0 + (tap * groups + g) * 64 + 16 * i)));
        }
        TransformQuarter<W>(t, v + (ob * groups + g) * 64 + 16 * i, pos_stride);
      }
    }
  }
}

void TransformWeights(const ConvGeom& g, const uint8_t* wq, int16_t* v) {
  TransformWeightsW<2>(g, wq, v);
  if (Exact(g, 16)) TransformWeightsW<4>(g, wq, v + TransformElems<2>(Int8Geom(g)));
}

Int8Winograd::Bands Bands(const ConvGeom& g, int threads) {
  const int64_t tw = Wide(g) ? TilesW<4>(g) : TilesW<2>(g);
  const int64_t th = TilesH(g), tiles = th * tw;
  // Enough bands for two a thread where the batch is small.
  const int64_t items = threads > 1 ? 2 * threads : 1;
  if (2 * tiles <= kBandTiles && g.n > 1) {  // whole images, as many as fill a band
    const int64_t images =
        std::max<int64_t>(1, std::min(kBandTiles / tiles, (g.n + items - 1) / items));
    return {images, th, (g.n + images - 1) / images};
  }
  const int64_t n = std::max<int64_t>(g.n, 1);  // an empty batch: no divide by zero
  const int64_t per_image = (items + n - 1) / n;
  const int64_t rows = std::max<int64_t>(
      1, std::min(std::max<int64_t>(1, kBandTiles / tw), (th + per_image - 1) / per_image));
  return {1, rows, g.n * ((th + rows - 1) / rows)};
}

// A band's tiles in four classes, each in (image, row, column) order: 0 inside; 1 the last tile
// column where the output width is not a multiple of W (its last output column lies outside,
// so the last position j = W + 1 is not needed: only A^T's last row reads it); 2 the last tile
// row of an odd-height output (positions i = 3 not needed); 3 both. The product runs each position
// over the classes that need it (7x7 outputs on 2 x 2 tiles: 225 of 256 tile positions), in one
// call (kOrder), so a band of one image with a few edge tiles makes no more calls than one class
// would (one class there, raster order, ran the small maps at batch 1 7-14% slower: svhn's 7x7 and
// 5x5 W8A8 layers, Zen 4 AVX2 path, same-process A/B).
template <int W>
struct TileSlots {
  int64_t tw, cols, rows;  // tiles a row; class 0's columns and rows an image
  bool odd_w, last_row;    // the band has class 1 tiles; class 2 tiles
  int64_t per_image[4];    // tiles of each class an image
  // Slot order of the classes: 1 (last column), 0 (inside), 2 (last row), 3 (corner). The
  // classes that need a position are then neighbours (all of them; 0 and 2 at j = W + 1; 1 and
  // 0 at i = 3; 0 at both), so each position is one product call over one range of slots.
  static constexpr int kOrder[4] = {1, 0, 2, 3};
  int64_t first[4], last[4];  // slots of class k: [first[k], last[k])
  int64_t total;              // slots in all
  TileSlots(const ConvGeom& g, int64_t images, int64_t ty0, int64_t ty1)
      : tw(TilesW<W>(g)),
        cols(tw - (g.ow % W != 0)),
        rows(ty1 - ty0 - (g.oh % 2 == 1 && ty1 == TilesH(g))),
        odd_w(g.ow % W != 0),
        last_row(rows < ty1 - ty0) {
    per_image[0] = rows * cols;
    per_image[1] = odd_w ? rows : 0;
    per_image[2] = last_row ? cols : 0;
    per_image[3] = odd_w && last_row ? 1 : 0;
    int64_t at = 0;
    for (int k : kOrder) {
      first[k] = at;
      at += images * per_image[k];
      last[k] = at;
    }
    total = at;
  }
  // The slots of the classes that need position (i, j): one range, by kOrder.
  void Range(int i, int j, int64_t* lo, int64_t* hi) const {
    *lo = total;
    *hi = 0;
    for (int k = 0; k < 4; ++k) {
      if (last[k] > first[k] && Needs(k, i, j)) {
        *lo = std::min(*lo, first[k]);
        *hi = std::max(*hi, last[k]);
      }
    }
  }
  // f(slot, i, r, tx) for every tile (band image i, band row r, column tx) in slot order.
  template <class F>
  void ForEach(int64_t images, F&& f) const {
    int64_t slot = 0;
    for (int k : kOrder) {
      if (per_image[k] == 0) continue;
      const int64_t r0 = k & 2 ? rows : 0, r1 = k & 2 ? rows + 1 : rows;
      const int64_t x0 = k & 1 ? cols : 0, x1 = k & 1 ? cols + 1 : cols;
      for (int64_t i = 0; i < images; ++i)
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t tx = x0; tx < x1; ++tx) f(slot++, i, r, tx);
    }
  }
  // Whether class k needs position (i, j).
  static bool Needs(int k, int i, int j) {
    return !((k & 1) && j == kPosW<W> - 1) && !((k & 2) && i == kPosH - 1);
  }
};

// u = B^T d B for the tiles of output tile rows [ty0, ty1) of images [n0, n1), 16 channels a
// vector, each at its slot.
template <int W>
void TransformInput(const Int8Conv& c, const TileSlots<W>& slots, int64_t n0, int64_t n1,
                    int64_t ty0, int16_t* u) {
  const int64_t cv = Cv(c), pos_stride = slots.total * cv;
  slots.ForEach(n1 - n0, [&](int64_t slot, int64_t i, int64_t r, int64_t tx) {
    const int8_t* base = c.xq + (n0 + i) * c.q.image + 2 * (ty0 + r) * c.q.row + W * tx * c.q.pixel;
    int16_t* uk = u + slot * cv;
    for (int64_t ch = 0; ch < cv; ch += 16) {
      __m256i d[kPosH][kPosW<W>], e[kPosH][kPosW<W>];
      for (int y = 0; y < kPosH; ++y)
        for (int k = 0; k < kPosW<W>; ++k)
          d[y][k] = _mm256_cvtepi8_epi16(_mm_loadu_si128(
              reinterpret_cast<const __m128i*>(base + y * c.q.row + k * c.q.pixel + ch)));
      for (int k = 0; k < kPosW<W>; ++k) {  // B2^T d: down each column
        e[0][k] = _mm256_sub_epi16(d[0][k], d[2][k]);
        e[1][k] = _mm256_add_epi16(d[1][k], d[2][k]);
        e[2][k] = _mm256_sub_epi16(d[2][k], d[1][k]);
        e[3][k] = _mm256_sub_epi16(d[1][k], d[3][k]);
      }
      for (int i = 0; i < kPosH; ++i) {  // (B2^T d) BW: along each row
        const __m256i* r = e[i];
        if constexpr (W == 2) {
          const __m256i o[4] = {_mm256_sub_epi16(r[0], r[2]), _mm256_add_epi16(r[1], r[2]),
                                _mm256_sub_epi16(r[2], r[1]), _mm256_sub_epi16(r[1], r[3])};
          for (int j = 0; j < 4; ++j)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(uk + (4 * i + j) * pos_stride + ch),
                                o[j]);
        } else {
          const __m256i s12 = _mm256_add_epi16(r[1], r[2]), s34 = _mm256_add_epi16(r[3], r[4]);
          const __m256i d12 = _mm256_sub_epi16(r[1], r[2]), d43 = _mm256_sub_epi16(r[4], r[3]);
          const __m256i d13 = _mm256_slli_epi16(_mm256_sub_epi16(r[1], r[3]), 1);
          const __m256i d42 = _mm256_sub_epi16(r[4], r[2]);
          const __m256i o[kPosW<W>] = {
              _mm256_add_epi16(_mm256_sub_epi16(_mm256_slli_epi16(r[0], 2),
                                                _mm256_add_epi16(_mm256_slli_epi16(r[2], 2), r[2])),
                               r[4]),
              _mm256_sub_epi16(s34, _mm256_slli_epi16(s12, 2)),
              _mm256_add_epi16(d43, _mm256_slli_epi16(d12, 2)),
              _mm256_sub_epi16(d42, d13),
              _mm256_add_epi16(d42, d13),
              _mm256_add_epi16(_mm256_sub_epi16(_mm256_slli_epi16(r[1], 2),
                                                _mm256_add_epi16(_mm256_slli_epi16(r[3], 2), r[3])),
                               r[5])};
          for (int j = 0; j < kPosW<W>; ++j)
            _mm256_storeu_si256(
                reinterpret_cast<__m256i*>(uk + (kPosW<W> * i + j) * pos_stride + ch), o[j]);
        }
      }
    }
  });
}

// NT tiles (u rows ustride apart) x 8 channels (v: 4 channels x 4 lanes a ymm, twice per group)
// summed over the groups into m[t * kPos<W> * 16 ..] (lane pairs, not yet added).
template <int NT, int W>
inline __attribute__((always_inline)) void Product(const int16_t* v, const int16_t* u,
                                                   int64_t ustride, int64_t groups, int32_t* m) {
  __m256i acc[NT][2];
  DOREFA_UNROLL for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + g * 64));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + g * 64 + 16));
    DOREFA_UNROLL for (int t = 0; t < NT; ++t) {
      int64_t q;
      std::memcpy(&q, u + t * ustride + 4 * g, 8);
      const __m256i b = _mm256_set1_epi64x(q);
      acc[t][0] = _mm256_add_epi32(acc[t][0], _mm256_madd_epi16(w0, b));
      acc[t][1] = _mm256_add_epi32(acc[t][1], _mm256_madd_epi16(w1, b));
    }
  }
  DOREFA_UNROLL for (int t = 0; t < NT; ++t) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(m + t * kPos<W> * 16), acc[t][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(m + t * kPos<W> * 16 + 8), acc[t][1]);
  }
}

template <int NT, int W>
void ProductCall(const int16_t* v, const int16_t* u, int64_t ustride, int64_t groups, int32_t* m) {
  Product<NT, W>(v, u, ustride, groups, m);
}
using ProductFn = void (*)(const int16_t*, const int16_t*, int64_t, int64_t, int32_t*);
// The last, partial group of a position's tiles: 1 .. kTileGroup - 1 of them.
template <int W>
constexpr ProductFn kPartialProducts[kTileGroup - 1] = {&ProductCall<1, W>, &ProductCall<2, W>,
                                                        &ProductCall<3, W>, &ProductCall<4, W>,
                                                        &ProductCall<5, W>};

// The products of tiles [t0, t1) (u rows ustride apart) at one position into m (a tile's
// position sums kPos<W> * 16 apart): whole groups of kTileGroup tiles in one loop, the rest by
// one call (against a call per group: 0.99-1.07x, mostly 1.01-1.04x, on svhn's layers and
// conv3 at W8A8, Zen 4 AVX2 path, same-process A/B).
template <int W>
void Products(const int16_t* v, const int16_t* u, int64_t ustride, int64_t groups, int32_t* m,
              int64_t t0, int64_t t1) {
  constexpr int64_t kTileSums = kPos<W> * 16;  // a tile's sums in m
  int64_t s = t0;
  for (; s + kTileGroup <= t1; s += kTileGroup)
    Product<kTileGroup, W>(v, u + s * ustride, ustride, groups, m + s * kTileSums);
  if (s == t1) return;
  const ProductFn partial = kPartialProducts<W>[t1 - s - 1];
  partial(v, u + s * ustride, ustride, groups, m + s * kTileSums);
}

// A lane's two pair sums added, lanes in order: y0 holds lanes 0-3, y1 lanes 4-7 (VPHADDD gives
// lanes 0 1 4 5 | 2 3 6 7; the qword permute puts them in order).
inline __m256i LaneSums(__m256i y0, __m256i y1) {
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(y0, y1), 0xD8);
}

// Y = A^T m A of one tile's 16 positions (W = 2; mk: per position two ymm of lane pairs) = 4
// raw, the pairs added and shifted out, to raw[p] for the outputs inside the layer (p = 2 i + j:
// output row i, column j of the tile).
void Inverse2(const int32_t* mk, int32_t* const* out) {
  __m256i y[2][2][2];
  for (int q = 0; q < 2; ++q) {  // lanes 0-3, then 4-7
    __m256i s[2][4];
    for (int j = 0; j < 4; ++j) {
      const auto at = [&](int i) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mk + (4 * i + j) * 16 + 8 * q));
      };
      const __m256i m0 = at(0), m1 = at(1), m2 = at(2), m3 = at(3);
      s[0][j] = _mm256_add_epi32(_mm256_add_epi32(m0, m1), m2);
      s[1][j] = _mm256_sub_epi32(_mm256_sub_epi32(m1, m2), m3);
    }
    for (int i = 0; i < 2; ++i) {
      y[i][0][q] = _mm256_add_epi32(_mm256_add_epi32(s[i][0], s[i][1]), s[i][2]);
      y[i][1][q] = _mm256_sub_epi32(_mm256_sub_epi32(s[i][1], s[i][2]), s[i][3]);
    }
  }
  for (int p = 0; p < 4; ++p) {
    if (out[p] == nullptr) continue;
    const __m256i* yp = y[p / 2][p % 2];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[p]),
                        _mm256_srai_epi32(LaneSums(yp[0], yp[1]), 2));
  }
}

// W = 4: Y = A2^T m A4 of 24 positions = 48 raw. 48 = 3 * 16, so Y times 3's inverse modulo
// 2^32 is 16 raw modulo 2^32, which is 16 raw itself while |16 raw| < 2^31 (Wide); shifted
// right by 4. To raw[p], p = 4 i + j.
void Inverse4(const int32_t* mk, int32_t* const* out) {
  __m256i y[2][4][2];
  for (int q = 0; q < 2; ++q) {  // lanes 0-3, then 4-7
    __m256i t[kPosH][4];
    for (int i = 0; i < kPosH; ++i) {  // along the row: A4^T
      const auto at = [&](int j) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mk + (6 * i + j) * 16 + 8 * q));
      };
      const __m256i m1 = at(1), m2 = at(2), m3 = at(3), m4 = at(4);
      const __m256i s12 = _mm256_add_epi32(m1, m2), d12 = _mm256_sub_epi32(m1, m2);
      const __m256i s34 = _mm256_add_epi32(m3, m4), d34 = _mm256_sub_epi32(m3, m4);
      t[i][0] = _mm256_add_epi32(_mm256_add_epi32(at(0), s12), s34);
      t[i][1] = _mm256_add_epi32(d12, _mm256_slli_epi32(d34, 1));
      t[i][2] = _mm256_add_epi32(s12, _mm256_slli_epi32(s34, 2));
      t[i][3] = _mm256_add_epi32(_mm256_add_epi32(d12, _mm256_slli_epi32(d34, 3)), at(5));
    }
    for (int j = 0; j < 4; ++j) {  // down the column: A2^T
      y[0][j][q] = _mm256_add_epi32(_mm256_add_epi32(t[0][j], t[1][j]), t[2][j]);
      y[1][j][q] = _mm256_sub_epi32(_mm256_sub_epi32(t[1][j], t[2][j]), t[3][j]);
    }
  }
  const __m256i inv3 = _mm256_set1_epi32(static_cast<int32_t>(0xAAAAAAABu));  // 3 inv3 = 1
  for (int p = 0; p < 8; ++p) {
    if (out[p] == nullptr) continue;
    const __m256i* yp = y[p / 4][p % 4];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[p]),
                        _mm256_srai_epi32(_mm256_mullo_epi32(LaneSums(yp[0], yp[1]), inv3), 4));
  }
}

template <int W>
void BandW(const Int8Conv& c, const int16_t* v, const Int8Winograd::Bands& b, int64_t item) {
  const ConvGeom& g = *c.g;
  const int64_t th = TilesH(g), row_bands = (th + b.rows - 1) / b.rows;
  const int64_t n0 = b.images > 1 ? item * b.images : item / row_bands;
  const int64_t n1 = b.images > 1 ? std::min(g.n, n0 + b.images) : n0 + 1;
  const int64_t ty0 = b.images > 1 ? 0 : item % row_bands * b.rows;
  const int64_t ty1 = std::min(th, ty0 + b.rows);
  const TileSlots<W> slots(g, n1 - n0, ty0, ty1);
  const int64_t cv = Cv(c), groups = Groups(c), k_all = slots.total;
  const int64_t o16 = c.q.ob * kInt8Lanes;
  const int64_t oy0 = 2 * ty0, oy1 = std::min(2 * ty1, g.oh), band_h = oy1 - oy0;
  const int64_t u_elems = kPos<W> * k_all * cv, m_elems = k_all * kPos<W> * 16;
  const int64_t raw_elems = (n1 - n0) * band_h * g.ow * o16;
  uint8_t* buf = Int8FieldBuffer(static_cast<size_t>(2 * u_elems + 4 * (m_elems + raw_elems)));
  auto* u = reinterpret_cast<int16_t*>(buf);
  auto* m = reinterpret_cast<int32_t*>(buf + 2 * u_elems);
  int32_t* raw = m + m_elems;
  TransformInput<W>(c, slots, n0, n1, ty0, u);
  int64_t lo[kPos<W>], hi[kPos<W>];  // per position the slots of the classes that need it
  for (int pos = 0; pos < kPos<W>; ++pos)
    slots.Range(pos / kPosW<W>, pos % kPosW<W>, &lo[pos], &hi[pos]);
  const int64_t pos_stride = c.q.ob * groups * 64;
  for (int64_t ob = 0; ob < c.q.ob; ++ob) {
    for (int h = 0; h < 2; ++h) {
      for (int pos = 0; pos < kPos<W>; ++pos) {  // (m of the other slots: unset)
        const int16_t* vp = v + pos * pos_stride + ob * groups * 64 + 32 * h;
        const int16_t* up = u + pos * k_all * cv;
        if (lo[pos] < hi[pos]) Products<W>(vp, up, cv, groups, m + pos * 16, lo[pos], hi[pos]);
      }
      slots.ForEach(n1 - n0, [&](int64_t slot, int64_t i, int64_t r, int64_t tx) {
        int32_t* out[2 * W];  // the unset positions of a class only reach outputs outside
        for (int p = 0; p < 2 * W; ++p) {
          const int64_t y = 2 * r + p / W, x = W * tx + p % W;  // in the band
          const bool inside = oy0 + y < g.oh && x < g.ow;
          out[p] = inside ? raw + ((i * band_h + y) * g.ow + x) * o16 + ob * 16 + 8 * h : nullptr;
        }
        if constexpr (W == 2) {
          Inverse2(m + slot * kPos<W> * 16, out);
        } else {
          Inverse4(m + slot * kPos<W> * 16, out);
        }
      });
    }
  }
  // The band's outputs are one run of pixels (whole images, or rows of one): stored as the
  // tiles' calls are.
  const int64_t pix0 = (n0 * g.oh + oy0) * g.ow, npix = (n1 - n0) * band_h * g.ow;
  int32_t terms[kMaxCallPixels];
  for (int64_t p0 = 0; p0 < npix; p0 += kMaxCallPixels) {
    const int64_t np = std::min(kMaxCallPixels, npix - p0);
    Int8FieldTerms(c, pix0 + p0, np, terms);
    StoreCall<Avx2Store>(c, pix0 + p0, np, 0, static_cast<int>(c.q.ob), raw + p0 * o16, terms);
  }
}

void Band(const Int8Conv& c, const int16_t* v, const Int8Winograd::Bands& b, int64_t item) {
  if (Wide(*c.g)) return BandW<4>(c, v + TransformElems<2>(c.q), b, item);
  BandW<2>(c, v, b, item);
}

}  // namespace

extern const Int8Winograd kWinogradAvx2 = {&Packs, &WeightElems, &TransformWeights, &Bands, &Band};

}  // namespace dorefa
