// The int8 tiles' vector store (int8conv_store.h) on ymm, 8 lanes: Avx2Store, shared by the
// AVX2 int8 and lut kernels (int8conv_avx2.cpp, lut_avx2.cpp). Internal linkage, one copy per
// ISA file, as int8conv_store.h.
#ifndef DOREFA_CSRC_INT8CONV_STORE_AVX2_H_
#define DOREFA_CSRC_INT8CONV_STORE_AVX2_H_

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "requant_table.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

// ThresholdTable::OnLine for 4 lanes of x (clamped, minus lo; zero-extended to 64 bits): the
// 64-bit product from two 32 x 32 -> 64 multiplies (x < 2^32; the table checked that the true
// value fits), and the arithmetic shift by 48 as a logical one with negative sums set to 0 (the
// code's clamp makes them 0 anyway).
inline __m256i LineQuarter(__m256i x, __m256i mul, __m256i add) {
  const __m256i lo = _mm256_mul_epu32(x, mul);
  const __m256i hi = _mm256_slli_epi64(_mm256_mul_epu32(x, _mm256_srli_epi64(mul, 32)), 32);
  const __m256i q = _mm256_add_epi64(_mm256_add_epi64(lo, hi), add);
  const __m256i negative = _mm256_cmpgt_epi64(_mm256_setzero_si256(), q);
  return _mm256_andnot_si256(negative, _mm256_srli_epi64(q, ThresholdTable::kLineShift));
}

// The vector store (int8conv_store.h) on ymm: 8 lanes.
struct Avx2Store {
  static constexpr int kLanes = 8;
  using Vec = __m256i;
  static Vec Zero() { return _mm256_setzero_si256(); }
  static Vec Or(Vec a, Vec b) { return _mm256_or_si256(a, b); }
  static Vec Shl(Vec a, int bits) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(bits)); }
  static void Store(uint32_t* dst, Vec a) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(dst), a);
  }
  struct Lanes {
    __m256i zw, neg, lo, hi, mul[2], add[2], t;
    __m256 fmul, fadd;
    bool flt;  // every row takes the float line (requant_table.h)
    Lanes(const ThresholdTable& tab, int64_t o, const int32_t* wsum, int32_t z) {
      zw = _mm256_mullo_epi32(_mm256_set1_epi32(z), Load(wsum));
      int64_t neg8;
      std::memcpy(&neg8, tab.neg.data() + o, 8);
      neg =
          _mm256_cmpgt_epi32(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(neg8)), _mm256_setzero_si256());
      lo = Load(tab.lo.data() + o);
      hi = Load(tab.hi.data() + o);
      for (int i = 0; i < 2; ++i) {
        mul[i] = Load(tab.mul.data() + o + 4 * i);
        add[i] = Load(tab.add.data() + o + 4 * i);
      }
      t = _mm256_set1_epi32(static_cast<int32_t>(tab.t));
      fmul = _mm256_loadu_ps(tab.fmul.data() + o);
      fadd = _mm256_loadu_ps(tab.fadd.data() + o);
      flt = tab.FloatRows(o, kLanes);
    }
    template <class T>
    static __m256i Load(const T* p) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    }
    Vec Codes(const int32_t* raw, int32_t nws) const {
      const __m256i acc = _mm256_add_epi32(Load(raw), zw);
      const __m256i dv = _mm256_sub_epi32(_mm256_slli_epi32(acc, 1), _mm256_set1_epi32(nws));
      const __m256i sd = _mm256_blendv_epi8(dv, _mm256_sub_epi32(_mm256_setzero_si256(), dv), neg);
      const __m256i x = _mm256_sub_epi32(_mm256_min_epi32(_mm256_max_epi32(sd, lo), hi), lo);
      if (flt) return _mm256_cvttps_epi32(_mm256_fmadd_ps(_mm256_cvtepi32_ps(x), fmul, fadd));
      const __m256i q0 =
          LineQuarter(_mm256_cvtepu32_epi64(_mm256_castsi256_si128(x)), mul[0], add[0]);
      const __m256i q1 =
          LineQuarter(_mm256_cvtepu32_epi64(_mm256_extracti128_si256(x, 1)), mul[1], add[1]);
      // The low dword of each 64-bit lane, lanes 0-3 then 4-7, clamped to T.
      const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
      const __m256i q = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(q0, pick),
                                           _mm256_permutevar8x32_epi32(q1, pick), 0xF0);
      return _mm256_min_epi32(q, t);
    }
  };
};

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_INT8CONV_STORE_AVX2_H_
