// Packing codes (N, C, H, W) into the int8 kernels' NHWC bytes (int8conv.h, PackBand in
// int8conv.cpp): where a plane's pixels go, and the transposers of 16 channels x 16 pixels
// (SSE2, int8conv.cpp) and of 64 channels x 16 pixels (AVX-512 BW, int8pack_avx512.cpp).
#ifndef DOREFA_CSRC_INT8PACK_H_
#define DOREFA_CSRC_INT8PACK_H_

#include <cstdint>

namespace dorefa {

// Where the packing of an image's rows puts its interior pixels: pixel j of the image plane
// (row j / w, column j % w) goes to out + row * (j / w) + pixel * (j % w), its channel sum to
// sums[wp * (j / w) + j % w] (sums == nullptr: none; the packers add to it).
struct PlaneDst {
  uint8_t* out;
  int64_t w, row, pixel, wp;
  int32_t* sums;
  // The next m (<= 16) pixels from the walk's position (*y, *x), which advances: pixel k's
  // packed offset out[k] and its place in sums at[k].
  void Pixels(int64_t m, int64_t* y, int64_t* x, int64_t* out, int64_t* at) const {
    for (int64_t k = 0; k < m; ++k) {
      out[k] = *y * row + *x * pixel;
      at[k] = *y * wp + *x;
      if (++*x == w) *x = 0, ++*y;
    }
  }
};

#ifdef DOREFA_HAVE_X86_KERNELS
// The channels [0, 64 blocks) of the plane's pixels [j0, j1) (src: channel 0's plane, stride
// hw between channels) into their packed pixels as x - z, 16 pixels at a time: per 64 channels
// the 16 x 16 byte transposes of four groups side by side in zmm (the SSE2 unpacks, per 128-bit
// lane) and one 64-byte store a pixel; the pixels' channel sums added to d.sums once per block.
// Returns the OR of the codes. Reads 16 bytes of a channel where that stays before `end`, else
// the pixels left. AVX-512 BW.
uint8_t PackGroups64Avx512(const uint8_t* src, const uint8_t* end, int64_t hw, int64_t blocks,
                           int64_t j0, int64_t j1, int32_t z, const PlaneDst& d);
#endif

}  // namespace dorefa

#endif  // DOREFA_CSRC_INT8PACK_H_
