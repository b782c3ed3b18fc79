// What the two AMX weight-gradient files share (wgrad_amx.cpp: the per-sample route;
// wgrad_amx_digits.cpp: small maps by the scales' digits over the batch and the map): the
// small maps' strip packer and the digits' entry points.
// Both files compile with the same AMX and AVX-512 flags; the helpers have internal linkage
// (one copy in each).
#ifndef DOREFA_CSRC_WGRAD_AMX_H_
#define DOREFA_CSRC_WGRAD_AMX_H_

#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "wgrad.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): compiled with the AMX files' flags only

constexpr int kLanes = 16;  // channels per A row block and per B row

// The strip planes of small maps (input plane <= 128 bytes, strip plane <= 64: svhn's 7 x 7
// and 9 x 9 layers), one two-source byte permute (VPERMI2B) per tap column and channel where
// the generic packer stores a masked vector per strip row: idx[t][i] is the input byte of strip
// byte i = y OW + ox, x[y - padding][ox + t - padding], and bit i of keep[t] says it is inside.
struct SmallStrips {
  bool fits;
  std::vector<__m512i> idx;
  std::vector<__mmask64> keep;
  __mmask64 in_mask, out_mask;
  explicit SmallStrips(const WgradGeom& g) {
    const int64_t hp = g.h + 2 * g.padding, in = g.h * g.w, plane = hp * g.ow;
    fits = in <= 128 && plane <= 64;
    if (!fits) return;
    in_mask = in >= 64 ? ~0ull : (1ull << in) - 1;  // of the first 64 input bytes
    out_mask = plane >= 64 ? ~0ull : (1ull << plane) - 1;
    for (int64_t t = 0; t < g.kw; ++t) {
      alignas(64) uint8_t index[64] = {};
      __mmask64 inside = 0;
      for (int64_t i = 0; i < plane; ++i) {
        const int64_t iy = i / g.ow - g.padding, ix = i % g.ow + t - g.padding;
        if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
        index[i] = static_cast<uint8_t>(iy * g.w + ix);
        inside |= 1ull << i;
      }
      idx.push_back(_mm512_load_si512(index));
      keep.push_back(inside);
    }
  }
  // The strips of one sample (wgrad_direct.h's layout): plane (t, ci) at xs + (t C + ci) stride,
  // channels [c0, c1) when c1 > 0.
  void Pack(const WgradGeom& g, int64_t stride, const uint8_t* x, uint8_t* xs, int64_t c0 = 0,
            int64_t c1 = 0) const {
    const int64_t in = g.h * g.w;
    const __mmask64 hi_mask = in > 64 ? (in >= 128 ? ~0ull : (1ull << (in - 64)) - 1) : 0;
    for (int64_t ci = c0; ci < (c1 > 0 ? c1 : g.c); ++ci) {
      const uint8_t* src = x + ci * in;
      const __m512i lo = _mm512_maskz_loadu_epi8(in_mask, src);
      const __m512i hi = _mm512_maskz_loadu_epi8(hi_mask, src + 64);
      for (int64_t t = 0; t < g.kw; ++t)
        _mm512_mask_storeu_epi8(xs + (t * g.c + ci) * stride, out_mask,
                                _mm512_maskz_permutex2var_epi8(keep[t], lo, idx[t], hi));
    }
  }
};

}  // namespace

// The digits route applies: dW mode on training's integer scales whose digit passes cost fewer
// tile steps than the per-sample route (D P < 64 (ceil(PQ / 16) + 1): measured, the digits
// were faster at 7 x 7 -> 5 x 5, D P / 64 = 1.6, and slower at 7 x 7, 3.1), with a gather
// that fits (wgrad_amx_digits.cpp).
bool DigitsAmxFits(const WgradGeom& g, const WgradOutput& out);
uint32_t WeightGradDigitsAmx(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                             const WgradOutput& out, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_WGRAD_AMX_H_
