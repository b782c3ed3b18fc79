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

// Packs activation codes x (N, C, H, W), uint8, C-contiguous, into the interior of xpk
// (g.XpkSize() words). Returns the bitwise OR of the codes read: a code >= 2^x_bits exists
// iff (or >> x_bits) != 0, which the caller reports.
//
// Method. NCHW stores each channel's H*W pixels contiguously, but xpk wants the channels of
// one pixel in one word. So for a block of 64 channels x 64 consecutive pixels (of the
// flattened H*W plane) and each bit plane m, first B[c] = bit m of the 64 pixels of channel c
// (a "pixel-major" 64x64 bit matrix, cheap to extract from contiguous bytes), then transpose
// it (Transpose64x64) so that row p holds bit m of the 64 channels of pixel p.
// PackActivations is the portable version; PackActivationsAvx512Gfni / ...Shift
// (bitpack_avx512.cpp) do the same with VPTESTMB and a vectorised transpose, PackActivationsAvx2
// (bitpack_avx2.cpp) with byte transposes and VPMOVMSKB. Which packer a
// kernel uses is part of its entry in the kernel table (kernel_table.h).
//
// Work is split into PackItems(g) independent items (image, 64-channel block, 64-pixel block);
// a call packs items [item0, item1). The padding border is not touched (ZeroPaddingBorder).
int64_t PackItems(const ConvGeom& g);

// Work item `it` of PackItems(g): image n, 64-channel block cb, first pixel q0 of the
// flattened H*W plane, and how many of the block's 64 pixels and 64 channels exist.
struct PackItem {
  int64_t n, cb, q0, npx, nch;
};
PackItem LocatePackItem(const ConvGeom& g, int64_t it);

// Writes an item's transposed planes to xpk: bits[m][p] = plane m of the item's pixel p.
void StorePackItem(const ConvGeom& g, const PackItem& item, const uint64_t (*bits)[64],
                   uint64_t* xpk);
uint8_t PackActivations(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int64_t item0,
                        int64_t item1);
#ifdef DOREFA_HAVE_X86_KERNELS
// The 64x64 transposes as 8x8 bit-block transposes with GFNI and VBMI (the CPU must have both).
uint8_t PackActivationsAvx512Gfni(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int64_t item0,
                                  int64_t item1);
// The 64x64 transposes by shifts and masks (AVX-512 F + BW only).
uint8_t PackActivationsAvx512Shift(const ConvGeom& g, const uint8_t* x, uint64_t* xpk,
                                   int64_t item0, int64_t item1);
// 16 x 16 byte transposes and VPMOVMSKB per plane (AVX2; bitpack_avx2.cpp).
uint8_t PackActivationsAvx2(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int64_t item0,
                            int64_t item1);
#endif

// Transposes a 64x64 bit matrix in place: afterwards bit j of a[i] is the old bit i of a[j].
//
// Recursive block swap: at step s (32, 16, ..., 1) the matrix is viewed as 2x2 blocks of
// s x s sub-matrices inside every 2s x 2s tile, and the two off-diagonal blocks are exchanged:
// the high s columns of row k (k & s == 0) swap with the low s columns of row k + s. After
// all six steps every bit (i, j) has moved to (j, i). Each swap is the xor trick:
// t = ((a[k] >> s) ^ a[k + s]) & low_s; a[k + s] ^= t; a[k] ^= t << s.
void Transpose64x64(uint64_t* a);

// Zeroes the padding border of every plane of every image in xpk (interior words are all
// written by the packers).
void ZeroPaddingBorder(const ConvGeom& g, uint64_t* xpk);

// Packs weight codes w (O, C, KH, KW), uint8, C-contiguous, into wpk (g.WpkSize() words):
// `by_tap`, each output channel's codes tap by tap from tap-major bytes; else as O images through
// the activation packer `pack`. Returns the bitwise OR of all codes.
uint8_t PackWeights(const ConvGeom& g, const uint8_t* w, uint64_t* wpk, PackFn pack, bool by_tap);

}  // namespace dorefa

#endif  // DOREFA_CSRC_BITPACK_H_
