// Table-lookup convolution of unsigned codes ("lut" kernels): the activations of each group of
// 4 channels become a 16-entry table of their subset sums, and each weight bit plane indexes
// it with 4 weight bits, so one byte shuffle (VPSHUFB) does 16 lookups per 128-bit lane, each
// 4 binary-weight MACs. The layouts and the shared parts; the tiles: lut_tile.h, the kernels:
// lut_avx512.cpp, lut_avx2.cpp.
//
// The maths. With weight codes w = sum_b 2^b w_b (bit planes w_b in {0, 1}) and activation
// codes split into slices of `width` bits, x = sum_s 2^(width s) x_s,
//
//   sum_c x_c w_c = sum_b sum_s 2^(b + width s) sum_g T_s[g][m_b(g)],
//   T_s[g][m] = sum_{i < 4, bit i of m set} x_s[4 g + i],   m_b(g) = sum_i 2^i w_b[4 g + i],
//
// g running over the groups of 4 channels (and taps) of the receptive field. Every table entry
// is at most 4 (2^width - 1) <= 252 (width <= 6), so a byte holds it; byte sums are widened to
// 16 bits before they can pass 255 and to 32 bits before 65535, and the terms are added
// modulo 2^32 (exact: the callers check that the true sum fits int32, and every partial sum is
// nonnegative and at most the total). x_bits <= 6 is one slice of x_bits; 7 and 8 are two of
// ceil(x_bits / 2).
//
// Activations: the int8 kernels' packed NHWC bytes (int8conv.h, shift z = 0: padding and the
// channels past C are code 0) are expanded to tables, 16 bytes per 4 bytes, so the table of the
// group at byte offset k of xq sits at byte 4 k of each slice's table array:
//   tq[s][4 k + m] = T_s of the group xq[k .. k + 3] at entry m.
// A receptive field's row is the KW * cp contiguous bytes of xq from its first pixel, hence
// `span` = KW * cp / 4 tables in a row of tq, read 4 at a time (one zmm, or two ymm): `quads` =
// ceil(span / 4) per row, the last one reading up to 3 tables past the row, which the weights
// switch off (below). The table arrays carry kLutSlack bytes after them for that.
//
// Weights ("lut" layout, uint8), output channels in blocks of 16:
//   wl[ob][b][r][q][lane][LutByte(o)],  lane < 4: the group j = 4 q + lane of kernel row r,
//   byte = m_b(j) of output channel 16 ob + o, or 0x80 when j >= span (VPSHUFB gives 0),
// channels 0-7 in the even bytes of a lane and 8-15 in the odd ones (the tile widens byte sums
// as 16-bit words: even + 256 odd, and odd),
// i.e. 64 bytes per (block, plane, row, quad), then Wsum, 16 int32 per block (as the int8
// layout, for the shared store; z = 0 leaves it unused in the sums).
//
// The "lutdp" layout (lut-vnni, lut_vnni.cpp): the same 64 bytes per (block, plane, row, quad),
// arranged for a 64-entry lookup (VPERMB) of the 4 tables side by side and a sum of each dword's
// 4 bytes (VPDPBUSD with ones): byte 4 o + i = 16 i + m_b(j) of output channel 16 ob + o for the
// group j = 4 q + i, and 16 i (entry 0 of a table, the empty sum: 0) when j >= span.
#ifndef DOREFA_CSRC_LUT_H_
#define DOREFA_CSRC_LUT_H_

#include <cstdint>

#include "int8conv.h"

namespace dorefa {

constexpr int64_t kLutSlack = 64;  // bytes readable past each slice's tables
// Tables a call builds at once: a batch runs in chunks of images (RunInt8Conv) so that they
// are read back from L2, not memory (svhn's 6-bit input gradient at batch 32, 64->64 18x18:
// 3.3 MB of tables in one go).
constexpr int64_t kLutTableBytes = 384 << 10;

// Activation slices of a bit width: count and bits per slice (the last may have fewer).
struct LutSlices {
  int count;
  int width;
  explicit LutSlices(int x_bits)
      : count(x_bits <= 6 ? 1 : 2), width(x_bits <= 6 ? x_bits : (x_bits + 1) / 2) {}
  int Bits(int s, int x_bits) const { return s + 1 < count ? width : x_bits - s * width; }
};

// Derived sizes of the lut weight layout.
struct LutGeom {
  int64_t span = 0;   // tables per kernel row: KW * cp / 4
  int64_t quads = 0;  // 4-table steps per kernel row
  int64_t plane = 0;  // bytes per (block, plane): KH * quads * 64
  int64_t block = 0;  // bytes per block: w_bits * plane
  int64_t ob = 0;     // 16-channel blocks
  explicit LutGeom(const ConvGeom& g)
      : span(g.kw * Int8Geom(g).cp / 4),
        quads((span + 3) / 4),
        plane(g.kh * quads * 64),
        block(g.w_bits * plane),
        ob((g.o + kInt8Lanes - 1) / kInt8Lanes) {}
  int64_t WeightBytes() const { return ob * block; }  // then ob * 16 int32 sums
  int64_t WeightWords() const { return (WeightBytes() + ob * kInt8Lanes * 4 + 7) / 8; }
};

// The packed weights of an int8 or lut kernel (Int8Kernel::Layout): bytes before Wsum, words
// in all, and packing (returns the OR of all codes). Both lut layouts have the same size;
// "int8wino" is "int8" and the transformed weights after it (Int8Winograd).
inline int64_t ByteWeightBytes(const Int8Kernel& k, const ConvGeom& g) {
  return k.tables != nullptr ? LutGeom(g).WeightBytes() : Int8Geom(g).WeightBytes();
}
inline int64_t ByteWeightWords(const Int8Kernel& k, const ConvGeom& g) {
  if (k.tables != nullptr) return LutGeom(g).WeightWords();
  const bool wino = k.WinogradPacks(g);  // "int8wino": the transform appended
  return Int8Geom(g).WeightWords() + (wino ? (2 * k.winograd->weight_elems(g) + 7) / 8 : 0);
}
uint8_t PackByteWeights(const Int8Kernel& k, const ConvGeom& g, const uint8_t* w, uint64_t* wq);

// The byte of output channel o (< 16) in a lane of the lut weight layout.
constexpr int LutByte(int64_t o) { return static_cast<int>(o < 8 ? 2 * o : 2 * (o - 8) + 1); }

// Packs weight codes w (O, C, KH, KW) < 2^g.w_bits into wl (LutGeom(g).WeightWords() words);
// returns the OR of all codes.
uint8_t PackWeightsLut(const ConvGeom& g, const uint8_t* w, uint64_t* wl, bool dot_lanes = false);

// The tables of xq[0 .. bytes) (bytes a multiple of 4) for each activation slice of x_bits:
// slice s's at tq + s * slice_bytes + 4 * (offset in xq). Portable reference of the vector
// builders (the kernels' `tables`).
void BuildTablesScalar(const uint8_t* xq, int64_t bytes, int x_bits, int64_t slice_bytes,
                       uint8_t* tq);

#ifdef DOREFA_HAVE_X86_KERNELS
extern const Int8Kernel kLutAvx512;
extern const Int8Kernel kLutAvx2;
extern const Int8Kernel kLutVnni;
// The zmm table builder (lut_avx512.cpp), shared by lut-avx512 and lut-vnni.
void LutTablesAvx512(const uint8_t* xq, int64_t bytes, int x_bits, int64_t slice_bytes,
                     uint8_t* tq);
#endif

}  // namespace dorefa

#endif  // DOREFA_CSRC_LUT_H_
