// The vector kRequant store of the int8 kernels' tiles, shared by the AVX-512 VNNI and AVX2
// files: for a tile whose pixels lie in one image, per pixel and 16-channel block,
//   D = 2 (raw + z Wsum) - nw S      (modulo 2^32 as StoreInt8Tile: the true D fits int32)
// and its codes on the rows' lines (requant_table.h) in vectors; a row without a line is
// searched, lane by lane; then each channel's np codes go out as one run of bytes (the tile's
// pixels are neighbours in the NCHW plane), not one strided byte per code.
//
// Isa provides kLanes (channels per vector: 16 or 8) and a type Lanes, made once per block
// for channels o .. o + kLanes - 1 (Lanes(tab, o, wsum, z): z Wsum and the signs in
// registers) with Codes(raw, nws, d, codes): one pixel's D into d[] and its line codes into
// codes[] (exact where tab.line is set).
// Internal linkage, one copy per ISA file (as wgrad_direct.h).
#ifndef DOREFA_CSRC_INT8CONV_STORE_H_
#define DOREFA_CSRC_INT8CONV_STORE_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "int8conv.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

constexpr int kMaxStorePixels = 8;

// Isa::Lanes of channels o, o + kLanes, ... (one per half of a 16-channel block).
template <class Isa, size_t... H>
std::array<typename Isa::Lanes, sizeof...(H)> MakeHalves(const ThresholdTable& tab, int64_t o,
                                                         const int32_t* wsum, int32_t z,
                                                         std::index_sequence<H...>) {
  return {typename Isa::Lanes(tab, o + H * Isa::kLanes, wsum + H * Isa::kLanes, z)...};
}

// False (nothing written) when the tile is not the case above: StoreInt8Tile writes it.
template <class Isa>
bool StoreCodesWith(const Int8Conv& c, int64_t pix0, int np, int64_t ob0, int nb,
                    const int32_t* raw) {
  const ConvGeom& g = *c.g;
  const int64_t ohw = g.oh * g.ow;
  const int64_t n = pix0 / ohw, r0 = pix0 % ohw;
  if (c.mode != Epilogue::kRequant || r0 + np > ohw || np > kMaxStorePixels) return false;
  const ThresholdTable& tab = *c.table;
  const auto nw = static_cast<uint32_t>((1 << g.w_bits) - 1);
  int32_t nws[kMaxStorePixels];  // nw S per pixel, modulo 2^32
  for (int p = 0; p < np; ++p) {
    const int64_t r = r0 + p;
    nws[p] =
        static_cast<int32_t>(nw * static_cast<uint32_t>(Int8FieldSum(c, n, r / g.ow, r % g.ow)));
  }
  uint8_t* dst = c.codes + n * g.o * ohw + r0;
  constexpr int kHalves = kInt8Lanes / Isa::kLanes;
  for (int b = 0; b < nb; ++b) {
    const int64_t o0 = (ob0 + b) * kInt8Lanes;
    bool searched = false;  // a row of the block without a line
    for (int l = 0; l < kInt8Lanes; ++l) searched |= !tab.line[o0 + l];
    const auto half =
        MakeHalves<Isa>(tab, o0, c.wsum + o0, c.shift, std::make_index_sequence<kHalves>{});
    alignas(64) uint8_t codes[kMaxStorePixels][kInt8Lanes];
    for (int p = 0; p < np; ++p) {
      alignas(64) int32_t d[kInt8Lanes];
      for (int h = 0; h < kHalves; ++h)
        half[h].Codes(raw + (p * nb + b) * kInt8Lanes + h * Isa::kLanes, nws[p],
                      d + h * Isa::kLanes, codes[p] + h * Isa::kLanes);
      if (searched) {
        for (int l = 0; l < kInt8Lanes; ++l)
          if (!tab.line[o0 + l]) codes[p][l] = RequantCode(tab, o0 + l, d[l]);
      }
    }
    const int64_t lanes = std::min<int64_t>(kInt8Lanes, g.o - o0);
    for (int64_t l = 0; l < lanes; ++l) {
      uint8_t* run = dst + (o0 + l) * ohw;
      for (int p = 0; p < np; ++p) run[p] = codes[p][l];
    }
  }
  return true;
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_INT8CONV_STORE_H_
