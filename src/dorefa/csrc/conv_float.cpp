#include "conv_float.h"

#include <algorithm>
#include <vector>

#include "thread_pool.h"

namespace dorefa {
namespace {

// Scalar rows, any stride: per output the same operation order as the vector paths.
void ConvRowsScalar(const FloatConvGeom& g, const double* xp, int64_t hp, int64_t wp,
                    const double* wd, int64_t oy0, int64_t rows, double* out) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      double a = 0.0;
      const double* wt = wd;
      for (int64_t ci = 0; ci < g.c; ++ci)
        for (int64_t i = 0; i < g.kh; ++i) {
          const double* src = xp + (ci * hp + (oy0 + r) * g.stride + i) * wp + ox * g.stride;
          for (int64_t j = 0; j < g.kw; ++j, ++wt) a += *wt * src[j];
        }
      out[r * g.ow + ox] = a;
    }
  }
}

}  // namespace

void ConvFloatQuantize(const FloatConvGeom& g, const float* x, const float* weight,
                       const float* bias, uint8_t* out, FloatConvPixelFn pixel, int threads) {
  const int64_t hp = g.h + 2 * g.pad, wp = g.w + 2 * g.pad;
  const int64_t taps = g.c * g.kh * g.kw;
  std::vector<double> wd(static_cast<size_t>(g.o * taps));
  for (size_t i = 0; i < wd.size(); ++i) wd[i] = weight[i];
  std::vector<double> xp(static_cast<size_t>(g.n * g.c * hp * wp), 0.0);  // zero padded
  for (int64_t nc = 0; nc < g.n * g.c; ++nc)
    for (int64_t y = 0; y < g.h; ++y)
      for (int64_t xx = 0; xx < g.w; ++xx)
        xp[(nc * hp + y + g.pad) * wp + xx + g.pad] = x[(nc * g.h + y) * g.w + xx];
  const float levels = static_cast<float>((1 << g.bits) - 1);
  const int64_t k = g.pool;
  const int64_t items = g.n * g.o;
  if (pixel != nullptr) {  // channels in vectors: weights tap-major, channel stride padded to 8
    const int64_t ostride = (g.o + 7) / 8 * 8;
    std::vector<double> wt(static_cast<size_t>(taps * ostride), 0.0);
    for (int64_t o = 0; o < g.o; ++o)
      for (int64_t t = 0; t < taps; ++t) wt[t * ostride + o] = wd[o * taps + t];
    const int64_t pix = g.n * g.ph * g.pw;
    ParallelFor(threads, pix, [&](int64_t first, int64_t last) {
      for (int64_t it = first; it < last; ++it) {
        const int64_t n = it / (g.ph * g.pw), r = it % (g.ph * g.pw);
        pixel(g, xp.data() + n * g.c * hp * wp, hp, wp, wt.data(), ostride, bias, r / g.pw,
              r % g.pw, out + n * g.o * g.ph * g.pw);
      }
    });
    return;
  }
  ParallelFor(threads, items, [&](int64_t first, int64_t last) {
    std::vector<double> band(static_cast<size_t>(k * g.ow));  // k conv rows of one channel
    std::vector<float> pooled(static_cast<size_t>(g.pw));
    for (int64_t it = first; it < last; ++it) {
      const int64_t n = it / g.o, o = it % g.o;
      const double* img = xp.data() + n * g.c * hp * wp;
      const double* wo = wd.data() + o * taps;
      uint8_t* dst = out + it * g.ph * g.pw;
      for (int64_t py = 0; py < g.ph; ++py) {
        ConvRowsScalar(g, img, hp, wp, wo, py * k, k, band.data());
        for (int64_t px = 0; px < g.pw; ++px) {
          float mx = static_cast<float>(band[px * k]);
          for (int64_t r = 0; r < k; ++r)
            for (int64_t s = 0; s < k; ++s)
              mx = std::max(mx, static_cast<float>(band[r * g.ow + px * k + s]));
          pooled[px] = mx;
        }
        const float b = bias[o];
        for (int64_t px = 0; px < g.pw; ++px) {
          float z = pooled[px] + b;
          z = z > 0.0f ? (z < 1.0f ? z : 1.0f) : 0.0f;  // clip (NaN -> 0)
          z *= levels;  // in [0, 255]: adding and removing 2^23 rounds half to even (rint)
          const float r = (z + 8388608.0f) - 8388608.0f;
          dst[py * g.pw + px] = static_cast<uint8_t>(r);
        }
      }
    }
  });
}

void MaxPoolCodes(const uint8_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                  int64_t s, int64_t p, uint8_t* out) {
  const int64_t oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  for (int64_t nc = 0; nc < n * c; ++nc) {
    const uint8_t* src = x + nc * h * w;
    uint8_t* dst = out + nc * oh * ow;
    if (k == 2 && s == 2 && p == 0) {  // the common case, branch-free
      for (int64_t oy = 0; oy < oh; ++oy) {
        const uint8_t* r0 = src + 2 * oy * w;
        const uint8_t* r1 = r0 + w;
        for (int64_t ox = 0; ox < ow; ++ox) {
          const uint8_t a = std::max(r0[2 * ox], r0[2 * ox + 1]);
          const uint8_t b = std::max(r1[2 * ox], r1[2 * ox + 1]);
          dst[oy * ow + ox] = std::max(a, b);
        }
      }
      continue;
    }
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        uint8_t mx = 0;
        for (int64_t i = 0; i < k; ++i) {
          const int64_t y = oy * s + i - p;
          if (y < 0 || y >= h) continue;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t xx = ox * s + j - p;
            if (xx >= 0 && xx < w) mx = std::max(mx, src[y * w + xx]);
          }
        }
        dst[oy * ow + ox] = mx;
      }
  }
}

}  // namespace dorefa
