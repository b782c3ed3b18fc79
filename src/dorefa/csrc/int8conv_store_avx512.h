// The int8 tiles' vector store (int8conv_store.h) on zmm, 16 lanes: VnniStore, shared by the
// AVX-512 int8 and lut kernels (int8conv_vnni.cpp, int8conv_amx.cpp, lut_avx512.cpp; AVX-512
// F/BW/VL only).
// Internal linkage, one copy per ISA file, as int8conv_store.h.
#ifndef DOREFA_CSRC_INT8CONV_STORE_AVX512_H_
#define DOREFA_CSRC_INT8CONV_STORE_AVX512_H_

#include <immintrin.h>

#include <cstdint>

#include "int8conv_store.h"
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
  // StoreInt32Ymm (int8conv_store.h) on zmm: a pixel's 16 values in one vector, then the
  // 8 x 16 transpose in registers (unpack 32, unpack 64, VPERMT2Q pairing the 128-bit
  // quarters), each zmm two lanes' runs (its halves).
  static void StoreInt32(const Int8Conv& c, int64_t o0, const int32_t* raw, int64_t step,
                         const int32_t* nws, int np, int run, int32_t* dst, int64_t stride,
                         int64_t lanes) {
    const __m512i zw =
        _mm512_mullo_epi32(_mm512_set1_epi32(c.shift), _mm512_loadu_si512(c.wsum + o0));
    const bool signed_d = c.mode != Epilogue::kAcc;
    __m512i r[kMaxStorePixels], t[kMaxStorePixels], u[kMaxStorePixels];
    for (int p = 0; p < kMaxStorePixels; ++p) {
      r[p] = _mm512_setzero_si512();
      if (p >= np) continue;
      const __m512i v = _mm512_loadu_si512(raw + p * step);
      if (c.d_sums) {  // the sums are D
        r[p] = v;
        continue;
      }
      const __m512i acc = _mm512_add_epi32(v, zw);
      r[p] =
          signed_d ? _mm512_sub_epi32(_mm512_add_epi32(acc, acc), _mm512_set1_epi32(nws[p])) : acc;
    }
    for (int p = 0; p < 8; p += 2) {
      t[p] = _mm512_unpacklo_epi32(r[p], r[p + 1]);  // per quarter q: lanes 4q, 4q+1
      t[p + 1] = _mm512_unpackhi_epi32(r[p], r[p + 1]);
    }
    for (int q = 0; q < 8; q += 4) {  // u[q + j], quarter k: lane 4k + j, rows q .. q + 3
      u[q] = _mm512_unpacklo_epi64(t[q], t[q + 2]);
      u[q + 1] = _mm512_unpackhi_epi64(t[q], t[q + 2]);
      u[q + 2] = _mm512_unpacklo_epi64(t[q + 1], t[q + 3]);
      u[q + 3] = _mm512_unpackhi_epi64(t[q + 1], t[q + 3]);
    }
    const __m512i quarters01 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i quarters23 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    auto run_of = [&](int64_t l, __m256i v) {
      if (l < lanes) StoreChannelRun(dst + l * stride, v, run, c.prefetch);
    };
    for (int j = 0; j < 4; ++j) {
      const __m512i a = _mm512_permutex2var_epi64(u[j], quarters01, u[j + 4]);  // lanes j, 4 + j
      const __m512i b = _mm512_permutex2var_epi64(u[j], quarters23, u[j + 4]);  // 8 + j, 12 + j
      run_of(j, _mm512_castsi512_si256(a));
      run_of(4 + j, _mm512_extracti64x4_epi64(a, 1));
      run_of(8 + j, _mm512_castsi512_si256(b));
      run_of(12 + j, _mm512_extracti64x4_epi64(b, 1));
    }
  }
  struct Lanes {
    const ThresholdTable* tab;
    __m512i zw, lo, hi;
    __m512d mul[2], add[2];
    __m512 fmul, fadd;
    __mmask16 neg;
    bool flt;     // every row takes the float line
    bool d_sums;  // the sums are D (Int8Conv::d_sums)
    Lanes(const Int8Conv& c, int64_t o) : Lanes(*c.table, c, o) {}
    Lanes(const ThresholdTable& t, const Int8Conv& c, int64_t o)
        : tab(&t),
          zw(_mm512_mullo_epi32(_mm512_set1_epi32(c.shift), _mm512_loadu_si512(c.wsum + o))),
          lo(_mm512_loadu_si512(t.lo.data() + o)),
          hi(_mm512_loadu_si512(t.hi.data() + o)),
          mul{_mm512_loadu_pd(t.mul.data() + o), _mm512_loadu_pd(t.mul.data() + o + 8)},
          add{_mm512_loadu_pd(t.add.data() + o), _mm512_loadu_pd(t.add.data() + o + 8)},
          fmul(_mm512_loadu_ps(t.fmul.data() + o)),
          fadd(_mm512_loadu_ps(t.fadd.data() + o)),
          neg(_mm_test_epi8_mask(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(t.neg.data() + o)),
              _mm_set1_epi8(1))),
          flt(t.FloatRows(o, kLanes)),
          d_sums(c.d_sums) {}
    Vec Codes(const int32_t* raw, int32_t nws) const {
      const __m512i v = _mm512_loadu_si512(raw);
      const __m512i dv = d_sums ? v
                                : _mm512_sub_epi32(_mm512_slli_epi32(_mm512_add_epi32(v, zw), 1),
                                                   _mm512_set1_epi32(nws));
      const __m512i sd = _mm512_mask_sub_epi32(dv, neg, _mm512_setzero_si512(), dv);
      return flt ? RequantOnFloatLines(sd, lo, hi, fmul, fadd)
                 : RequantOnLines(sd, lo, hi, mul, add);
    }
  };
};

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_INT8CONV_STORE_AVX512_H_
