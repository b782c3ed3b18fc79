#include "requant_avx512.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace dorefa {
namespace {

// The table's fields in locals: the uint8 code stores may alias anything, so reading them
// through the table would reload every field after every store.
struct Rows {
  const int32_t* u;
  const int32_t* tops;
  const int8_t* neg;
  int64_t width;
  bool sorted;
  explicit Rows(const ThresholdTable& tab)
      : u(tab.u.data()),
        tops(tab.tops.data()),
        neg(tab.neg.data()),
        width(tab.width),
        sorted(tab.sorted) {}

  // #{ j : u[o][j] < sd } (requant_table.h).
  int Code(int64_t o, int32_t d) const {
    const __m512i v = _mm512_set1_epi32(neg[o] ? -d : d);
    const int32_t* row = u + o * width;
    if (sorted) {
      const __m512i top = _mm512_loadu_si512(tops + o * kGroup);
      const int g = __builtin_popcount(_mm512_cmplt_epi32_mask(top, v));
      const __mmask16 in = _mm512_cmplt_epi32_mask(_mm512_loadu_si512(row + g * kGroup), v);
      return g * kGroup + __builtin_popcount(in);
    }
    int code = 0;
    for (int64_t g = 0; g < width; g += kGroup)
      code += __builtin_popcount(_mm512_cmplt_epi32_mask(_mm512_loadu_si512(row + g), v));
    return code;
  }
};

}  // namespace

void RequantChannelAvx512(const ThresholdTable& tab, int64_t o, const int32_t* d, int64_t n,
                          uint8_t* codes) {
  const Rows rows(tab);
  if (!tab.line[o]) {
    for (int64_t i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(rows.Code(o, d[i]));
    return;
  }
  const __m512i lo = _mm512_set1_epi32(tab.lo[o]), hi = _mm512_set1_epi32(tab.hi[o]);
  if (tab.fline[o]) {
    const __m512 fmul = _mm512_set1_ps(tab.fmul[o]), fadd = _mm512_set1_ps(tab.fadd[o]);
    for (int64_t i = 0; i < n; i += kGroup) {
      const __mmask16 live = n - i >= kGroup ? 0xFFFF : (1u << (n - i)) - 1;
      __m512i sd = _mm512_maskz_loadu_epi32(live, d + i);
      if (tab.neg[o]) sd = _mm512_sub_epi32(_mm512_setzero_si512(), sd);
      _mm512_mask_cvtepi32_storeu_epi8(codes + i, live,
                                       RequantOnFloatLines(sd, lo, hi, fmul, fadd));
    }
    return;
  }
  const __m512d mul[2] = {_mm512_set1_pd(tab.mul[o]), _mm512_set1_pd(tab.mul[o])};
  const __m512d add[2] = {_mm512_set1_pd(tab.add[o]), _mm512_set1_pd(tab.add[o])};
  for (int64_t i = 0; i < n; i += kGroup) {
    const __mmask16 live = n - i >= kGroup ? 0xFFFF : (1u << (n - i)) - 1;
    __m512i sd = _mm512_maskz_loadu_epi32(live, d + i);
    if (tab.neg[o]) sd = _mm512_sub_epi32(_mm512_setzero_si512(), sd);
    _mm512_mask_cvtepi32_storeu_epi8(codes + i, live, RequantOnLines(sd, lo, hi, mul, add));
  }
}

}  // namespace dorefa
