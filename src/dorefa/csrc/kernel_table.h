// The kernel table: every convolution kernel compiled into this build, fastest first, and the
// one place that chooses among them. An entry is one line of kernel_table.cpp: its name, the
// backend it belongs to, the CPU features it needs (CPUID), its tile kernels, its activation
// packer, the output modes its tile kernel finishes in registers, and the path of the float
// first layer (conv_float.h) that runs with it.
//
// Names. A kernel is "<family>/<packer>", e.g. "popcount-avx512/gfni" (the bit-serial AVX-512
// tile kernel with the GFNI packer). A request may also name a family ("popcount-avx512") or
// a backend ("avx512", "avx2", "scalar": the names of the first versions, still accepted by
// DOREFA_KERNEL): it then means the first entry of that family or backend the CPU can run.
#ifndef DOREFA_CSRC_KERNEL_TABLE_H_
#define DOREFA_CSRC_KERNEL_TABLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "bitconv.h"
#include "conv_float.h"
#include "cpu_features.h"

namespace dorefa {

// Output modes (Epilogue::Mode) as bits of a mask.
constexpr unsigned ModeBit(Epilogue::Mode mode) { return 1u << mode; }

// An activation packer (bitpack.h) and the name of its 64x64 bit transpose.
struct Packer {
  const char* name;
  PackFn fn;
};

// A path of the float first layer (conv_float.h): its name and its per-pooled-pixel vector
// function (nullptr: the portable scalar rows).
struct FloatConvPath {
  const char* name;
  FloatConvPixelFn fn;
};

struct KernelEntry {
  const char* name;         // "<family>/<packer>"
  const char* backend;      // "avx512" | "avx2" | "scalar"
  uint32_t needs;           // CpuFeature bits its tile kernels and its packer execute
  const TileKernel* tiles;  // tile kernels and work split (bitconv.h)
  Packer packer;            // activation packer, also used for the weights
  unsigned fused_modes;     // ModeBit()s finished in the tile kernel; the others in a second
                            // pass over int32 accumulators (output_transform.h)
  FloatConvPath float_conv;  // the float first layer under this kernel
  bool Supported() const { return (CpuFeatures() & needs) == needs; }
  std::string Family() const;  // the name up to '/'
};

// All entries, fastest first.
const std::vector<KernelEntry>& KernelTable();

// The entry a request names (see the names above; "" is the first entry this CPU runs).
// Throws std::invalid_argument, saying what is available, when the name is unknown or the CPU
// lacks the instructions. "reference" (the NumPy spec in Python) is not an entry: callers
// handle it.
const KernelEntry& FindKernel(const std::string& name);

}  // namespace dorefa

#endif  // DOREFA_CSRC_KERNEL_TABLE_H_
