// AVX-512 rows of the float max-pool's 3 x 3 / 2 windows with padding 1 (pool.h; ResNet's stem
// pool). Per 32 input columns: the maxima down the window's rows in two registers (A, B), the
// even and odd columns gathered from them by two-source permutes, the column before each even
// one by a lane shift that carries the previous block's last odd column in (-inf before the
// first: the padding), all in registers. The same maxima in the same order as pool.cpp's rows
// (Max(a, b) = b > a ? b : a is VMAXPS with b first), NaN and inf flagged by VFPCLASSPS. A row
// buffer between the two passes (pool.cpp's SSE2 rows) made every load of the second wait for
// the first's stores to leave the store queue (they overlap without matching): that version
// ran no faster than the SSE2 rows. AVX-512 F/DQ.
#include <immintrin.h>

#include <limits>

#include "pool.h"

namespace dorefa {

uint32_t PoolRow3x3Stride2Pad1Avx512(const float* const* rows, int nrows, int64_t w, int64_t ow,
                                     float* out) {
  constexpr int kNanOrInf = 0x01 | 0x08 | 0x10 | 0x80;  // QNaN, +inf, -inf, SNaN
  const __m512 pad = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  __mmask16 special = 0;
  // The maxima of columns x .. x + 15 down the rows, -inf past the row.
  auto down = [&](int64_t x) {
    const int64_t left = w - x;
    const auto lanes = static_cast<__mmask16>(left >= 16  ? 0xFFFF
                                              : left <= 0 ? 0
                                                          : (1u << left) - 1);
    __m512 m = _mm512_mask_loadu_ps(pad, lanes, rows[0] + x);
    special |= _mm512_mask_fpclass_ps_mask(lanes, m, kNanOrInf);
    for (int r = 1; r < nrows; ++r) {
      const __m512 v = _mm512_mask_loadu_ps(pad, lanes, rows[r] + x);
      special |= _mm512_mask_fpclass_ps_mask(lanes, v, kNanOrInf);
      m = _mm512_max_ps(v, m);
    }
    return m;
  };
  __m512 odd_before = pad;                // column 32 i - 1 in lane 15
  for (int64_t i = 0; i < ow; i += 16) {  // outputs i .. i + 15: columns 2i - 1 .. 2i + 31
    const __m512 a = down(2 * i), b = down(2 * i + 16);
    const __m512 e = _mm512_permutex2var_ps(a, even, b);  // columns 2i, 2i + 2, ..
    const __m512 o = _mm512_permutex2var_ps(a, odd, b);   // 2i + 1, 2i + 3, ..
    const __m512 l = _mm512_castsi512_ps(                 // 2i - 1, 2i + 1, ..
        _mm512_alignr_epi32(_mm512_castps_si512(o), _mm512_castps_si512(odd_before), 15));
    odd_before = o;
    const auto lanes = static_cast<__mmask16>(ow - i >= 16 ? 0xFFFF : (1u << (ow - i)) - 1);
    _mm512_mask_storeu_ps(out + i, lanes, _mm512_max_ps(o, _mm512_max_ps(e, l)));
  }
  return special != 0;
}

}  // namespace dorefa
