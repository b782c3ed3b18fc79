// The int8 tiles' vector store (int8conv_store.h) on zmm, 16 lanes: VnniStore, shared by the
// AVX-512 int8 and lut kernels (int8conv_vnni.cpp, lut_avx512.cpp; AVX-512 F/BW/VL only).
// Internal linkage, one copy per ISA file, as int8conv_store.h.
#ifndef DOREFA_CSRC_INT8CONV_STORE_AVX512_H_
#define DOREFA_CSRC_INT8CONV_STORE_AVX512_H_

#include <immintrin.h>

#include <cstdint>

#include "requant_avx512.h"
#include "requant_table.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

// The vector store (int8conv_store.h) on zmm: 16 lanes.
struct VnniStore {
  static constexpr int kLanes = 16;
  using Vec = __m512i;
  static Vec Zero() { return _mm512_setzero_si512(); }
  static Vec Or(Vec a, Vec b) { return _mm512_or_si512(a, b); }
  static Vec Shl(Vec a, int bits) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(bits)); }
  static void Store(uint32_t* dst, Vec a) { _mm512_store_si512(dst, a); }
  struct Lanes {
    const ThresholdTable* tab;
    __m512i zw, lo, hi;
    __m512d mul[2], add[2];
    __m512 fmul, fadd;
    __mmask16 neg;
    bool flt;  // every row takes the float line
    Lanes(const ThresholdTable& t, int64_t o, const int32_t* wsum, int32_t z)
        : tab(&t),
          zw(_mm512_mullo_epi32(_mm512_set1_epi32(z), _mm512_loadu_si512(wsum))),
          lo(_mm512_loadu_si512(t.lo.data() + o)),
          hi(_mm512_loadu_si512(t.hi.data() + o)),
          mul{_mm512_loadu_pd(t.mul.data() + o), _mm512_loadu_pd(t.mul.data() + o + 8)},
          add{_mm512_loadu_pd(t.add.data() + o), _mm512_loadu_pd(t.add.data() + o + 8)},
          fmul(_mm512_loadu_ps(t.fmul.data() + o)),
          fadd(_mm512_loadu_ps(t.fadd.data() + o)),
          neg(_mm_test_epi8_mask(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(t.neg.data() + o)),
              _mm_set1_epi8(1))),
          flt(t.FloatRows(o, kLanes)) {}
    Vec Codes(const int32_t* raw, int32_t nws) const {
      const __m512i acc = _mm512_add_epi32(_mm512_loadu_si512(raw), zw);
      const __m512i dv = _mm512_sub_epi32(_mm512_slli_epi32(acc, 1), _mm512_set1_epi32(nws));
      const __m512i sd = _mm512_mask_sub_epi32(dv, neg, _mm512_setzero_si512(), dv);
      return flt ? RequantOnFloatLines(sd, lo, hi, fmul, fadd)
                 : RequantOnLines(sd, lo, hi, mul, add);
    }
  };
};

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_INT8CONV_STORE_AVX512_H_
