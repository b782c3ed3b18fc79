// Portable kernel: one output pixel x one 8-channel block per step, 64-bit words, software
// popcount. Builds everywhere; it is the fallback and the baseline for the SIMD variants.
#include "bitconv.h"
#include "bitpack.h"

namespace dorefa {
namespace {

void TileScalar(const ConvGeom& g, const uint64_t* xpk, const uint64_t* wpk, int64_t pix0,
                int64_t npix, int64_t ob0, int64_t nob, int32_t* acc) {
  const int64_t ohw = g.oh * g.ow;
  const int64_t span = g.kw * g.cw;  // contiguous words per kernel row
  for (int64_t p = 0; p < npix; ++p) {
    const PixelRef ref = LocatePixel(g, xpk, pix0 + p);
    for (int64_t ob = ob0; ob < ob0 + nob; ++ob) {
      int64_t total[kLanes] = {0};
      for (int m = 0; m < g.x_bits; ++m) {
        for (int k = 0; k < g.w_bits; ++k) {
          const uint64_t* wk = wpk + (ob * g.w_bits + k) * g.l * kLanes;
          int64_t cnt[kLanes] = {0};
          for (int64_t r = 0; r < g.kh; ++r) {
            const uint64_t* xr = ref.x + m * g.PlaneStride() + r * g.RowStride();
            const uint64_t* wr = wk + r * span * kLanes;
            for (int64_t t = 0; t < span; ++t) {
              const uint64_t xv = xr[t];
              for (int64_t lane = 0; lane < kLanes; ++lane) {
                cnt[lane] += Popcount64(xv & wr[t * kLanes + lane]);
              }
            }
          }
          // Planes combine once per (m, k) pair, not per word: 2^(m+k) * popcount.
          for (int64_t lane = 0; lane < kLanes; ++lane) total[lane] += cnt[lane] << (m + k);
        }
      }
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        const int64_t o = ob * kLanes + lane;
        if (o < g.o) acc[ref.out + o * ohw] = static_cast<int32_t>(total[lane]);
      }
    }
  }
}

}  // namespace

extern const TileKernel kScalarTiles = {"1x8", &TileScalar, nullptr, 4, 1};

}  // namespace dorefa
