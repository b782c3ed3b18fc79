// TransposeBytes (byte_transpose.h): tiles of 64 x 64 bytes (each 64-byte line of the source
// read once and each line of the output written whole within a tile: the output is written
// across rows `rows` bytes apart, and svhn conv6's 1.6 MB matrix outgrows L2), 16 x 16 blocks
// through SSE2 registers where the CPU has them, the edges (and other CPUs) element by element.
#include "byte_transpose.h"

#include <algorithm>

namespace dorefa {
namespace {

constexpr int64_t kTile = 64;
constexpr int64_t kBlock = 16;

// dst[c][r] = src[r][c] for r in [r0, r1), c in [c0, c1).
void TransposeScalar(const uint8_t* src, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                     int64_t c0, int64_t c1, uint8_t* dst) {
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
}

// Rows [r0, r1) of src, every column, in tiles.
void TransposeBand(const uint8_t* src, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                   uint8_t* dst) {
  for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
    const int64_t c1 = std::min(cols, c0 + kTile);
    int64_t rb = r0;
#if defined(__SSE2__)
    for (; rb + kBlock <= r1; rb += kBlock) {
      int64_t cb = c0;
      for (; cb + kBlock <= c1; cb += kBlock) {
        __m128i r[kBlock];
        for (int i = 0; i < kBlock; ++i)
          r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (rb + i) * cols + cb));
        Transpose16x16(r);
        for (int i = 0; i < kBlock; ++i)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (cb + i) * rows + rb), r[i]);
      }
      TransposeScalar(src, rows, cols, rb, rb + kBlock, cb, c1, dst);
    }
#endif
    TransposeScalar(src, rows, cols, rb, r1, c0, c1, dst);
  }
}

}  // namespace

void TransposeBytes(const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst) {
  for (int64_t r0 = 0; r0 < rows; r0 += kTile)
    TransposeBand(src, rows, cols, r0, std::min(rows, r0 + kTile), dst);
}

}  // namespace dorefa
