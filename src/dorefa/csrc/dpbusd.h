// VPDPBUSD with its sum updated in place: acc[i] += sum_{j<4} u[4i + j] * s[4i + j] (u bytes
// unsigned, s bytes signed, int32 lanes, no saturation), as _mm512_dpbusd_epi32(acc, u, s).
// GCC 12 compiled the intrinsic in some register tiles with every sum copied into another
// register before its multiply-add and back after it: two zmm moves per VPDPBUSD (the direct
// weight gradient's and the one-pixel digit tiles; DOREFA_UNROLL did not remove them there).
// Zen 4 renames the moves away (the tiles ran 1.00-1.05x faster without them); a core that
// executes them takes them on the vector pipes. The asm ties the sum to one register.
#ifndef DOREFA_CSRC_DPBUSD_H_
#define DOREFA_CSRC_DPBUSD_H_

#include <immintrin.h>

namespace dorefa {

// (For files compiled for AVX-512 VNNI.)
__attribute__((always_inline)) inline void DpbusdInPlace(__m512i& acc, __m512i u, __m512i s) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
}

}  // namespace dorefa

#endif  // DOREFA_CSRC_DPBUSD_H_
