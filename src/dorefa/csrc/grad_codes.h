// f_g's codes in one native pass (integer training, dorefa/engine.py; the formula and the noise
// draw are dorefa/quantizers.py's gradient_codes, whose float32 steps this repeats one by one):
//
//   m_b   = max(max_i g[b, i], -min_i g[b, i])                 (NaN if the sample holds one)
//   inv_b = float(n) * (1 / (2 * (m_b > 0 ? m_b : 1)))        (torch's scalar / tensor)
//   u     = float(h) * 2^-16 + ((n - 1) / 2 + 1/2 + 2^-17)      (h: the int16 noise draw)
//   c     = round_half_even(clamp(fma(g, inv_b, u), 0, n))     (one rounding, as addcmul_)
//
// Every step is one float32 operation rounded as torch rounds it on the CPU, so the codes equal
// the torch engine's bit for bit (tests/test_engine.py); a NaN gradient gives code 0.
#ifndef DOREFA_CSRC_GRAD_CODES_H_
#define DOREFA_CSRC_GRAD_CODES_H_

#include <cstdint>

namespace dorefa {

// g (n_samples, len) float32, noise (n_samples * len) int16 -> codes (n_samples, len) uint8,
// m (n_samples) float32; samples split over threads.
void GradientCodes(const float* g, const int16_t* noise, int64_t n_samples, int64_t len, int levels,
                   uint8_t* codes, float* m, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_GRAD_CODES_H_
