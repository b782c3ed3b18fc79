// requant_table.h with AVX-512: rows with a line take it for 16 outputs at a time (64-bit
// multiply-add and shift, no table read); other rows are searched per output: one compare of sd
// against a channel's 16 group tops, then one against the group that holds the insertion point
// (sorted rows), or one per group (unsorted rows, or a single group). Built with AVX-512
// F/BW/VL/DQ.
#ifndef DOREFA_CSRC_REQUANT_AVX512_H_
#define DOREFA_CSRC_REQUANT_AVX512_H_

#include <cstdint>

#include "requant_table.h"

namespace dorefa {

// n codes of channel o: codes[i] from d[i] (consecutive pixels of one channel).
void RequantChannelAvx512(const ThresholdTable& tab, int64_t o, const int32_t* d, int64_t n,
                          uint8_t* codes);
// As RequantPixelFn (requant_table.h): channels o0 .. o0 + n - 1 of one pixel.
void RequantPixelAvx512(const ThresholdTable& tab, int64_t o0, int64_t n, const int32_t* d,
                        uint8_t* codes, int64_t stride);

}  // namespace dorefa

#endif  // DOREFA_CSRC_REQUANT_AVX512_H_
