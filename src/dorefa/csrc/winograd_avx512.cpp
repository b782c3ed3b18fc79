// The Winograd tile rows (conv_float_winograd.h, winograd_tile.h) on zmm: 16 tiles a vector.
// AVX-512F.
#include <immintrin.h>

#include "float_codes_simd.h"
#include "winograd_tile.h"
#include "winograd_ymm.h"

namespace dorefa {
namespace {

struct ZmmTiles {
  static constexpr int kLanes = 16;
  using Half = YmmTiles;           // a row's last <= 8 tiles
  static constexpr int kOuts = 8;  // channels a pass: 8 sums + 16 partial results of 32 zmm
  using Vec = __m512;
  static Vec Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec Set1(float f) { return _mm512_set1_ps(f); }
  static Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static uint32_t Codes(const float* v, int64_t count, float b, float e, float levels,
                        uint8_t* dst) {
    return ProvedCodesZ(v, count, b, e, levels, dst);
  }
  static Vec Fnma(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }
  static void Interleave(Vec y0, Vec y1, int64_t ncols, float* dst) {
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    const auto mask = [](int64_t n) {
      return static_cast<__mmask16>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1);
    };
    _mm512_mask_storeu_ps(dst, mask(ncols), _mm512_permutex2var_ps(y0, lo, y1));
    _mm512_mask_storeu_ps(dst + 16, mask(ncols - 16), _mm512_permutex2var_ps(y0, hi, y1));
  }
};

}  // namespace

void ConvFloatWinogradAvx512(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                             int64_t n, int64_t ty0, int64_t ty1, const ConvRows& dst,
                             const TileRowDone* done) {
  WinogradRows<ZmmTiles>(g, p, w, n, ty0, ty1, dst, done);
}

void WinogradCodesAvx512(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                         int64_t n, int64_t ty0, int64_t ty1, uint8_t* out) {
  WinogradCodeRows<ZmmTiles>(g, p, w, n, ty0, ty1, out);
}

}  // namespace dorefa
