// One bit convolution on one kernel of the table, from activation codes to the requested
// output: int32 accumulators, the signed dot D, or requantized uint8 codes. Here the core
// chooses between the epilogue fused into the tile kernel (the kernel's fused modes) and a
// second pass over int32 accumulators (output_transform.h).
#ifndef DOREFA_CSRC_RUN_CONV_H_
#define DOREFA_CSRC_RUN_CONV_H_

#include <cstdint>

#include "bitconv.h"
#include "kernel_table.h"

namespace dorefa {

// Where a convolution writes, and how (layout (N, O, OH, OW) for both outputs).
struct ConvOutput {
  Epilogue::Mode mode = Epilogue::kAcc;
  int32_t* acc = nullptr;               // kAcc: acc = sum p * q; kSigned: D = 2 * acc - nw * S
  uint8_t* codes = nullptr;             // kRequant: step counts of D against the thresholds
  const int32_t* thresholds = nullptr;  // kRequant: (O, t) int32, 1 <= t <= 255
  int64_t t = 0;
  const int8_t* direction = nullptr;      // kRequant: (O,) int8, +1 or -1
  const ThresholdTable* table = nullptr;  // kRequant: their table if built (else cached)
};

// Runs the convolution of codes x (N, C, H, W) with packed weights wpk (64-byte aligned,
// layout of bitconv.h, or int8conv.h / lut.h for an int8 / lut kernel) on up to `threads`
// threads; the arguments are validated by the caller. Returns the OR of all activation codes
// (the caller reports codes >= 2^x_bits). Uses a per-thread buffer for the packed activations
// (kept between calls). With `fields` (popcount kernels), wpk holds the weights of
// FieldGeom(g) and the convolution runs over the dense receptive fields (fields.h); int8 and
// lut kernels ignore it. Call without the GIL.
uint8_t RunConv(const KernelEntry& kernel, const ConvGeom& g, const uint8_t* x, const uint64_t* wpk,
                const ConvOutput& out, int threads, bool fields = false);

// The largest dense-field buffer a call builds at once, in bytes (larger batches run in chunks
// of images); `bytes` > 0 sets it (tests make it small) and the previous value is returned.
int64_t FieldBufferBytes(int64_t bytes = 0);

}  // namespace dorefa

#endif  // DOREFA_CSRC_RUN_CONV_H_
