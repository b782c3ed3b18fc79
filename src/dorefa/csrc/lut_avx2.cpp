// AVX2 lut kernel (lut.h, lut_tile.h): ymm steps of 2 tables (2 groups of 4 channels) per
// pixel, register tile of 2 output pixels x 32 output channels (2 blocks): per step 2 weight
// loads and 2 table loads for 4 VPSHUFB + 4 VPADDB, in 12 of the 16 ymm registers.
//
// Ceiling (Zen 2 and Zen 4: four 256-bit pipes, VPSHUFB on two of them): per 128 MACs of a W1
// plane, 1 VPSHUFB + 1 VPADDB, plus VPADDW, VPSRLW, VPADDW every k8 = 255 / maxv steps: W1A4
// 2.75 ymm ops -> 186 MAC/cycle, W1A2 2.14 -> 239 (docs/kernels.md), as the zmm kernel on Zen 4.
#include <immintrin.h>

#include <cstring>

#include "int8conv_store_avx2.h"
#include "lut_tile.h"

namespace dorefa {
namespace {

struct Ymm {
  static constexpr int kBytes = 32;
  using Vec = __m256i;
  static Vec Load(const uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static Vec Zero() { return _mm256_setzero_si256(); }
  static Vec Lookup(Vec t, Vec i) { return _mm256_shuffle_epi8(t, i); }
  static Vec AddB(Vec a, Vec b) { return _mm256_add_epi8(a, b); }
  static void Widen(Vec a8, Vec* w, Vec* odd) {
    *w = _mm256_add_epi16(*w, a8);
    *odd = _mm256_add_epi16(*odd, _mm256_srli_epi16(a8, 8));
  }
  // The 2 lanes of 16-bit words summed as uint32, << shift, added to m[0 .. 8).
  static void Fold(Vec w, int shift, uint32_t* m) {
    const __m256i a = _mm256_add_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(w)),
                                       _mm256_cvtepu16_epi32(_mm256_extracti128_si256(w, 1)));
    const __m256i v = _mm256_sll_epi32(a, _mm_cvtsi32_si128(shift));
    auto* dst = reinterpret_cast<__m256i*>(m);
    _mm256_store_si256(dst, _mm256_add_epi32(_mm256_load_si256(dst), v));
  }
  static void Flush(Vec w, Vec odd, int shift, uint32_t* m) {
    Fold(_mm256_sub_epi16(w, _mm256_slli_epi16(odd, 8)), shift, m);  // the even bytes' sums
    Fold(odd, shift, m + 8);
  }
};

int32_t NoShift(int) { return 0; }

// The tables of 8 groups (32 bytes of xq) at a time, as BuildTablesZmm with 2 lanes.
void BuildTablesYmm(const uint8_t* xq, int64_t bytes, int x_bits, int64_t slice_bytes,
                    uint8_t* tq) {
  alignas(32) uint8_t pick[4][32];
  for (int i = 0; i < 4; ++i)
    for (int b = 0; b < 32; ++b)
      pick[i][b] = (b >> i) & 1 ? static_cast<uint8_t>(4 * (b / 16) + i) : 0x80;
  __m256i p[4];
  for (int i = 0; i < 4; ++i) p[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(pick[i]));
  const LutSlices slices(x_bits);
  const int64_t whole = bytes / 8 * 8;
  for (int s = 0; s < slices.count; ++s) {
    const __m128i shift = _mm_cvtsi32_si128(s * slices.width);
    const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << slices.Bits(s, x_bits)) - 1));
    uint8_t* out = tq + s * slice_bytes;
    for (int64_t k = 0; k < whole; k += 8) {
      int64_t v;
      std::memcpy(&v, xq + k, 8);
      const __m256i x = _mm256_and_si256(_mm256_srl_epi16(_mm256_set1_epi64x(v), shift), mask);
      const __m256i t = _mm256_add_epi8(
          _mm256_add_epi8(_mm256_shuffle_epi8(x, p[0]), _mm256_shuffle_epi8(x, p[1])),
          _mm256_add_epi8(_mm256_shuffle_epi8(x, p[2]), _mm256_shuffle_epi8(x, p[3])));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * k), t);
    }
  }
  if (whole < bytes)
    BuildTablesScalar(xq + whole, bytes - whole, x_bits, slice_bytes, tq + 4 * whole);
}

}  // namespace

extern const Int8Kernel kLutAvx2 = {"2x32",   &TileLut<Ymm, Avx2Store, 2, 2>,
                                    &NoShift, kMaxLutPixels,
                                    2,        &RequantPixelScalar,
                                    "lut",    &BuildTablesYmm};

}  // namespace dorefa
