// Byte matrix transposes: a 16 x 16 block in SSE2 registers (the int8 packing, int8conv.cpp)
// and a whole row-major matrix (TransposeBytes: the training engine's one-pixel input gradient
// takes its weights as (C KH KW, O), kernels/training.py; the weight packers read each output
// channel's codes tap by tap, TapMajor).
#ifndef DOREFA_CSRC_BYTE_TRANSPOSE_H_
#define DOREFA_CSRC_BYTE_TRANSPOSE_H_

#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace dorefa {

#if defined(__SSE2__)
// In place: r[i] holds bytes M[i][0..15] on entry, M[0..15][i] on return (4 rounds of unpacks).
inline void Transpose16x16(__m128i (&r)[16]) {
  __m128i a[16], b[16];
  for (int i = 0; i < 8; ++i) {  // rows 2i, 2i+1 interleaved: columns 0-7, then 8-15
    a[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
    a[i + 8] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // b[q * 4 + i]: rows 4i..4i+3 of columns 4q..4q+3
    for (int i = 0; i < 4; ++i) {
      b[h * 8 + i] = _mm_unpacklo_epi16(a[h * 8 + 2 * i], a[h * 8 + 2 * i + 1]);
      b[h * 8 + 4 + i] = _mm_unpackhi_epi16(a[h * 8 + 2 * i], a[h * 8 + 2 * i + 1]);
    }
  }
  for (int q = 0; q < 4; ++q) {  // a[q * 4 + 2h (+1)]: rows 8h..8h+7 of columns 4q, 4q+1 (+2)
    for (int h = 0; h < 2; ++h) {
      a[q * 4 + 2 * h] = _mm_unpacklo_epi32(b[q * 4 + 2 * h], b[q * 4 + 2 * h + 1]);
      a[q * 4 + 2 * h + 1] = _mm_unpackhi_epi32(b[q * 4 + 2 * h], b[q * 4 + 2 * h + 1]);
    }
    r[4 * q] = _mm_unpacklo_epi64(a[q * 4], a[q * 4 + 2]);
    r[4 * q + 1] = _mm_unpackhi_epi64(a[q * 4], a[q * 4 + 2]);
    r[4 * q + 2] = _mm_unpacklo_epi64(a[q * 4 + 1], a[q * 4 + 3]);
    r[4 * q + 3] = _mm_unpackhi_epi64(a[q * 4 + 1], a[q * 4 + 3]);
  }
}
#endif

// dst (cols, rows) = src (rows, cols) transposed, both row-major and contiguous. One thread: split
// over two, svhn conv6's 1.6 MB took 3x as long (measured; most likely the two threads' page
// faults on the fresh output).
void TransposeBytes(const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst);

// One output channel's (C, taps) weight codes w as (taps, C): w itself for one tap, else
// transposed into buf (C * taps bytes).
inline const uint8_t* TapMajor(const uint8_t* w, int64_t c, int64_t taps, uint8_t* buf) {
  if (taps == 1) return w;
  TransposeBytes(w, c, taps, buf);
  return buf;
}

}  // namespace dorefa

#endif  // DOREFA_CSRC_BYTE_TRANSPOSE_H_
