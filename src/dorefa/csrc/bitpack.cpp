#include "bitpack.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "byte_transpose.h"

namespace dorefa {
namespace {

// Gathers bit `m` of 64 consecutive bytes b[0..63] into one word (bit i = bit m of b[i]).
//
// For 8 bytes loaded little-endian as v, t = (v >> m) & 0x01..01 holds bit m of byte i at bit
// 8i. Multiplying by K = sum_{i<8} 2^(56 - 7i) = 0x0102040810204080 moves it to bit
// 8i + 56 - 7i = 56 + i; all 64 partial products have distinct exponents 8i - 7j + 56 (8(i-i')
// = 7(j-j') has no solution with |i-i'|, |j-j'| < 8 other than zero), so no carries occur and
// bits 56..63 of the product are exactly the eight wanted bits.
inline uint64_t GatherPlane64(const uint8_t* b, int m) {
  uint64_t word = 0;
  for (int g = 0; g < 8; ++g) {
    uint64_t v;
    std::memcpy(&v, b + 8 * g, 8);
    const uint64_t t = (v >> m) & 0x0101010101010101ULL;
    word |= ((t * 0x0102040810204080ULL) >> 56) << (8 * g);
  }
  return word;
}

}  // namespace

void Transpose64x64(uint64_t* a) {
  uint64_t low = 0x00000000FFFFFFFFULL;  // low s bits of every 2s-bit group
  for (int s = 32; s != 0; s >>= 1, low ^= low << s) {
    for (int k = 0; k < 64; k = ((k | s) + 1) & ~s) {  // rows with k & s == 0
      const uint64_t t = ((a[k] >> s) ^ a[k | s]) & low;
      a[k | s] ^= t;
      a[k] ^= t << s;
    }
  }
}

void ZeroPaddingBorder(const ConvGeom& g, uint64_t* xpk) {
  if (g.pad == 0) return;
  const int64_t row = g.RowStride();
  for (int64_t np = 0; np < g.n * g.x_bits; ++np) {
    uint64_t* plane = xpk + np * g.PlaneStride();
    std::fill(plane, plane + g.pad * row, uint64_t{0});                       // top rows
    std::fill(plane + (g.pad + g.h) * row, plane + g.hp * row, uint64_t{0});  // bottom rows
    for (int64_t y = g.pad; y < g.pad + g.h; ++y) {  // left and right columns
      std::fill(plane + y * row, plane + y * row + g.pad * g.cw, uint64_t{0});
      std::fill(plane + y * row + (g.pad + g.w) * g.cw, plane + (y + 1) * row, uint64_t{0});
    }
  }
}

int64_t PackItems(const ConvGeom& g) { return g.n * g.cw * ((g.h * g.w + 63) / 64); }

PackItem LocatePackItem(const ConvGeom& g, int64_t it) {
  const int64_t hw = g.h * g.w;
  const int64_t pblocks = (hw + 63) / 64;
  PackItem item;
  item.n = it / (g.cw * pblocks);
  item.cb = (it / pblocks) % g.cw;
  item.q0 = (it % pblocks) * 64;
  item.npx = std::min<int64_t>(64, hw - item.q0);
  item.nch = std::min<int64_t>(64, g.c - item.cb * 64);
  return item;
}

void StorePackItem(const ConvGeom& g, const PackItem& item, const uint64_t (*bits)[64],
                   uint64_t* xpk) {
  const int64_t y = item.q0 / g.w, ps = g.PlaneStride();
  int64_t xx = item.q0 % g.w;
  uint64_t* d = xpk + item.n * g.x_bits * ps + item.cb + ((y + g.pad) * g.wp + xx + g.pad) * g.cw;
  // Branch-free walk (conditional moves): a row wrap every w pixels, which as a branch was
  // mispredicted at every wrap and cost half of the AVX-512 packer's time.
  const int64_t wrap_skip = 2 * g.pad * g.cw;  // from past a row's last pixel to the next row
  for (int64_t p = 0; p < item.npx; ++p) {
    for (int m = 0; m < g.x_bits; ++m) d[m * ps] = bits[m][p];
    const bool wrap = ++xx == g.w;
    xx = wrap ? 0 : xx;
    d += g.cw + (wrap ? wrap_skip : 0);
  }
}

uint8_t PackActivations(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int64_t item0,
                        int64_t item1) {
  const int64_t hw = g.h * g.w;
  uint8_t all_or = 0;
  for (int64_t it = item0; it < item1; ++it) {
    const PackItem item = LocatePackItem(g, it);
    uint8_t bytes[64] = {0};
    uint64_t bits[8][64];  // [plane][channel] -> after the transpose [plane][pixel]
    if (hw == 1) {         // one pixel (1x1 weights as images): its channels are contiguous bytes
      const uint8_t* src = x + item.n * g.c + item.cb * 64;
      std::memcpy(bytes, src, static_cast<size_t>(item.nch));
      for (int64_t r = 0; r < item.nch; ++r) all_or |= bytes[r];
      for (int m = 0; m < g.x_bits; ++m) bits[m][0] = GatherPlane64(bytes, m);
      StorePackItem(g, item, bits, xpk);
      continue;
    }
    for (int m = 0; m < g.x_bits; ++m) std::fill(bits[m] + item.nch, bits[m] + 64, uint64_t{0});
    for (int64_t r = 0; r < item.nch; ++r) {
      const uint8_t* src = x + ((item.n * g.c + item.cb * 64 + r) * hw + item.q0);
      std::memcpy(bytes, src, static_cast<size_t>(item.npx));
      for (int64_t p = 0; p < item.npx; ++p) all_or |= bytes[p];
      for (int m = 0; m < g.x_bits; ++m) bits[m][r] = GatherPlane64(bytes, m);
    }
    for (int m = 0; m < g.x_bits; ++m) Transpose64x64(bits[m]);
    StorePackItem(g, item, bits, xpk);
  }
  return all_or;
}

namespace {

// PackWeights for the packers without a fast 64 x 64 bit transpose (portable, movemask; Packer
// in kernel_table.h): each output channel's (C, taps) codes transposed to
// (taps, C) bytes, so that a word is bit k of 64 consecutive bytes (GatherPlane64) and no 64 x 64
// bit transpose is needed (svhn conv6's 512 x 128 x 5 x 5 weights: 1.4 ms through the image
// packer's items of 25 pixels).
uint8_t PackWeightsByTap(const ConvGeom& g, const uint8_t* w, uint64_t* wpk) {
  const int64_t taps = g.kh * g.kw, c = g.c;
  std::vector<uint8_t> tap_major(static_cast<size_t>(taps > 1 ? c * taps : 0));
  uint8_t all_or = 0;
  for (int64_t o = 0; o < g.o; ++o) {
    const uint8_t* wo = w + o * c * taps;
    for (int64_t i = 0; i < c * taps; ++i) all_or |= wo[i];
    const uint8_t* by_tap = TapMajor(wo, c, taps, tap_major.data());
    uint64_t* dst = wpk + (o / kLanes) * g.w_bits * g.l * kLanes + o % kLanes;
    for (int64_t j = 0; j < taps; ++j) {
      for (int64_t cb = 0; cb < g.cw; ++cb) {
        uint8_t bytes[64] = {0};
        const int64_t n = std::min<int64_t>(64, c - cb * 64);
        std::memcpy(bytes, by_tap + j * c + cb * 64, static_cast<size_t>(n));
        for (int k = 0; k < g.w_bits; ++k)
          dst[(k * g.l + j * g.cw + cb) * kLanes] = GatherPlane64(bytes, k);
      }
    }
  }
  return all_or;
}

}  // namespace

uint8_t PackWeights(const ConvGeom& g, const uint8_t* w, uint64_t* wpk, PackFn pack, bool by_tap) {
  std::fill(wpk, wpk + g.WpkSize(), uint64_t{0});  // lanes past O stay 0
  if (by_tap) return PackWeightsByTap(g, w, wpk);
  // Weights (O, C, KH, KW) are O "images" of C channels and KH x KW pixels; the activation
  // packer gives [o][k][kh][kw][cw] = [o][k][j], which only needs its lanes interleaved.
  ConvGeom as_images;
  as_images.n = g.o;
  as_images.c = g.c;
  as_images.h = g.kh;
  as_images.w = g.kw;
  as_images.o = 1;
  as_images.kh = 1;
  as_images.kw = 1;
  as_images.x_bits = g.w_bits;
  as_images.Finalize();
  std::vector<uint64_t> planes(static_cast<size_t>(as_images.XpkSize()));
  const uint8_t all_or = pack(as_images, w, planes.data(), 0, PackItems(as_images));
  for (int64_t o = 0; o < g.o; ++o) {
    const int64_t ob = o / kLanes, lane = o % kLanes;
    for (int k = 0; k < g.w_bits; ++k) {
      const uint64_t* src = planes.data() + (o * g.w_bits + k) * g.l;
      uint64_t* dst = wpk + (ob * g.w_bits + k) * g.l * kLanes + lane;
      for (int64_t j = 0; j < g.l; ++j) dst[j * kLanes] = src[j];
    }
  }
  return all_or;
}

}  // namespace dorefa
