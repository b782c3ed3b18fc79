// TransposeBytes (byte_transpose.h): 16 x 16 blocks through SSE2 registers where the CPU has
// them, the edges (and other CPUs) element by element.
#include "byte_transpose.h"

#include <cstring>

namespace dorefa {

void TransposeBytes(const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst) {
  int64_t r0 = 0;
#if defined(__SSE2__)
  for (; r0 + 16 <= rows; r0 += 16) {
    int64_t c0 = 0;
    for (; c0 + 16 <= cols; c0 += 16) {
      __m128i r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (r0 + i) * cols + c0));
      Transpose16x16(r);
      for (int i = 0; i < 16; ++i)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (c0 + i) * rows + r0), r[i]);
    }
    for (int64_t c = c0; c < cols; ++c)
      for (int64_t i = r0; i < r0 + 16; ++i) dst[c * rows + i] = src[i * cols + c];
  }
#endif
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t i = r0; i < rows; ++i) dst[c * rows + i] = src[i * cols + c];
}

}  // namespace dorefa
