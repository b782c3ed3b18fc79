// Input gradient of a DoReFa convolution as one integer GEMM per sample and a scatter
// (integer training, dorefa/kernels/training.py; the spec is dorefa/kernels/reference_grad.py):
//
//   K1[b, ci, iy, ix] = sum over (o, r, t) with iy = oy s + r - pad, ix = ox s + t - pad of
//                       (2 p[o, ci, r, t] - n_w) * c[b, o, oy, ox]
//
// with c the gradient codes (G bits) and p the weight codes (W bits, n_w = 2^W - 1 <= 127).
// Per sample, Y[(r, t, ci), (oy, ox)] = sum_o (2p - n_w) c is a product of the (KH KW C x O)
// weight factors and the (O x OH OW) codes; each Y is then added at its input pixel (skipped
// where that falls in the padding). Unlike the transposed convolution as a convolution of the
// zero-padded (and, for stride s, zero-inserted) codes, no product has a zero operand by
// construction: a valid 3x3 layer on a 5x5 output map costs 25 instead of 49 pixels' sums, a
// stride-2 layer a quarter.
//
// Layouts (VNNI, VPDPBUSD, or AMX, TDPBUSD: u8 codes x s8 weight factors, int32 sums without
// saturation):
//   wq[r][t][cg][oq][lane][i] = 2 p[4 oq + i, 16 cg + lane, r, t] - n_w   (0 past O and C)
//   cq[oy][ox][o]             = c[b, o, oy, ox]   (int8conv.h's packed activations, 0 past O)
//   acc[iy][ix][ci]           int32, per sample, then transposed into K1[b] (C, H, W), or
//                             finished into dx[b] on the way.
#ifndef DOREFA_CSRC_IGRAD_H_
#define DOREFA_CSRC_IGRAD_H_

#include <cstdint>

namespace dorefa {

struct IgradGeom {
  int64_t n = 0, o = 0, c = 0, h = 0, w = 0;  // codes (N, O, OH, OW); K1 (N, C, H, W)
  int64_t oh = 0, ow = 0, kh = 0, kw = 0, stride = 1, padding = 0;
  int g_bits = 1, w_bits = 1;
  bool amx = false;  // the GEMM on AMX tiles (`igrad-amx`, igrad_amx.cpp) instead of VNNI
};

// True when this CPU runs the kernel (VNNI; with g.amx also AMX) and the layer fits it
// (n_w <= 127).
bool InputGradGemmFits(const IgradGeom& g);

// One sample's GEMM and scatter (igrad_vnni.cpp drives; igrad_amx.cpp's tiles):
struct IgradPacked {
  const IgradGeom* g;
  int64_t cg, oq, op, p;  // channel groups, output-channel quads, code bytes per pixel, pixels
  int64_t wq_oq;          // output-channel quads per (tap, group) in wq (oq; AMX: a multiple of 16)
  const int8_t* wq;
  const int32_t* target;  // [KH KW][P]: the input pixel iy W + ix of tap (r, t) and pixel p, or -1
  const uint8_t* cq;      // this sample's codes (rows of op bytes, then slack for 32 rows)
  int32_t* acc;           // this sample's sums, [H][W][cg * 16]
};

#ifdef DOREFA_HAVE_AMX
// Every tap of one sample on AMX tiles: per tap, 2 strips of 16 output pixels (A: their codes,
// 64 output channels a step) x 2 groups of 16 input channels (B: wq as it is, 16 quads of 64
// bytes a step), TDPBUSD; each output pixel's row of sums added at its input pixel.
void InputGradSampleAmx(const IgradPacked& k);
#endif

// Where the sums go: K2 (C, H, W) = sum of 2p - n_w over the (o, r, t) reaching each pixel
// (always), and either K1 (N, C, H, W) or, with dx set, the input gradient itself,
// dx[b] = float32(scale[b] * double(2 K1[b] - n_g K2)) (input_grad.h's finish, fused).
struct IgradOut {
  int32_t* k2 = nullptr;
  int32_t* k1 = nullptr;
  float* dx = nullptr;
  const double* scale = nullptr;
};

// The sums from codes c (N, O, OH, OW) and weight codes w (O, C, KH, KW), samples over up to
// `threads` threads; returns the OR of c's codes (low byte) and w's (second byte).
uint32_t InputGradGemm(const IgradGeom& g, const uint8_t* c, const uint8_t* w, const IgradOut& out,
                       int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_IGRAD_H_
