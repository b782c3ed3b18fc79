// The input-gradient GEMM's tiles on AMX (`igrad-amx`; igrad.h has the sums and layouts,
// igrad_vnni.cpp the packing, the weight sums and the finish):
//
//   Y[(r, t, ci), p] = sum_o (2 p[o, ci, r, t] - n_w) c[o, p],   added at input pixel target(r, t,
//   p)
//
// TDPBUSD C, A, B with A = 16 output pixels' codes (cq rows, u8, 64 output channels a step;
// bytes past O meet zero weight rows), B = 16 quads of 16 input channels' weight factors (wq as
// it is, s8; wq_oq a multiple of 16), C = Y for 16 pixels x 16 input channels at one tap. 2 x 2
// tiles (two pixel strips x two channel groups); rows past P read the codes' slack, their sums
// are not scattered. Each pixel's row of 16 sums is added at its input pixel's 16 channels of
// acc (one zmm load, add and store), as the VNNI tiles do.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "amx_tiles.h"
#include "igrad.h"

namespace dorefa {

void InputGradSampleAmx(const IgradPacked& k) {
  const IgradGeom& g = *k.g;
  const AmxTileConfig cfg;
  _tile_loadconfig(&cfg);
  alignas(64) int32_t buf[32 * 32];
  const int64_t steps = k.wq_oq / 16;
  for (int64_t rt = 0; rt < g.kh * g.kw; ++rt) {
    const int32_t* target = k.target + rt * k.p;
    for (int64_t cg0 = 0; cg0 < k.cg; cg0 += 2) {
      const int nb = static_cast<int>(std::min<int64_t>(2, k.cg - cg0));
      const int8_t* w = k.wq + (rt * k.cg + cg0) * k.wq_oq * 64;
      for (int64_t p0 = 0; p0 < k.p; p0 += 32) {
        const int64_t np = std::min<int64_t>(32, k.p - p0);
        const int na = np > 16 ? 2 : 1;
        const TileStepsFn step = kTileSteps<true>[na - 1][nb - 1];
        step(k.cq + p0 * k.op, 16 * k.op, k.op, 64, w, k.wq_oq * 64, steps, 16, buf, 32);
        for (int64_t j = 0; j < np; ++j) {
          if (target[p0 + j] < 0) continue;  // the forward's padding
          int32_t* dst = k.acc + (target[p0 + j] * k.cg + cg0) * 16;
          for (int h = 0; h < nb; ++h) {
            const __m512i y = _mm512_load_si512(buf + j * 32 + h * 16);
            _mm512_storeu_si512(dst + h * 16,
                                _mm512_add_epi32(_mm512_loadu_si512(dst + h * 16), y));
          }
        }
      }
    }
  }
  _tile_release();
}

}  // namespace dorefa
