// The Winograd tile rows (conv_float_winograd.h, winograd_tile.h) on ymm (winograd_ymm.h): 8
// tiles a vector, the same operations per lane as on zmm (the same bits). AVX2 + FMA.
#include <immintrin.h>

#include "winograd_tile.h"
#include "winograd_ymm.h"

namespace dorefa {

void ConvFloatWinogradAvx2(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                           int64_t n, int64_t ty0, int64_t ty1, const ConvRows& dst,
                           const TileRowDone* done) {
  WinogradRows<YmmTiles>(g, p, w, n, ty0, ty1, dst, done);
}

void WinogradCodesAvx2(const FloatConvGeom& g, const FloatConvPlan& p, const WinogradPlan& w,
                       int64_t n, int64_t ty0, int64_t ty1, uint8_t* out) {
  WinogradCodeRows<YmmTiles>(g, p, w, n, ty0, ty1, out);
}

}  // namespace dorefa
