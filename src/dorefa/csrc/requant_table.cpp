#include "requant_table.h"

#include <algorithm>
#include <cmath>
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
  // Padding rows: x * 0 + 0 gives code 0 (their thresholds never count either).
  line.assign(static_cast<size_t>(rows), 1);
  mul.assign(static_cast<size_t>(rows), 0.0);
  add.assign(static_cast<size_t>(rows), 0.0);
  lo.assign(static_cast<size_t>(rows), 0);
  hi.assign(static_cast<size_t>(rows), 0);
  fmul.assign(static_cast<size_t>(rows), 0.0f);
  fadd.assign(static_cast<size_t>(rows), 0.0f);
  fline.assign(static_cast<size_t>(rows), 1);
  sorted = true;
  const int64_t groups = width / kGroup;
  for (int64_t c = 0; c < o; ++c) {
    const int64_t s = direction[c] < 0 ? -1 : 1;
    neg[c] = s < 0;
    int32_t* row = u.data() + c * width;
    for (int64_t j = 0; j < t; ++j) {
      row[j] = FoldedThreshold(s, thresholds[c * t + j]);
      if (j > 0 && row[j] < row[j - 1]) sorted = false;
    }
    for (int64_t g = 0; g + 1 < groups; ++g) tops[c * kGroup + g] = row[g * kGroup + kGroup - 1];
  }
  for (int64_t c = 0; c < o; ++c) {
    line[c] = FitLine(c);
    if (!line[c]) {  // searched: code 0 on either line, replaced
      lo[c] = hi[c] = 0;
      mul[c] = add[c] = 0.0;
    }
    if (line[c] != 0 && fmul[c] == 0.0f) fline[c] = 0;  // the float64 line only
  }
}

namespace {

// rho's interval for a step: (max_j u_j - j step, min_j u_j + 1 - j step]; ja / jb the rows
// that set its ends. Empty (lo >= hi) when no line of this step fits the row.
struct RhoRange {
  double lo = -HUGE_VAL, hi = HUGE_VAL;
  int64_t ja = 0, jb = 0;
  RhoRange(const int32_t* row, int64_t t, double step) {
    for (int64_t j = 0; j < t; ++j) {
      const double jd = static_cast<double>(j) * step;
      if (row[j] - jd > lo) lo = row[j] - jd, ja = j;
      if (row[j] + 1.0 - jd < hi) hi = row[j] + 1.0 - jd, jb = j;  // (int32 + 1 overflows)
    }
  }
  bool Fits() const { return lo < hi; }
};

// The end of the steps that fit between `inside` (fits) and `outside`, by bisection.
double FitEdge(const int32_t* row, int64_t t, double inside, double outside) {
  for (int i = 0; i < 40; ++i) {
    const double mid = (inside + outside) / 2;
    (RhoRange(row, t, mid).Fits() ? inside : outside) = mid;
  }
  return inside;
}

}  // namespace

// Fits row c's line (requant_table.h): a step that fits (each violated pair of rows narrows the
// step's range), rho in the middle of its interval; if the line then misses a code
// by a rounding, once more from the middle of all the steps that fit (the widest margins).
bool ThresholdTable::FitLine(int64_t c) {
  const int32_t* row = u.data() + c * width;
  for (int64_t j = 1; j < t; ++j)
    if (row[j] < row[j - 1]) return false;
  const double span = double{row[t - 1]} - row[0];
  double step_lo = t > 1 ? (span - 1) / static_cast<double>(t - 1) : 0.5;
  double step_hi = t > 1 ? (span + 1) / static_cast<double>(t - 1) : 1.5;
  for (int round = 0; round < 64 && step_lo < step_hi; ++round) {
    const double step = (step_lo + step_hi) / 2;
    const RhoRange r(row, t, step);
    if (r.Fits()) {
      if (TryLine(c, step, (r.lo + r.hi) / 2)) return true;
      const double first = FitEdge(row, t, step, step_lo), last = FitEdge(row, t, step, step_hi);
      const double mid = (first + last) / 2;
      const RhoRange m(row, t, mid);
      return m.Fits() && TryLine(c, mid, (m.lo + m.hi) / 2);
    }
    // Rows ja and jb cannot both hold: their pair bounds the step.
    if (r.ja < r.jb) {
      step_hi = std::min(step_hi, (double{row[r.jb]} + 1 - row[r.ja]) / double(r.jb - r.ja));
    } else {
      step_lo = std::max(step_lo, (double{row[r.ja]} - row[r.jb] - 1) / double(r.ja - r.jb));
    }
  }
  return false;
}

// Whether code(sd) gives row c's code at both ends of every code's interval of sd (enough for a
// code monotone in sd).
template <class Code>
bool ThresholdTable::Checked(int64_t c, Code code) const {
  constexpr int64_t kMin = std::numeric_limits<int32_t>::min();
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  const int32_t* row = u.data() + c * width;
  for (int64_t k = 0; k <= t; ++k) {
    const int64_t first = k == 0 ? kMin : int64_t{row[k - 1]} + 1;
    const int64_t last = k == t ? kMax : int64_t{row[k]};
    if (first > last) continue;  // no sd has this code
    if (code(static_cast<int32_t>(first)) != k || code(static_cast<int32_t>(last)) != k)
      return false;
  }
  return true;
}

// Row c's line for (step, rho), checked against both ends of every code's interval of sd (the
// line is monotone in sd).
bool ThresholdTable::TryLine(int64_t c, double step, double rho) {
  const int32_t* row = u.data() + c * width;
  if (!(step > 0)) return false;
  mul[c] = 1.0 / step;
  add[c] = 1.0 - rho / step;
  if (!std::isfinite(mul[c]) || !std::isfinite(add[c])) return false;
  lo[c] = row[0];
  hi[c] = static_cast<int32_t>(
      std::min<int64_t>(int64_t{row[t - 1]} + 1, std::numeric_limits<int32_t>::max()));
  if (!Checked(c, [&](int32_t sd) { return OnLine(c, sd); })) return false;
  if (!TryFloatLine(c, step, rho)) fmul[c] = fadd[c] = 0.0f;
  return true;
}

// Row c's float line for the (step, rho) of its line (lo, hi set), checked the same way.
bool ThresholdTable::TryFloatLine(int64_t c, double step, double rho) {
  if (int64_t{hi[c]} - lo[c] > kFloatSpan) return false;
  fmul[c] = static_cast<float>(1.0 / step);
  fadd[c] = static_cast<float>((lo[c] - rho + step) / step);
  // fadd far from a denormal (a CPU flushing those would round the FMA otherwise), fmul > 0
  if (!(fmul[c] > 0) || !std::isfinite(fadd[c]) || (fadd[c] != 0 && std::fabs(fadd[c]) < 1e-30f))
    return false;
  return Checked(c, [&](int32_t sd) { return OnFloatLine(c, sd); });
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

RequantParams::RequantParams(int64_t o_, const int32_t* th, int64_t t_, const int8_t* dir)
    : o(o_), t(t_), thresholds(th, th + o_ * t_), direction(dir, dir + o_) {
  table.Build(o, thresholds.data(), t, direction.data());
}

uint8_t RequantCode(const ThresholdTable& tab, int64_t o, int32_t d) {
  const int32_t sd = tab.Folded(o, d);
  if (tab.line[o]) return static_cast<uint8_t>(tab.OnLine(o, sd));
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

}  // namespace dorefa
