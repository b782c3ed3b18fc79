// AVX-512 lut kernel (lut.h, lut_tile.h): zmm steps of 4 tables (4 groups of 4 channels) per
// pixel, register tile of 2 output pixels x 64 output channels (4 blocks): per step 4 weight
// loads and 2 table loads for 8 VPSHUFB + 8 VPADDB. AVX-512 F/BW only.
//
// Ceiling (Zen 4: four 256-bit pipes, a zmm op takes two; VPSHUFB on two of them): per 256
// MACs of a W1 plane, 1 VPSHUFB + 1 VPADDB, plus the widening (VPADDW, VPSRLW, VPADDW) every
// k8 = 255 / maxv steps: W1A4 (k8 = 4) 2.75 zmm ops -> 186 MAC/cycle, W1A2 (k8 = 21) 2.14 ->
// 239, below the shuffle pipes' 256 (docs/kernels.md).
#include <immintrin.h>

#include "int8conv_store_avx512.h"
#include "lut_tile.h"

namespace dorefa {
namespace {

struct Zmm {
  static constexpr int kBytes = 64, kGroups = 4;
  using Vec = __m512i;
  static Vec Load(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static void Store(uint8_t* p, Vec v) { _mm512_storeu_si512(p, v); }
  static Vec Groups(const uint8_t* xq) {  // 16 bytes to every lane
    return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq)));
  }
  static Vec Slice(Vec x, int shift, int mask) {  // (x >> shift) & mask per byte
    return _mm512_and_si512(_mm512_srl_epi16(x, _mm_cvtsi32_si128(shift)),
                            _mm512_set1_epi8(static_cast<char>(mask)));
  }
  static Vec Zero() { return _mm512_setzero_si512(); }
  static Vec Lookup(Vec t, Vec i) { return _mm512_shuffle_epi8(t, i); }
  static Vec AddB(Vec a, Vec b) { return _mm512_add_epi8(a, b); }
  static void Widen(Vec a8, Vec* w, Vec* odd) {
    *w = _mm512_add_epi16(*w, a8);
    *odd = _mm512_add_epi16(*odd, _mm512_srli_epi16(a8, 8));
  }
  // m[o] += (channel o's sum over the 4 lanes) << shift, o < 16: the lanes added as 16-bit
  // words (w and odd), even = w - 256 odd, then [even | odd] widened to uint32 (lut_tile.h).
  static void Flush(Vec w, Vec odd, int shift, uint32_t* m) {
    const __m256i w2 = _mm256_add_epi16(_mm512_castsi512_si256(w), _mm512_extracti64x4_epi64(w, 1));
    const __m256i o2 =
        _mm256_add_epi16(_mm512_castsi512_si256(odd), _mm512_extracti64x4_epi64(odd, 1));
    const __m256i s = _mm256_add_epi16(_mm256_permute2x128_si256(w2, o2, 0x20),   // [w | odd]
                                       _mm256_permute2x128_si256(w2, o2, 0x31));  // lanes 1, 3
    const __m256i odd256 = _mm256_permute2x128_si256(s, s, 0x81);                 // [odd | 0]
    const __m256i e = _mm256_sub_epi16(s, _mm256_slli_epi16(odd256, 8));
    const __m512i v = _mm512_sll_epi32(_mm512_cvtepu16_epi32(e), _mm_cvtsi32_si128(shift));
    _mm512_store_si512(m, _mm512_add_epi32(_mm512_load_si512(m), v));
  }
};

}  // namespace

void LutTablesAvx512(const uint8_t* xq, int64_t bytes, int x_bits, int64_t slice_bytes,
                     uint8_t* tq) {
  BuildTables<Zmm>(xq, bytes, x_bits, slice_bytes, tq);
}

extern const Int8Kernel kLutAvx512 = {
    "2x64", &TileLut<Zmm, VnniStore, 2, 4>, &LutShift, kMaxLutPixels, 4, &LutTablesAvx512};

}  // namespace dorefa
