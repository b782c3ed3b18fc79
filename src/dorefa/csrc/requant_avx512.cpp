#include "requant_avx512.h"

#include <immintrin.h>

namespace dorefa {
namespace {

// #{ j : u[o][j] < sd } (requant_table.h).
inline int Code(const ThresholdTable& tab, int64_t o, int32_t d) {
  const __m512i v = _mm512_set1_epi32(tab.Folded(o, d));
  const int32_t* row = tab.u.data() + o * tab.width;
  const int64_t groups = tab.width / kGroup;
  if (tab.sorted) {
    const __m512i tops = _mm512_loadu_si512(tab.tops.data() + o * kGroup);
    const int g = __builtin_popcount(_mm512_cmplt_epi32_mask(tops, v));
    const __mmask16 in = _mm512_cmplt_epi32_mask(_mm512_loadu_si512(row + g * kGroup), v);
    return g * kGroup + __builtin_popcount(in);
  }
  int code = 0;
  for (int64_t g = 0; g < groups; ++g)
    code += __builtin_popcount(_mm512_cmplt_epi32_mask(_mm512_loadu_si512(row + g * kGroup), v));
  return code;
}

}  // namespace

void RequantChannelAvx512(const ThresholdTable& tab, int64_t o, const int32_t* d, int64_t n,
                          uint8_t* codes) {
  for (int64_t i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(Code(tab, o, d[i]));
}

void RequantPixelAvx512(const ThresholdTable& tab, int64_t o0, int64_t n, const int32_t* d,
                        uint8_t* codes, int64_t stride) {
  for (int64_t i = 0; i < n; ++i) codes[i * stride] = static_cast<uint8_t>(Code(tab, o0 + i, d[i]));
}

}  // namespace dorefa
