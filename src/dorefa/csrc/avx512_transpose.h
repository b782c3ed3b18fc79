// A 16 x 16 transpose of 32-bit elements in zmm registers, for the AVX-512 files that repack
// 4-byte groups (wgrad_vnni_direct.cpp, igrad_vnni.cpp). Internal linkage: every file compiles
// it with its own flags.
#ifndef DOREFA_CSRC_AVX512_TRANSPOSE_H_
#define DOREFA_CSRC_AVX512_TRANSPOSE_H_

#include <immintrin.h>

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA file

// r[i] holds row i's 16 dwords; afterwards r[j] holds column j (row 0's dword j first).
inline void Transpose16Dwords(__m512i (&r)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i + e], 128-bit lane k: rows 4i .. 4i + 3 of dword 4k + e
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int e = 0; e < 4; ++e) {  // column 4k + e: lane k of u[e], u[4 + e], u[8 + e], u[12 + e]
    const __m512i a0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88);
    const __m512i a1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xDD);
    const __m512i b0 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88);
    const __m512i b1 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xDD);
    r[e] = _mm512_shuffle_i32x4(a0, b0, 0x88);
    r[8 + e] = _mm512_shuffle_i32x4(a0, b0, 0xDD);
    r[4 + e] = _mm512_shuffle_i32x4(a1, b1, 0x88);
    r[12 + e] = _mm512_shuffle_i32x4(a1, b1, 0xDD);
  }
}

// Bytes [i, end) of a 64-byte step starting at i, as a mask (all 64 from end - i >= 64).
inline __mmask64 ByteSpan(int64_t i, int64_t end) {
  const int64_t n = end - i;
  return n >= 64 ? ~__mmask64{0} : n <= 0 ? __mmask64{0} : (__mmask64{1} << n) - 1;
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_AVX512_TRANSPOSE_H_
