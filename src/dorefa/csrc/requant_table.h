// Threshold re-quantisation by search: the per-channel thresholds of output_transform.h in a
// table that a search reads in O(log T) per output instead of T compares.
//
// Sign folding (as Epilogue in bitconv.h): with s = direction of channel o (+1 / -1),
//   code = #{ j : s * D > u_j },   u_j = s * t_j - 1  (clamped to INT32_MIN: it always holds),
// i.e. code = the number of u_j below sd = s * D. The exporter's thresholds (exporter/folding.py)
// rise with j for direction +1 and fall for -1, so u is non-decreasing in both cases; then
//   code = #{ j : u_j < sd } = the insertion point of sd in the sorted row,
// found by a search. A row that is not sorted (the reference accepts any order) is counted
// linearly instead: the table records, once per call, whether every row is sorted.
//
// Layout: rows of `width` int32 per channel, width = a power of two >= max(16, T + 1); entries
// j >= T hold INT32_MAX, which is never below sd (|D| <= INT32_MAX), so padding never counts.
// A row is `width / 16` groups of 16 (one zmm each); tops[o][g] = u[o][16 g + 15] for the first
// width / 16 - 1 groups (INT32_MAX after), so for a sorted row
//   G = #{ g : tops[o][g] < sd },   code = 16 G + #{ i : u[o][16 G + i] < sd }
// (groups before G lie wholly below sd; group G holds the insertion point, or is the last one).
// Rows exist for `rows` channels (O rounded up to 16); the extra rows are padding (code 0).
//
// The line (most rows, no table read at all): the exporter's thresholds come from an affine map
// (exporter/folding.py: t_j = ceil(r_0 + j * step), r_j real), so in folded form
//   u_j = ceil(rho + j * step) - 1   and   code = #{ j : rho + j * step <= sd }
//                                              = clamp(floor((sd - rho) / step) + 1, 0, T).
// Build fits (rho, step) to the row: rho + j * step must lie in (u_j, u_j + 1] for every j; the
// step starts from the end points and each violated pair of rows (the highest lower bound above
// the lowest upper bound) narrows its range, a few rounds at most; rho is then the middle of its
// interval (and if the line misses a code by a rounding, the fit is redone from the middle of all
// the steps that fit). The kernels evaluate the line in float64, exactly the same on every path:
//   code = trunc(fma(double(min(max(sd, lo), hi)), mul, add)),   lo = u_0,  hi = u_{T-1} + 1,
//   mul = 1 / step,  add = 1 - rho / step   (each rounded to float64),
// one rounding (the FMA: std::fma and the vector FMAs give the same bits; sd is exact in float64)
// and a truncation. Clamping sd to [lo, hi] keeps its code. The line is monotone in sd, so Build
// checks both ends of every code's interval of sd and marks the row `line` only if all agree
// with the thresholds (those ends include sd = lo, code 0, and sd = hi, code T: the line needs no
// clamp of the code); other rows (rows that are not sorted, rows clipped at +-(dmax + 1) or of
// one constant code, a fit that misses by a rounding) are searched, with lo = hi = mul = add = 0
// on the line (code 0, replaced).
//
// The float line (the vector stores' fast path: 3 operations per 16 codes, against 8 for the
// float64 line): where hi - lo <= 2^24 (x exact in float32),
//   code = trunc(fma(float(x), fmul, fadd)),   x = min(max(sd, lo), hi) - lo,
//   fmul = float(1 / step),  fadd = float((lo - rho + step) / step),
// checked the same way. It holds where float32 resolves every code's boundary: T = 3 or 15
// outputs, small steps; at T = 255 the boundaries lie closer than its rounding. fline[o] = 1
// where row o's codes may come from the float line: it has one, or it has no line at all
// (fmul = fadd = 0: code 0, replaced); a vector of rows takes the float line when all of them
// can.
#ifndef DOREFA_CSRC_REQUANT_TABLE_H_
#define DOREFA_CSRC_REQUANT_TABLE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace dorefa {

constexpr int64_t kGroup = 16;  // thresholds per group (one zmm of int32)
// From this many thresholds on, the popcount kernels search the table; below it they keep their
// linear vector count (t compares per 16 outputs beat ~10 instructions per output there).
constexpr int64_t kSearchMinT = 32;

// u_j of threshold t_j for direction s (+1 / -1), as above: s t_j - 1 clamped to INT32_MIN.
inline int32_t FoldedThreshold(int64_t s, int32_t t) {
  return static_cast<int32_t>(std::max<int64_t>(s * t - 1, std::numeric_limits<int32_t>::min()));
}

struct ThresholdTable {
  int64_t t = 0;
  int64_t width = 0;          // entries per row
  int64_t rows = 0;           // channels with a row (O rounded up to 16)
  bool sorted = false;        // every row non-decreasing: the search is exact
  std::vector<int32_t> u;     // (rows, width), sign-folded, INT32_MAX padded
  std::vector<int32_t> tops;  // (rows, 16)
  std::vector<int8_t> neg;    // (rows,) 1 where direction is -1
  // The line, per row (see above); rows with line[o] == 0 are searched.
  std::vector<int8_t> line;
  std::vector<double> mul, add;
  std::vector<int32_t> lo, hi;
  std::vector<float> fmul, fadd;  // the float line (above), per row
  std::vector<int8_t> fline;      // 1: the row's codes may come from the float line
  static constexpr int64_t kFloatSpan = int64_t{1} << 24;  // hi - lo of a float line, at most

  // Fills the table from thresholds (O, T) int32 and direction (O,) int8 (+1 / -1).
  void Build(int64_t o, const int32_t* thresholds, int64_t t, const int8_t* direction);
  // s * d for channel o.
  int32_t Folded(int64_t o, int32_t d) const { return neg[o] ? -d : d; }
  // The code of folded sd on row o's line (the vector kernels compute the same).
  // (A value outside [-1, T + 1] is returned as -1 or T + 1, where the vector truncation would
  // give INT32_MIN: neither is a code, so Build refuses such a line either way.)
  int32_t OnLine(int64_t o, int32_t sd) const {
    const auto x = static_cast<double>(std::min(std::max(sd, lo[o]), hi[o]));
    return Truncated(std::fma(x, mul[o], add[o]));
  }
  // The code of folded sd on row o's float line (the vector kernels compute the same).
  int32_t OnFloatLine(int64_t o, int32_t sd) const {
    const auto x = static_cast<float>(std::min(std::max(sd, lo[o]), hi[o]) - lo[o]);
    return Truncated(std::fmaf(x, fmul[o], fadd[o]));
  }
  int32_t Truncated(double v) const {
    return static_cast<int32_t>(std::min(std::max(v, -1.0), static_cast<double>(t) + 1));
  }
  // Whether rows o .. o + n - 1 (n a multiple of 8, o + n <= rows) can all take the float
  // line: 8 flags (each 0 or 1) a word, on the vector stores' path once per block of rows.
  bool FloatRows(int64_t o, int64_t n) const {
    for (int64_t i = 0; i < n; i += 8) {
      uint64_t flags;
      std::memcpy(&flags, fline.data() + o + i, 8);
      if (flags != 0x0101010101010101u) return false;
    }
    return true;
  }

 private:
  bool FitLine(int64_t o);
  bool TryLine(int64_t o, double step, double rho);
  bool TryFloatLine(int64_t o, double step, double rho);
  template <class Code>
  bool Checked(int64_t o, Code code) const;
};

// The table of thresholds (O, T) and direction (O,), built on the first call with these values
// and kept in a small per-thread cache (8 tables, matched by value: a model's layers call with
// the same thresholds every time; building a 255-threshold table took as long as the layer's
// convolution at batch 1). Valid until this thread's 9th table after it.
const ThresholdTable& CachedThresholdTable(int64_t o, const int32_t* thresholds, int64_t t,
                                           const int8_t* direction);

// A layer's thresholds and directions with their table, built once (the `RequantTable` a
// runtime layer holds, bindings.cpp): a call that passes it skips the cache's match by value,
// a compare of every threshold (~4% of an (8,8,8) svhn model's time at batch 1).
struct RequantParams {
  int64_t o = 0, t = 0;
  std::vector<int32_t> thresholds;  // (o, t)
  std::vector<int8_t> direction;    // (o,)
  ThresholdTable table;
  RequantParams(int64_t o, const int32_t* thresholds, int64_t t, const int8_t* direction);
};

// `given` where the caller built it (RequantParams), else the cached table of these values.
inline const ThresholdTable& TableOf(const ThresholdTable* given, int64_t o,
                                     const int32_t* thresholds, int64_t t,
                                     const int8_t* direction) {
  return given != nullptr ? *given : CachedThresholdTable(o, thresholds, t, direction);
}

// Code of d in channel o: its line where the row has one, else a branch-free binary search over
// the row when sorted, else a count (portable; the AVX-512 kernels use requant_avx512.h).
uint8_t RequantCode(const ThresholdTable& tab, int64_t o, int32_t d);

}  // namespace dorefa

#endif  // DOREFA_CSRC_REQUANT_TABLE_H_
