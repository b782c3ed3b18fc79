#include "requant_avx512.h"

#include <immintrin.h>

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
  for (int64_t i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(rows.Code(o, d[i]));
}

void RequantPixelAvx512(const ThresholdTable& tab, int64_t o0, int64_t n, const int32_t* d,
                        uint8_t* codes, int64_t stride) {
  const Rows rows(tab);
  for (int64_t i = 0; i < n; ++i) codes[i * stride] = static_cast<uint8_t>(rows.Code(o0 + i, d[i]));
}

}  // namespace dorefa
