#include "output_transform.h"

#include <algorithm>
#include <limits>

#include "bitpack.h"
#include "requant_table.h"
#include "thread_pool.h"

namespace dorefa {

void SignedFromAcc(const ConvGeom& g, const uint64_t* xpk, int32_t* acc, int64_t pix0,
                   int64_t pix1) {
  const int64_t ohw = g.oh * g.ow;
  const int64_t span = g.kw * g.cw;
  const int64_t nw = (int64_t{1} << g.w_bits) - 1;
  for (int64_t pix = pix0; pix < pix1; ++pix) {
    const PixelRef ref = LocatePixel(g, xpk, pix);
    int64_t s = 0;
    for (int m = 0; m < g.x_bits; ++m) {
      int64_t ones = 0;
      for (int64_t r = 0; r < g.kh; ++r) {
        const uint64_t* xr = ref.x + m * g.PlaneStride() + r * g.RowStride();
        for (int64_t t = 0; t < span; ++t) ones += Popcount64(xr[t]);
      }
      s += ones << m;
    }
    for (int64_t o = 0; o < g.o; ++o) {
      int32_t* a = acc + ref.out + o * ohw;
      *a = static_cast<int32_t>(2 * static_cast<int64_t>(*a) - nw * s);
    }
  }
}

void ExpandThresholds(const ConvGeom& g, const int32_t* thresholds, int64_t t,
                      const int8_t* direction, int32_t* u, uint16_t* neg) {
  const int64_t pairs = g.ob * (kLanes / 2);
  std::fill(u, u + ExpandedThresholdsSize(g, t), std::numeric_limits<int32_t>::max());
  std::fill(neg, neg + pairs, uint16_t{0});
  for (int64_t o = 0; o < g.o; ++o) {
    const int64_t pair = o / 2, k0 = (o % 2) * kLanes;
    const int64_t s = direction[o] < 0 ? -1 : 1;
    if (s < 0) neg[pair] |= static_cast<uint16_t>(0xFFu << k0);
    for (int64_t j = 0; j < t; ++j) {
      const int64_t uj =
          std::max<int64_t>(s * thresholds[o * t + j] - 1, std::numeric_limits<int32_t>::min());
      for (int64_t k = 0; k < kLanes; ++k)
        u[(pair * t + j) * 2 * kLanes + k0 + k] = static_cast<int32_t>(uj);
    }
  }
}

void Requantize(const ConvGeom& g, const int32_t* d, const int32_t* thresholds, int64_t t,
                const int8_t* direction, const ThresholdTable* given, uint8_t* codes, int threads) {
  const int64_t ohw = g.oh * g.ow;
  const int64_t planes = g.n * g.o;
  const bool split = threads > 1 && planes * ohw * t > (int64_t{1} << 16);
  const bool search = t >= kSearchMinT;  // many thresholds: a search per output
  const ThresholdTable* table = search ? &TableOf(given, g.o, thresholds, t, direction) : nullptr;
  ParallelFor(split ? threads : 1, planes, [&](int64_t first, int64_t last) {
    for (int64_t no = first; no < last; ++no) {
      const int64_t o = no % g.o;
      if (search) {
        for (int64_t i = 0; i < ohw; ++i)
          codes[no * ohw + i] = RequantCode(*table, o, d[no * ohw + i]);
        continue;
      }
      const int32_t* th = thresholds + o * t;
      const int32_t* src = d + no * ohw;
      uint8_t* dst = codes + no * ohw;
      // Counting (rather than searching) is exact for any threshold order.
      if (direction[o] > 0) {
        for (int64_t i = 0; i < ohw; ++i) {
          int c = 0;
          for (int64_t j = 0; j < t; ++j) c += src[i] >= th[j];
          dst[i] = static_cast<uint8_t>(c);
        }
      } else {
        for (int64_t i = 0; i < ohw; ++i) {
          int c = 0;
          for (int64_t j = 0; j < t; ++j) c += src[i] <= th[j];
          dst[i] = static_cast<uint8_t>(c);
        }
      }
    }
  });
}

}  // namespace dorefa
