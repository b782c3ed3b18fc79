#include "bitpack.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef DOREFA_HAVE_OPENMP
#include <omp.h>
#endif

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

uint8_t PackActivations(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int threads) {
  const int64_t cpad = g.cw * 64;
  const int64_t plane = g.PlaneStride(), row = g.RowStride();
  const int64_t image = g.x_bits * plane;
  // Zero everything first: padding pixels are code 0, and interior pixels are OR-ed below.
  std::fill(xpk, xpk + g.XpkSize(), uint64_t{0});
  const int64_t rows = g.n * g.h;
  uint8_t all_or = 0;
#ifdef DOREFA_HAVE_OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && rows > 1) reduction(| : all_or)
#endif
  {
    // One transposed input row: tmp[w][c] with channels contiguous, zero beyond C.
    std::vector<uint8_t> tmp(static_cast<size_t>(g.w * cpad), 0);
#ifdef DOREFA_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t nh = 0; nh < rows; ++nh) {
      const int64_t n = nh / g.h, y = nh % g.h;
      uint8_t row_or = 0;
      for (int64_t c = 0; c < g.c; ++c) {
        const uint8_t* src = x + ((n * g.c + c) * g.h + y) * g.w;
        for (int64_t xx = 0; xx < g.w; ++xx) {
          tmp[xx * cpad + c] = src[xx];
          row_or |= src[xx];
        }
      }
      all_or |= row_or;
      uint64_t* dst0 = xpk + n * image + (y + g.pad) * row + g.pad * g.cw;
      for (int64_t xx = 0; xx < g.w; ++xx) {
        for (int64_t q = 0; q < g.cw; ++q) {
          const uint8_t* b = tmp.data() + xx * cpad + q * 64;
          for (int m = 0; m < g.x_bits; ++m) dst0[m * plane + xx * g.cw + q] = GatherPlane64(b, m);
        }
      }
    }
  }
  (void)threads;
  return all_or;
}

uint8_t PackWeights(const ConvGeom& g, const uint8_t* w, uint64_t* wpk) {
  const int64_t cpad = g.cw * 64;
  const int64_t khw = g.kh * g.kw;
  std::fill(wpk, wpk + g.WpkSize(), uint64_t{0});
  std::vector<uint8_t> tmp(static_cast<size_t>(cpad), 0);
  uint8_t all_or = 0;
  for (int64_t o = 0; o < g.o; ++o) {
    const int64_t ob = o / kLanes, lane = o % kLanes;
    for (int64_t s = 0; s < khw; ++s) {  // s = kh * KW + kw
      for (int64_t c = 0; c < g.c; ++c) {
        tmp[c] = w[(o * g.c + c) * khw + s];
        all_or |= tmp[c];
      }
      for (int64_t q = 0; q < g.cw; ++q) {
        const int64_t j = s * g.cw + q;
        for (int k = 0; k < g.w_bits; ++k) {
          wpk[((ob * g.w_bits + k) * g.l + j) * kLanes + lane] =
              GatherPlane64(tmp.data() + q * 64, k);
        }
      }
    }
  }
  return all_or;
}

}  // namespace dorefa
