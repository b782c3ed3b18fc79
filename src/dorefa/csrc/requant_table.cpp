#include "requant_table.h"

#include <algorithm>
#include <limits>

namespace dorefa {

void ThresholdTable::Build(int64_t o, const int32_t* thresholds, int64_t t_,
                           const int8_t* direction) {
  constexpr int32_t kNever = std::numeric_limits<int32_t>::max();
  t = t_;
  width = kGroup;
  while (width < t + 1) width *= 2;
  rows = (o + kGroup - 1) / kGroup * kGroup;
  u.assign(static_cast<size_t>(rows * width), kNever);
  tops.assign(static_cast<size_t>(rows * kGroup), kNever);
  neg.assign(static_cast<size_t>(rows), 0);
  sorted = true;
  const int64_t groups = width / kGroup;
  for (int64_t c = 0; c < o; ++c) {
    const int64_t s = direction[c] < 0 ? -1 : 1;
    neg[c] = s < 0;
    int32_t* row = u.data() + c * width;
    for (int64_t j = 0; j < t; ++j) {
      row[j] = static_cast<int32_t>(
          std::max<int64_t>(s * thresholds[c * t + j] - 1, std::numeric_limits<int32_t>::min()));
      if (j > 0 && row[j] < row[j - 1]) sorted = false;
    }
    for (int64_t g = 0; g + 1 < groups; ++g) tops[c * kGroup + g] = row[g * kGroup + kGroup - 1];
  }
}

const ThresholdTable& CachedThresholdTable(int64_t o, const int32_t* thresholds, int64_t t,
                                           const int8_t* direction) {
  struct Entry {
    std::vector<int32_t> thresholds;
    std::vector<int8_t> direction;
    ThresholdTable table;
  };
  constexpr int kEntries = 8;
  static thread_local Entry cache[kEntries];
  static thread_local int next = 0;
  const size_t nt = static_cast<size_t>(o * t), nd = static_cast<size_t>(o);
  for (Entry& e : cache) {
    if (e.thresholds.size() == nt && e.direction.size() == nd && e.table.t == t &&
        std::equal(thresholds, thresholds + nt, e.thresholds.begin()) &&
        std::equal(direction, direction + nd, e.direction.begin()))
      return e.table;
  }
  Entry& e = cache[next];
  next = (next + 1) % kEntries;
  e.thresholds.assign(thresholds, thresholds + nt);
  e.direction.assign(direction, direction + nd);
  e.table.Build(o, thresholds, t, direction);
  return e.table;
}

uint8_t RequantCode(const ThresholdTable& tab, int64_t o, int32_t d) {
  const int32_t sd = tab.Folded(o, d);
  const int32_t* row = tab.u.data() + o * tab.width;
  int64_t pos = 0;
  if (tab.sorted) {
    // Invariant: row[0 .. pos) < sd. row[width - 1] is padding, so pos ends <= width - 1.
    for (int64_t half = tab.width / 2; half > 0; half /= 2)
      pos += row[pos + half - 1] < sd ? half : 0;
  } else {
    for (int64_t j = 0; j < tab.t; ++j) pos += row[j] < sd;
  }
  return static_cast<uint8_t>(pos);
}

void RequantPixelScalar(const ThresholdTable& tab, int64_t o0, int64_t n, const int32_t* d,
                        uint8_t* codes, int64_t stride) {
  for (int64_t i = 0; i < n; ++i) codes[i * stride] = RequantCode(tab, o0 + i, d[i]);
}

}  // namespace dorefa
