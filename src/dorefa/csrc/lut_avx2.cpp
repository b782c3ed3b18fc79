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
  static constexpr int kBytes = 32, kGroups = 2;
  using Vec = __m256i;
  static Vec Load(const uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static void Store(uint8_t* p, Vec v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static Vec Groups(const uint8_t* xq) {  // 8 bytes to both lanes
    int64_t v;
    std::memcpy(&v, xq, 8);
    return _mm256_set1_epi64x(v);
  }
  static Vec Slice(Vec x, int shift, int mask) {  // (x >> shift) & mask per byte
    return _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(shift)),
                            _mm256_set1_epi8(static_cast<char>(mask)));
  }
  static Vec Zero() { return _mm256_setzero_si256(); }
  static Vec Lookup(Vec t, Vec i) { return _mm256_shuffle_epi8(t, i); }
  static Vec AddB(Vec a, Vec b) { return _mm256_add_epi8(a, b); }
  static void Widen(Vec a8, Vec* w, Vec* odd) {
    *w = _mm256_add_epi16(*w, a8);
    *odd = _mm256_add_epi16(*odd, _mm256_srli_epi16(a8, 8));
  }
  // m[o] += (channel o's sum over the 2 lanes) << shift, o < 16: the lanes added as 16-bit
  // words (w and odd), even = w - 256 odd, then both widened to uint32 (lut_tile.h).
  static void Flush(Vec w, Vec odd, int shift, uint32_t* m) {
    const __m128i wl = _mm_add_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    const __m128i ol = _mm_add_epi16(_mm256_castsi256_si128(odd), _mm256_extracti128_si256(odd, 1));
    const __m128i el = _mm_sub_epi16(wl, _mm_slli_epi16(ol, 8));
    const __m128i sh = _mm_cvtsi32_si128(shift);
    auto* dst = reinterpret_cast<__m256i*>(m);
    _mm256_store_si256(dst, _mm256_add_epi32(_mm256_load_si256(dst),
                                             _mm256_sll_epi32(_mm256_cvtepu16_epi32(el), sh)));
    _mm256_store_si256(dst + 1, _mm256_add_epi32(_mm256_load_si256(dst + 1),
                                                 _mm256_sll_epi32(_mm256_cvtepu16_epi32(ol), sh)));
  }
};

}  // namespace

extern const Int8Kernel kLutAvx2 = {
    "2x32", &TileLut<Ymm, Avx2Store, 2, 2>, &LutShift, kMaxLutPixels, 2, &BuildTables<Ymm>};

}  // namespace dorefa
