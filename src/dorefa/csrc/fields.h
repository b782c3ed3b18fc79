// Dense receptive fields: a convolution whose channels do not fill whole 64-bit words, run as
// a 1 x 1 convolution over each output pixel's receptive field packed without gaps.
//
// bitconv.h packs a field as KH * KW * CW words per bit plane, CW = ceil(C / 64): with C = 48
// (AlexNet conv1's channel groups, svhn's 48->64) a quarter of every word is zero padding that
// the popcount kernels still AND, count and add. Packed densely, the field's bits
//   bit (kh * KW + kw) * C + c  <-  bit c of tap (kh, kw)
// take L' = ceil(KH * KW * C / 64) words (AlexNet conv1: 19 instead of 25; 48 channels 3 x 3:
// 7 instead of 9), one contiguous run the tile kernel reads with no per-row loop. The dot
// product is the same sum over the same (tap, channel) pairs, so every output is the same
// integer; the weights are packed in the same order, as (O, KH * KW * C, 1, 1) codes
// (w.transpose(0, 2, 3, 1)).
//
// The fields are built from the ordinary packed activations (the kernel's own packer), one
// output row at a time, each tap's bits placed at bit offset (kh * KW + kw) * C: whole-byte
// taps by plain stores at their byte offsets, others through a register bit writer, one-word
// taps of a kernel row by a byte permute (BuildFieldRowVbmi). That is ~KH * KW * CW stores per
// output pixel and plane, against the (O / 8) * W * (L - L') words the convolution saves per
// output pixel and plane (the rule that takes the fields: kernels/prepared.py).
#ifndef DOREFA_CSRC_FIELDS_H_
#define DOREFA_CSRC_FIELDS_H_

#include <cstdint>

#include "bitconv.h"

namespace dorefa {

// The 1 x 1 convolution over g's dense fields: N images of OH x OW "pixels" with
// KH * KW * C channels, no padding, stride 1; the same O, bits and output shape as g.
ConvGeom FieldGeom(const ConvGeom& g);

// Builds the dense fields of output row oy of image n, plane m, from xpk (packed for g) into
// xf (layout of gf = FieldGeom(g), bitconv.h).
using FieldRowFn = void (*)(const ConvGeom& g, const ConvGeom& gf, const uint64_t* xpk, int64_t n,
                            int m, int64_t oy, uint64_t* xf);
// Portable: taps of whole bytes (C % 8 == 0) stored at their byte offsets, others bit by bit.
void BuildFieldRow(const ConvGeom& g, const ConvGeom& gf, const uint64_t* xpk, int64_t n, int m,
                   int64_t oy, uint64_t* xf);
#ifdef DOREFA_HAVE_X86_KERNELS
// AVX-512 VBMI (with F and BW): a kernel row's taps of one word each (C <= 56, C % 8 == 0,
// KW <= 8) as one load, one byte permute (VPERMB) and one masked store; other shapes as
// BuildFieldRow.
void BuildFieldRowVbmi(const ConvGeom& g, const ConvGeom& gf, const uint64_t* xpk, int64_t n, int m,
                       int64_t oy, uint64_t* xf);
#endif

// Packs x (N, C, H, W) into xpk (g.XpkSize() words) with `pack`, then builds the dense fields
// into xf (FieldGeom(g).XpkSize() words) with `row`, on up to `threads` threads. Returns the
// OR of all codes (as PackFn).
uint8_t PackFields(PackFn pack, FieldRowFn row, const ConvGeom& g, const uint8_t* x, uint64_t* xpk,
                   uint64_t* xf, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_FIELDS_H_
