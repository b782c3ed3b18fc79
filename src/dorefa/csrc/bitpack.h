// Bit-plane packing of unsigned codes into the layouts described in bitconv.h.
#ifndef DOREFA_CSRC_BITPACK_H_
#define DOREFA_CSRC_BITPACK_H_

#include <cstdint>

#include "bitconv.h"

namespace dorefa {

// Portable population count (no POPCNT instruction assumed; the ISA files use their own).
inline int64_t Popcount64(uint64_t v) {
  v = v - ((v >> 1) & 0x5555555555555555ULL);
  v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
  v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<int64_t>((v * 0x0101010101010101ULL) >> 56);
}

// Packs activation codes x (N, C, H, W), uint8, C-contiguous, into xpk (g.XpkSize() words,
// which this function fully overwrites, padding included). Returns the bitwise OR of all
// codes: a code >= 2^x_bits exists iff (or >> x_bits) != 0, which the caller reports.
uint8_t PackActivations(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int threads);

// Packs weight codes w (O, C, KH, KW), uint8, C-contiguous, into wpk (g.WpkSize() words).
// Returns the bitwise OR of all codes (see PackActivations).
uint8_t PackWeights(const ConvGeom& g, const uint8_t* w, uint64_t* wpk);

}  // namespace dorefa

#endif  // DOREFA_CSRC_BITPACK_H_
