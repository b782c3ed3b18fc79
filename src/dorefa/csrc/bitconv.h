// Bit-serial convolution of unsigned integer codes: shared geometry, packed layouts and the
// kernel interface that every ISA variant implements.
//
// The maths (docs/method.md, section 3). Let x be M-bit activation codes with bit planes c_m(x)
// and w be K-bit weight codes with bit planes c_k(w). For one output,
//
//   acc = sum_{c,kh,kw} x * w = sum_{m<M} sum_{k<K} 2^(m+k) * popcount(c_m(x) AND c_k(w)),
//
// because x = sum_m 2^m c_m(x), w = sum_k 2^k c_k(w), and for 0/1 vectors the dot product is
// the population count of the AND. The receptive field (kh, kw, c) of one output is the
// reduction axis; we pack it as L = KH * KW * CW 64-bit words per bit plane, where
// CW = ceil(C / 64) words hold the channels of one input pixel (channel c is bit c % 64 of
// word c / 64; unused high bits are zero on both sides, so they never count).
//
// Packed activations ("xpk"), one image after the other:
//   xpk[n][m][hp][wp][cw],  hp = H + 2 * pad, wp = W + 2 * pad.
// The zero padding is materialised: padded pixels are all-zero words, i.e. code 0, exactly
// what zero padding of the codes means. Output pixel (oy, ox) then reads, for each kh, the
// KW * CW contiguous words starting at pixel (oy * stride + kh, ox * stride).
//
// Packed weights ("wpk"), output channels in blocks of 8 lanes:
//   wpk[ob][k][j][lane],  o = 8 * ob + lane,  j = (kh * KW + kw) * CW + cw.
// Lane-interleaving lets a SIMD kernel broadcast one activation word and AND it with the same
// word of 8 (AVX-512) or 4 (AVX2) output channels in one instruction; the popcounts then
// accumulate per lane, i.e. per output channel. Missing channels of the last block are zero.
#ifndef DOREFA_CSRC_BITCONV_H_
#define DOREFA_CSRC_BITCONV_H_

#include <cstdint>

namespace dorefa {

// Output channels per packed weight block (the lane count of the widest kernel).
constexpr int64_t kLanes = 8;

struct ConvGeom {
  int64_t n = 0, c = 0, h = 0, w = 0;  // input codes (N, C, H, W)
  int64_t o = 0, kh = 0, kw = 0;       // weights (O, C, KH, KW)
  int64_t stride = 1, pad = 0;
  int64_t oh = 0, ow = 0;  // output spatial size
  int64_t hp = 0, wp = 0;  // padded input spatial size
  int64_t cw = 0;          // 64-bit words per pixel per bit plane
  int64_t l = 0;           // words per bit plane of one receptive field
  int64_t ob = 0;          // number of 8-channel weight blocks
  int x_bits = 1, w_bits = 1;

  // Fills the derived fields; the caller has validated the inputs.
  void Finalize() {
    hp = h + 2 * pad;
    wp = w + 2 * pad;
    oh = (hp - kh) / stride + 1;
    ow = (wp - kw) / stride + 1;
    cw = (c + 63) / 64;
    l = kh * kw * cw;
    ob = (o + kLanes - 1) / kLanes;
  }
  int64_t PlaneStride() const { return hp * wp * cw; }  // between activation bit planes
  int64_t RowStride() const { return wp * cw; }         // between padded input rows
  int64_t OutPixels() const { return n * oh * ow; }
  int64_t XpkSize() const { return n * x_bits * PlaneStride(); }
  int64_t WpkSize() const { return ob * w_bits * l * kLanes; }
};

// Where output pixel `pix` (flattened n, oy, ox) reads its receptive field, plane 0, kh = 0;
// and where its channel-0 output lives in the (N, O, OH, OW) result.
struct PixelRef {
  const uint64_t* x;
  int64_t out;
};

inline PixelRef LocatePixel(const ConvGeom& g, const uint64_t* xpk, int64_t pix) {
  const int64_t ohw = g.oh * g.ow;
  const int64_t n = pix / ohw, r = pix % ohw;
  const int64_t oy = r / g.ow, ox = r % g.ow;
  PixelRef ref;
  ref.x = xpk + n * g.x_bits * g.PlaneStride() + (oy * g.stride * g.wp + ox * g.stride) * g.cw;
  ref.out = n * g.o * ohw + r;
  return ref;
}

// LocatePixel for consecutive pixels pix, pix + 1, ... without its two divisions per pixel
// (~1.2 us per 169-pixel image, ~1% of AlexNet conv3 on 2 threads at batch 1).
class PixelWalker {
 public:
  PixelWalker(const ConvGeom& g, const uint64_t* xpk, int64_t pix)
      : g_(g), xpk_(xpk), ref_(LocatePixel(g, xpk, pix)) {
    const int64_t ohw = g.oh * g.ow;
    n_ = pix / ohw;
    oy_ = pix % ohw / g.ow;
    ox_ = pix % g.ow;
  }
  const PixelRef& ref() const { return ref_; }
  void Next() {
    ++ref_.out;
    ref_.x += g_.stride * g_.cw;
    if (++ox_ < g_.ow) return;
    ox_ = 0;
    if (++oy_ < g_.oh) {  // the next row: back by ow pixels, down by stride padded rows
      ref_.x += g_.stride * (g_.wp - g_.ow) * g_.cw;
      return;
    }
    oy_ = 0;  // the next image
    ++n_;
    ref_.x = xpk_ + n_ * g_.x_bits * g_.PlaneStride();
    ref_.out += (g_.o - 1) * g_.oh * g_.ow;
  }

 private:
  const ConvGeom& g_;
  const uint64_t* xpk_;
  PixelRef ref_;
  int64_t n_, oy_, ox_;
};

// S = sum_m 2^m popcount(plane m of the receptive field at x): the sum of the field's codes
// (D = 2 acc - nw S), with the caller's `popcount` (portable, or POPCNT in files built for it).
template <class Popcount>
inline int64_t FieldCodeSum(const ConvGeom& g, const uint64_t* x, Popcount popcount) {
  const int64_t span = g.kw * g.cw;
  int64_t s = 0;
  for (int m = 0; m < g.x_bits; ++m) {
    int64_t ones = 0;
    for (int64_t r = 0; r < g.kh; ++r) {
      const uint64_t* xr = x + m * g.PlaneStride() + r * g.RowStride();
      for (int64_t t = 0; t < span; ++t) ones += popcount(xr[t]);
    }
    s += ones << m;
  }
  return s;
}

// A tile kernel computes the unsigned accumulators `acc` (int32, layout (N, O, OH, OW)) of
// output pixels [pix0, pix0 + npix) and channel blocks [ob0, ob0 + nob).
using TileFn = void (*)(const ConvGeom& g, const uint64_t* xpk, const uint64_t* wpk, int64_t pix0,
                        int64_t npix, int64_t ob0, int64_t nob, int32_t* acc);

// What a fused tile kernel does with the accumulators while they are still in registers.
// kAcc: int32 acc, as TileFn. kSigned: int32 D = 2 * acc - nw * S (output_transform.h), S
// computed per pixel from the packed planes. kRequant: uint8 codes of D against per-channel
// thresholds, written to `codes` (N, O, OH, OW).
//
// Thresholds are given sign-folded and in strict form, for channel pairs: with s = direction
// (+1 / -1) of channel o, code = #{ j : s * D > u_j }, u_j = s * t_j - 1 (s * D >= s * t_j is
// s * D > s * t_j - 1 for integers; s * D never overflows since |D| <= INT32_MAX, and
// u_j < INT32_MIN only when the condition always holds, so u_j is clamped to INT32_MIN).
// Channels 2i and 2i + 1 of block ob ("pair" ob * 4 + i) share one 16-lane vector per
// threshold: u[(pair * t + j) * 16 + k] is u_j of channel ob * 8 + 2i + k / 8, and bit k of
// neg[pair] is set where that channel's direction is -1. This is the layout in which the
// AVX-512 epilogue holds a channel pair's 2 x 8 pixels after its transpose.
struct ThresholdTable;  // requant_table.h
// With `table` set (many thresholds, kSearchMinT), the kRequant codes come from a search of the
// table instead, and u / neg are unused.
// A kernel whose lanes are the 8 channels of a block (TileKernel::lane_thresholds: the AVX2
// one) reads the same thresholds as lanes instead of u / neg / rows: lane_u[(ob * t + j) * 8 +
// lane] = u_j of channel ob * 8 + lane and lane_neg[ob * 8 + lane] = -1 where that channel's
// direction is -1, else 0 (for t < kSearchMinT).
struct Epilogue {
  enum Mode { kAcc, kSigned, kRequant } mode = kAcc;
  const ThresholdTable* table = nullptr;
  const int32_t* u = nullptr;
  const int32_t* rows = nullptr;  // kSearchRowsMinT <= t < kSearchRow: sorted rows (SearchRows)
  const uint16_t* neg = nullptr;
  const int32_t* lane_u = nullptr;
  const int32_t* lane_neg = nullptr;
  int64_t t = 0;
  uint8_t* codes = nullptr;
};

// Builds Epilogue::u / Epilogue::neg from thresholds (O, T) int32 and direction (O,) int8.
void ExpandThresholds(const ConvGeom& g, const int32_t* thresholds, int64_t t,
                      const int8_t* direction, int32_t* u, uint16_t* neg);
// Builds Epilogue::lane_u (g.ob * t * kLanes) and lane_neg (g.ob * kLanes) the same way.
void LaneThresholds(const ConvGeom& g, const int32_t* thresholds, int64_t t,
                    const int8_t* direction, int32_t* lane_u, int32_t* lane_neg);
inline int64_t ExpandedThresholdsSize(const ConvGeom& g, int64_t t) {
  return g.ob * (kLanes / 2) * t * 2 * kLanes;
}

// From kSearchRowsMinT thresholds up to kSearchRow - 1 (15), the AVX-512 popcount epilogue
// counts by a binary search over each channel's sorted row (4 steps of one two-source permute
// and one compare per 16 outputs) instead of one compare per threshold.
constexpr int64_t kSearchRowsMinT = 4;
constexpr int64_t kSearchRow = 16;  // int32 per channel's row: one zmm
// Epilogue::rows for 1 <= t < kSearchRow: per channel pair, channel 2i's sign-folded u_j (as in
// ExpandThresholds), sorted, padded with INT32_MAX, then channel 2i + 1's: #{j : sd > u_j}
// does not depend on their order.
void SearchRows(const ConvGeom& g, const int32_t* thresholds, int64_t t, const int8_t* direction,
                int32_t* rows);
inline int64_t SearchRowsSize(const ConvGeom& g) { return g.ob * kLanes * kSearchRow; }

// A tile kernel with the output transform fused in: writes acc / D to `acc` or codes to
// ep.codes (then `acc` is unused and may be null).
using FusedTileFn = void (*)(const ConvGeom& g, const uint64_t* xpk, const uint64_t* wpk,
                             int64_t pix0, int64_t npix, int64_t ob0, int64_t nob, int32_t* acc,
                             const Epilogue& ep);

// Activation packer (bitpack.h): packs work items [item0, item1) of PackItems(g); returns the
// OR of the codes it read.
using PackFn = uint8_t (*)(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int64_t item0,
                           int64_t item1);

// The tile kernels of one ISA (bitconv_<isa>.cpp) and the work split they like best. The
// kernel table (kernel_table.h) pairs each with an activation packer and a CPU check.
struct TileKernel {
  const char* tile;   // register tile, output pixels x output channels, e.g. "8x24"
  TileFn acc;         // unsigned accumulators
  FusedTileFn fused;  // nullptr, or the tile with the epilogue (signed / requant) fused in
  int64_t pix_tile;   // output pixels a call handles best (work split granularity)
  int64_t ob_tile;    // channel blocks a call handles best (split granularity)
  bool lane_thresholds = false;  // its fused requant reads Epilogue::lane_u / lane_neg (else u,
                                 // neg, rows)
};

extern const TileKernel kScalarTiles;
#ifdef DOREFA_HAVE_X86_KERNELS  // the x86 ones exist only when built for x86
extern const TileKernel kAvx2Tiles;
extern const TileKernel kAvx512Tiles;
#endif

// The whole convolution in one parallel region of up to `threads` threads (fewer when the
// work is too small to pay for waking them, ~4 M bit-plane MACs per thread): pack the activations
// x into xpk (g.XpkSize() words), then run `kernel` over all outputs into acc (N, O, OH, OW),
// then with `signed_output` turn acc into the signed dot D (output_transform.h). One region
// instead of one per phase saves fork/joins, which matters for the small layers of a network
// run at batch 1. Every output is computed by exactly one tile call, the same whichever
// thread runs it, so results do not depend on the thread count. Returns the OR of all codes
// (the caller checks it; out-of-range codes only give wrong numbers, never bad addresses).
// `pack` is the activation packer (bitpack.h); nullptr when xpk is already packed (fields.h).
uint8_t RunBitConv(const TileKernel& tiles, PackFn pack, const ConvGeom& g, const uint8_t* x,
                   uint64_t* xpk, const uint64_t* wpk, int32_t* acc, bool signed_output,
                   int threads);

// Same with the epilogue fused into the tile kernel (tiles.fused must be set): ep.mode kAcc /
// kSigned write acc (N, O, OH, OW) int32, kRequant writes ep.codes.
uint8_t RunBitConvFused(const TileKernel& tiles, PackFn pack, const ConvGeom& g, const uint8_t* x,
                        uint64_t* xpk, const uint64_t* wpk, int32_t* acc, const Epilogue& ep,
                        int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_BITCONV_H_
