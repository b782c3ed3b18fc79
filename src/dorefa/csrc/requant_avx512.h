// requant_table.h with AVX-512: rows with a line take it for 16 outputs at a time (a float32 or
// float64 multiply-add and a truncation, no table read); other rows are searched per output: one
// compare of sd against a channel's 16 group tops, then one against the group that holds the
// insertion point (sorted rows), or one per group (unsorted rows, or a single group). Built with
// AVX-512 F/BW/VL/DQ.
#ifndef DOREFA_CSRC_REQUANT_AVX512_H_
#define DOREFA_CSRC_REQUANT_AVX512_H_

#include <immintrin.h>

#include <cstdint>

#include "requant_table.h"

namespace dorefa {

// The codes of 16 folded sd on their rows' lines (requant_table.h): lo, hi per lane, mul and
// add for lanes 0-7 and 8-15 (exact for the lanes whose row has a line, 0 for a row without).
inline __m512i RequantOnLines(__m512i sd, __m512i lo, __m512i hi, const __m512d (&mul)[2],
                              const __m512d (&add)[2]) {
  const __m512i x = _mm512_min_epi32(_mm512_max_epi32(sd, lo), hi);
  const __m256i q0 = _mm512_cvttpd_epi32(
      _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(x)), mul[0], add[0]));
  const __m256i q1 = _mm512_cvttpd_epi32(
      _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(x, 1)), mul[1], add[1]));
  return _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
}

// The codes of 16 folded sd on their rows' float lines (requant_table.h: exact for the lanes
// whose row has one, 0 for a row without any line).
inline __m512i RequantOnFloatLines(__m512i sd, __m512i lo, __m512i hi, __m512 fmul, __m512 fadd) {
  const __m512i x = _mm512_sub_epi32(_mm512_min_epi32(_mm512_max_epi32(sd, lo), hi), lo);
  return _mm512_cvttps_epi32(_mm512_fmadd_ps(_mm512_cvtepi32_ps(x), fmul, fadd));
}

// n codes of channel o: codes[i] from d[i] (consecutive pixels of one channel).
void RequantChannelAvx512(const ThresholdTable& tab, int64_t o, const int32_t* d, int64_t n,
                          uint8_t* codes);

}  // namespace dorefa

#endif  // DOREFA_CSRC_REQUANT_AVX512_H_
