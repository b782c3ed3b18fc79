// The int8 tiles' vector store (int8conv_store.h) on ymm, 8 lanes: Avx2Store, shared by the
// AVX2 int8 and lut kernels (int8conv_avx2.cpp, lut_avx2.cpp). Internal linkage, one copy per
// ISA file, as int8conv_store.h.
#ifndef DOREFA_CSRC_INT8CONV_STORE_AVX2_H_
#define DOREFA_CSRC_INT8CONV_STORE_AVX2_H_

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "int8conv_store.h"
#include "requant_table.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

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
  static void StoreInt32(const Int8Conv& c, int64_t o0, const int32_t* raw, int64_t step,
                         const int32_t* nws, int np, int run, int32_t* dst, int64_t stride,
                         int64_t lanes) {
    StoreInt32Ymm(c, o0, raw, step, nws, np, run, dst, stride, lanes);
  }
  struct Lanes {
    __m256i zw, neg, lo, hi;
    __m256d mul[2], add[2];
    __m256 fmul, fadd;
    bool flt;     // every row takes the float line (requant_table.h)
    bool d_sums;  // the sums are D (Int8Conv::d_sums)
    Lanes(const Int8Conv& c, int64_t o) : d_sums(c.d_sums) {
      const ThresholdTable& tab = *c.table;
      zw = _mm256_mullo_epi32(_mm256_set1_epi32(c.shift), Load(c.wsum + o));
      int64_t neg8;
      std::memcpy(&neg8, tab.neg.data() + o, 8);
      neg =
          _mm256_cmpgt_epi32(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(neg8)), _mm256_setzero_si256());
      lo = Load(tab.lo.data() + o);
      hi = Load(tab.hi.data() + o);
      for (int i = 0; i < 2; ++i) {
        mul[i] = _mm256_loadu_pd(tab.mul.data() + o + 4 * i);
        add[i] = _mm256_loadu_pd(tab.add.data() + o + 4 * i);
      }
      fmul = _mm256_loadu_ps(tab.fmul.data() + o);
      fadd = _mm256_loadu_ps(tab.fadd.data() + o);
      flt = tab.FloatRows(o, kLanes);
    }
    template <class T>
    static __m256i Load(const T* p) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    }
    Vec Codes(const int32_t* raw, int32_t nws) const {
      const __m256i v = Load(raw);
      const __m256i dv = d_sums ? v
                                : _mm256_sub_epi32(_mm256_slli_epi32(_mm256_add_epi32(v, zw), 1),
                                                   _mm256_set1_epi32(nws));
      const __m256i sd = _mm256_blendv_epi8(dv, _mm256_sub_epi32(_mm256_setzero_si256(), dv), neg);
      const __m256i x = _mm256_min_epi32(_mm256_max_epi32(sd, lo), hi);
      if (flt) {  // the float line (requant_table.h)
        const __m256 xf = _mm256_cvtepi32_ps(_mm256_sub_epi32(x, lo));
        return _mm256_cvttps_epi32(_mm256_fmadd_ps(xf, fmul, fadd));
      }
      const __m128i q0 = _mm256_cvttpd_epi32(
          _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(x)), mul[0], add[0]));
      const __m128i q1 = _mm256_cvttpd_epi32(
          _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(x, 1)), mul[1], add[1]));
      return _mm256_set_m128i(q1, q0);
    }
  };
};

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_INT8CONV_STORE_AVX2_H_
