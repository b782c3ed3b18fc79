// The kernel table: every convolution kernel compiled into this build and the one place that
// chooses among them. An entry is one line of kernel_table.cpp: its name, the backend it
// belongs to, the CPU features it needs (CPUID), its kernel (bit-serial popcount tile kernels
// with an activation packer, or an int8 dot-product or table-lookup kernel: int8conv.h,
// lut.h), the output modes it finishes without a second pass over int32 accumulators, and the
// path of the float first layer (conv_float.h) that runs with it.
//
// Order: the popcount kernels fastest first, the int8 kernels after the popcount kernels of
// their ISA, the lut kernels after the int8 ones, the portable scalar kernel last; the first
// entry the CPU runs is the default (a popcount kernel: the int8 and lut kernels run when
// forced by name or picked per layer, choose.py).
//
// Names. A popcount kernel is "<family>/<packer>", e.g. "popcount-avx512/gfni" (the bit-serial
// AVX-512 tile kernel with the GFNI packer); an int8 or lut kernel is its family ("int8-vnni",
// "lut-avx2"). A request may also name a family ("popcount-avx512") or a backend ("avx512",
// "avx2", "scalar": the names of the first versions, still accepted by DOREFA_KERNEL): it then
// means the first entry of that family or backend the CPU can run.
#ifndef DOREFA_CSRC_KERNEL_TABLE_H_
#define DOREFA_CSRC_KERNEL_TABLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "bitconv.h"
#include "conv_float.h"
#include "conv_float_winograd.h"
#include "cpu_features.h"
#include "fields.h"
#include "int8conv.h"
#include "lut.h"

namespace dorefa {

// Output modes (Epilogue::Mode) as bits of a mask.
constexpr unsigned ModeBit(Epilogue::Mode mode) { return 1u << mode; }

// An activation packer (bitpack.h), the name of its 64x64 bit transpose, the builder of
// dense receptive fields from what it packed (fields.h; nullptr for the int8 layouts), and
// how its entry's weights are packed: tap by tap from tap-major bytes (the packers without a
// fast 64 x 64 bit transpose), else as O images through fn (PackWeights).
struct Packer {
  const char* name;
  PackFn fn;
  FieldRowFn fields;
  bool weights_by_tap = false;
};

// A path of the float first layer (conv_float.h): its name and its per-pooled-pixel vector
// function (nullptr: the portable scalar rows).
struct FloatConvPath {
  const char* name;
  FloatConvPixelFn fn;                 // fused conv -> pool -> quantize (nullptr: the scalar rows)
  FloatConvOutFn out_fn;               // float output (nullptr: the scalar rows)
  FloatWeights weights;                // the weight layout both read (conv_float.h)
  FloatWinogradFn winograd = nullptr;  // float output of the layers it fits (WinogradFits)
  FloatWinogradCodesFn winograd_codes = nullptr;  // their codes, without a pool
};

struct KernelEntry {
  const char* name;          // "<family>/<packer>" (popcount) or "<family>" (int8)
  const char* backend;       // "avx512" | "avx2" | "scalar"
  uint32_t needs;            // CpuFeature bits its kernel and its packer execute
  const TileKernel* tiles;   // popcount: tile kernels and work split (bitconv.h); int8: nullptr
  Packer packer;             // popcount: activation packer, also used for the weights
  const Int8Kernel* int8;    // int8: the int8 kernel (int8conv.h), own layouts; else nullptr
  unsigned fused_modes;      // ModeBit()s finished in the tile kernel; the others in a second
                             // pass over int32 accumulators (output_transform.h)
  FloatConvPath float_conv;  // the float first layer under this kernel
  bool Supported() const { return (CpuFeatures() & needs) == needs; }
  std::string Family() const;  // the name up to '/'
  const char* Weights() const { return int8 != nullptr ? int8->Layout() : "bitplanes"; }
  const char* Tile() const { return int8 != nullptr ? int8->tile : tiles->tile; }
  int64_t PixelTile() const { return int8 != nullptr ? int8->pix_tile : tiles->pix_tile; }
  int64_t BlockTile() const { return int8 != nullptr ? int8->ob_tile : tiles->ob_tile; }
};

// All entries, in the order above.
const std::vector<KernelEntry>& KernelTable();

// The entry a request names (see the names above; "" is the first entry this CPU runs).
// Throws std::invalid_argument, saying what is available, when the name is unknown or the CPU
// lacks the instructions. "reference" (the NumPy spec in Python) is not an entry: callers
// handle it.
const KernelEntry& FindKernel(const std::string& name);

}  // namespace dorefa

#endif  // DOREFA_CSRC_KERNEL_TABLE_H_
