#include "output_transform.h"

#include <algorithm>
#include <limits>

#include "bitpack.h"
#include "requant_table.h"
#include "thread_pool.h"

namespace dorefa {

namespace {

// S of the pixel at ref (FieldCodeSum, portable popcount).
int64_t FieldSum(const ConvGeom& g, const PixelRef& ref) {
  return FieldCodeSum(g, ref.x, Popcount64);
}

constexpr int64_t kSignedRun = 256;  // pixels of one image per pass over the channels
constexpr int64_t kCountRun = 64;    // outputs per pass over the thresholds

// dst[i] = #{j : src[i] >= th[j]} (or <= th[j] when `below`) for i < n: per run of outputs, one
// pass of compares per threshold (vectorizes over the outputs; t <= 255 fits a byte).
void CountAbove(const int32_t* src, int64_t n, const int32_t* th, int64_t t, bool below,
                uint8_t* dst) {
  for (int64_t i0 = 0; i0 < n; i0 += kCountRun) {
    const int64_t m = std::min(kCountRun, n - i0);
    const int32_t* s = src + i0;
    int32_t c[kCountRun] = {};
    for (int64_t j = 0; j < t; ++j) {
      const int32_t tj = th[j];
      if (below)
        for (int64_t i = 0; i < m; ++i) c[i] += s[i] <= tj;
      else
        for (int64_t i = 0; i < m; ++i) c[i] += s[i] >= tj;
    }
    for (int64_t i = 0; i < m; ++i) dst[i0 + i] = static_cast<uint8_t>(c[i]);
  }
}

}  // namespace

// Per run of up to kSignedRun pixels of one image: nw S per pixel, then per channel its run of
// the NCHW plane (contiguous, vectorizes). D = 2 acc - nw S in uint32: the same bits as the
// int64 expression cast to int32 (both modulo 2^32; D itself fits int32).
void SignedFromAcc(const ConvGeom& g, const uint64_t* xpk, int32_t* acc, int64_t pix0,
                   int64_t pix1) {
  const int64_t ohw = g.oh * g.ow;
  const auto nw = static_cast<uint32_t>((int64_t{1} << g.w_bits) - 1);
  uint32_t nws[kSignedRun];
  for (int64_t pix = pix0; pix < pix1;) {
    const int64_t run = std::min({pix1 - pix, ohw - pix % ohw, kSignedRun});
    PixelWalker walk(g, xpk, pix);
    const int64_t out0 = walk.ref().out;
    for (int64_t i = 0; i < run; ++i, walk.Next())
      nws[i] = nw * static_cast<uint32_t>(FieldSum(g, walk.ref()));
    for (int64_t o = 0; o < g.o; ++o) {
      int32_t* a = acc + out0 + o * ohw;
      for (int64_t i = 0; i < run; ++i)
        a[i] = static_cast<int32_t>(2 * static_cast<uint32_t>(a[i]) - nws[i]);
    }
    pix += run;
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
      const int32_t uj = FoldedThreshold(s, thresholds[o * t + j]);
      for (int64_t k = 0; k < kLanes; ++k) u[(pair * t + j) * 2 * kLanes + k0 + k] = uj;
    }
  }
}

void LaneThresholds(const ConvGeom& g, const int32_t* thresholds, int64_t t,
                    const int8_t* direction, int32_t* lane_u, int32_t* lane_neg) {
  std::fill(lane_u, lane_u + g.ob * t * kLanes, std::numeric_limits<int32_t>::max());
  std::fill(lane_neg, lane_neg + g.ob * kLanes, 0);
  for (int64_t o = 0; o < g.o; ++o) {
    const int64_t ob = o / kLanes, lane = o % kLanes;
    const int64_t s = direction[o] < 0 ? -1 : 1;
    lane_neg[o] = s < 0 ? -1 : 0;
    for (int64_t j = 0; j < t; ++j)
      lane_u[(ob * t + j) * kLanes + lane] = FoldedThreshold(s, thresholds[o * t + j]);
  }
}

void SearchRows(const ConvGeom& g, const int32_t* thresholds, int64_t t, const int8_t* direction,
                int32_t* rows) {
  std::fill(rows, rows + SearchRowsSize(g), std::numeric_limits<int32_t>::max());
  for (int64_t o = 0; o < g.o; ++o) {
    const int64_t s = direction[o] < 0 ? -1 : 1;
    int32_t* row = rows + o * kSearchRow;  // pair o / 2, half o % 2
    for (int64_t j = 0; j < t; ++j) row[j] = FoldedThreshold(s, thresholds[o * t + j]);
    std::sort(row, row + t);
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
      // Counting (rather than searching) is exact for any threshold order.
      CountAbove(d + no * ohw, ohw, thresholds + o * t, t, direction[o] < 0, codes + no * ohw);
    }
  });
}

}  // namespace dorefa
