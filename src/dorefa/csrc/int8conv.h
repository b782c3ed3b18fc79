// Int8 dot-product convolution of unsigned codes: the layouts, the shared parts (packing, the
// output transform, the parallel region) and the tile-kernel interface of the AVX2, AVX-512
// VNNI and AMX kernels (int8conv_avx2.cpp, int8conv_vnni.cpp, int8conv_amx.cpp), which the
// table-lookup kernels share too (lut.h: their own weight layout and activation tables on the
// same packing).
//
// The maths. Codes are small unsigned integers, x < 2^x_bits and w < 2^w_bits (bits 1..8),
// so one output acc = sum_{c,kh,kw} x * w is an exact integer dot product; the callers check
// that it fits int32. VPMADDUBSW and VPDPBUSD multiply an UNSIGNED byte by a SIGNED byte:
// the weights (<= 255) are the unsigned operand, the activations the signed one (AMX's
// TDPBUUD multiplies unsigned by unsigned: int8-amx stores the codes as they are, z = 0).
// Activations that do not fit s8 (or, for VPMADDUBSW, whose pair sums would saturate int16)
// are stored shifted, x' = x - z with z = ActivationShift(kernel, x_bits), and
//
//   sum x * w = sum (x' + z) * w = sum x' * w + z * Wsum[o],   Wsum[o] = sum_{c,kh,kw} w,
//
// a constant per output channel (zero padding is code 0, stored as -z like every other 0, so
// it is covered by the same identity). All sums are taken modulo 2^32 (VPDPBUSD and VPADDD
// wrap, the correction is added as uint32): the true result fits int32, so it comes out exact.
//
// Packed activations ("xq", int8), one image after the other, zero padding materialised:
//   xq[n][hp][w + pad][cp],  cp = C rounded up to a multiple of 4 (the extra channels hold -z).
// A packed row holds its left padding and its data: the right padding of row y is the left
// padding of row y + 1 (and the last row's, the next image's top padding or the slack after the
// last image), so padded column j of row y is at (y (w + pad) + j) cp for every j < wp. The
// receptive field of output pixel (oy, ox) is, for each kh, the KW * cp contiguous bytes from
// padded pixel (oy * stride + kh, ox * stride): KW * cp / 4 groups of 4 bytes. Neighbouring
// output pixels of a row (stride 1) are cp apart, and so are a row's last and the next row's
// first but for KW - 1 - pad pixels (int8-amx's direct strips, int8conv_amx.cpp).
//
// Packed weights ("wq", uint8), output channels in blocks of 16, groups of 4 channels:
//   wq[ob][j][lane][i],  o = 16 * ob + lane,  j = (kh * KW + kw) * cp / 4 + c / 4,  i = c % 4,
// i.e. 64 bytes per (block, group): one zmm for VPDPBUSD (16 lanes x 4 bytes), two ymm for
// AVX2, and 16 groups one AMX tile (int8conv_amx.cpp). A block holds gstride groups, the
// field's groups rounded up to 16 (whole AMX tiles). Missing channels (c >= C, o >= O) and
// the groups past the field are zero. After the ob16 blocks come Wsum, 16 int32
// per block, then the per-tap sums Tsum[ob][t][lane] = sum_c w (t = kh * KW + kw), 16 int32
// per block and tap; then, where w_bits <= 7 and the blocks are small (Int8Geom::has_signed),
// the signed blocks: the same blocks of the signed weights 2 w - nw (nw = 2^w_bits - 1; in
// [-127, 127], int8; zero where w is missing), with which
//   D = 2 acc - nw S = sum x (2 w - nw)
// is one dot product of unsigned codes by signed bytes, no field term (int8-amx's TDPBUSD, in
// the signed and requant modes: Int8Conv::d_sums). The whole array is handed around as uint64
// words (WeightWords of them).
//
// Skipping the padding (int8-vnni and int8-avx2: TileClasses, int8conv_store.h; int8-amx sums
// every tap): a pixel near the
// border has taps in the zero padding. A tile leaves them out: its pixels share the taps
// inside the image, kernel rows [r0, r1) x columns [k0, k1) (FieldTaps), and only those are
// summed. The padding's codes are 0, so the true sum over the skipped taps is 0, but the
// identity above counts them as x' = -z: the tile starts its sums at z (R - Wsum[o]) instead
// of 0, R = sum of Tsum[o] over the taps it keeps, so that
//   raw + z Wsum = sum x' w + z R = sum of x w over the kept taps.
#ifndef DOREFA_CSRC_INT8CONV_H_
#define DOREFA_CSRC_INT8CONV_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "bitconv.h"
#include "requant_table.h"
#include "scratch.h"

namespace dorefa {

constexpr int64_t kInt8Lanes = 16;  // output channels per packed weight block

// Derived sizes of the int8 layouts for a geometry (ConvGeom holds the shape).
struct Int8Geom {
  int64_t cp = 0;       // channels padded to a multiple of 4
  int64_t groups = 0;   // 4-byte groups per receptive field: KH * KW * cp / 4
  int64_t gstride = 0;  // groups per packed weight block: groups rounded up to 16
  int64_t ob = 0;       // 16-channel blocks
  int64_t pixel = 0;    // bytes per padded pixel (= cp)
  int64_t row = 0;      // bytes per packed row ((w + pad) pixels, see above)
  int64_t image = 0;    // bytes per packed image (hp rows)
  int64_t slack = 0;    // bytes read past the last image: its right padding, 16 more pixels
  int64_t taps = 0;     // KH * KW
  // The signed blocks follow Tsum: w_bits <= 7 and blocks of at most kSignedBlockBytes. Larger
  // weights go without: the packing, done every training step, took 1.6x as long with them
  // (svhn conv6's 512 x 128 x 5 x 5: 2.3 -> 3.7 ms, best rounds; the array twice the bytes),
  // more than they save there (AlexNet conv3's 864 KB: 1.01-1.04x).
  bool has_signed = false;
  static constexpr int64_t kSignedBlockBytes = 256 << 10;
  explicit Int8Geom(const ConvGeom& g)
      : cp((g.c + 3) / 4 * 4),
        groups(g.kh * g.kw * cp / 4),
        gstride((groups + 15) / 16 * 16),
        ob((g.o + kInt8Lanes - 1) / kInt8Lanes),
        pixel(cp),
        row((g.w + g.pad) * cp),
        image(g.hp * row),
        slack((g.pad + 16) * cp),
        taps(g.kh * g.kw),
        has_signed(g.w_bits <= 7 && WeightBytes() <= kSignedBlockBytes) {}
  int64_t WeightBytes() const { return ob * gstride * 64; }  // then Wsum and Tsum
  int64_t SignedOffset() const { return WeightBytes() + ob * kInt8Lanes * 4 * (1 + taps); }
  int64_t WeightWords() const { return (SignedOffset() + (has_signed ? WeightBytes() : 0)) / 8; }
};

// Image n of the codes x (N, C, H, W) in the packed activation layout above (Int8Geom(g).image
// bytes at dst: padding and the channels past C hold code 0, stored as -z; with padding, its
// last row's right padding lies past them); returns the OR of its codes. Also the input
// gradient's packer (igrad.h, no padding).
uint8_t PackInt8Image(const ConvGeom& g, const uint8_t* x, int32_t z, int64_t n, uint8_t* dst);

// Packs weight codes w (O, C, KH, KW) into wq (Int8Geom(g).WeightWords() words); returns the
// OR of all codes.
uint8_t PackWeightsInt8(const ConvGeom& g, const uint8_t* w, uint64_t* wq);

// What a tile kernel needs: the geometry, the packed operands, and where the outputs go.
struct Int8Conv {
  const ConvGeom* g = nullptr;
  Int8Geom q{ConvGeom{}};
  const int8_t* xq = nullptr;   // packed activations
  const uint8_t* wq = nullptr;  // packed weights (Wsum follows)
  const int32_t* wsum = nullptr;
  const int32_t* tsum = nullptr;    // int8 layout: Tsum (after Wsum), else null
  const int32_t* pixsum = nullptr;  // per padded pixel, sum over channels of x (signed modes)
  int32_t shift = 0;                // z
  Epilogue::Mode mode = Epilogue::kAcc;
  int32_t* acc = nullptr;                    // kAcc / kSigned output (N, O, OH, OW)
  bool prefetch = false;                     // kAcc / kSigned: the store fetches its lines ahead
  uint8_t* codes = nullptr;                  // kRequant output (N, O, OH, OW)
  const ThresholdTable* table = nullptr;     // kRequant: the thresholds (requant_table.h)
  const class StartTable* starts = nullptr;  // int8 layout: the tiles' start sums, or null
  const uint8_t* tq = nullptr;               // lut kernels: the activation tables (lut.h)
  int64_t tslice = 0;                        // lut kernels: bytes per slice of tq
  int64_t direct_kq = 0;  // int8-amx: its direct strips' kq, 0 where it gathers (int8conv_amx.cpp)
  const int8_t* wqs = nullptr;  // int8 layout: the signed blocks (Int8Geom::has_signed), or null
  // The tiles sum D = sum x (2 w - nw) on the signed blocks (kSigned, kRequant; set by the
  // kernel's prepare): the store takes their sums as D, and there is no field term (pixsum null).
  bool d_sums = false;

  // The first byte of the receptive field of output pixels pix0 .. pix0 + np - 1 (flattened
  // n, oy, ox) into xs[0 .. np - 1]: one division, then stepping along the rows.
  void Fields(int64_t pix0, int np, const int8_t** xs) const;
};

// Sum of the activation codes over the receptive field of output (n, oy, ox) (c.pixsum).
int64_t Int8FieldSum(const Int8Conv& c, int64_t n, int64_t oy, int64_t ox);

// nw S modulo 2^32 (nw = 2^w_bits - 1, S = Int8FieldSum) of output pixels [pix0, pix0 + np),
// np <= kMaxCallPixels, into terms[0 .. np): a tile call computes them once for all its
// channel blocks (0 in kAcc mode, which has no such term, and where the tiles sum D itself:
// Int8Conv::d_sums).
constexpr int64_t kMaxCallPixels = 64;
void Int8FieldTerms(const Int8Conv& c, int64_t pix0, int64_t np, int32_t* terms);

// The taps [t0, t1) of a kernel axis of `taps` taps inside [0, size) for a field starting at
// padded position `at` (= output position * stride): t in [pad - at, size + pad - at),
// clipped to [0, taps).
inline void TapsInside(int64_t at, int64_t size, int64_t pad, int32_t taps, int32_t* t0,
                       int32_t* t1) {
  *t0 = static_cast<int32_t>(std::clamp<int64_t>(pad - at, 0, taps));
  *t1 = static_cast<int32_t>(std::clamp<int64_t>(size + pad - at, *t0, taps));
}

// The taps of a receptive field inside the image (not in the zero padding): kernel rows
// [r0, r1) and columns [k0, k1) (empty ranges where the field lies wholly in the padding).
struct FieldTaps {
  int32_t r0, r1, k0, k1;
  bool operator==(const FieldTaps& o) const {
    return r0 == o.r0 && r1 == o.r1 && k0 == o.k0 && k1 == o.k1;
  }
};

// The pixels [pix0, pix0 + np) of a call grouped by their FieldTaps: class k holds the pixels
// pix0 + order[i] for i in [start[k], start[k + 1]), ascending, with taps[k]. Without padding
// there is one class, all taps, in pixel order.
struct PixelClasses {  // no initialisers: one is filled per call
  int count;
  int start[kMaxCallPixels + 1];
  FieldTaps taps[kMaxCallPixels];
  uint8_t order[kMaxCallPixels];
};
void ClassifyPixels(const ConvGeom& g, int64_t pix0, int np, PixelClasses* out);

// z (R - Wsum[o]) for the channels of blocks ob .. ob + nb - 1 into init[0 .. 16 nb), R the
// sum of Tsum[o] over taps t: where a tile over taps t starts its sums (0 where t is every
// tap or z = 0). Modulo 2^32, as every sum of the kernels.
void StartSums(const Int8Conv& c, const FieldTaps& t, int64_t ob, int nb, int32_t* init);

// StartSums of every block for each FieldTaps a field of the layer can have (every row range
// with every column range), made once per convolution where they are not all 0 (z != 0 and
// padding): the tiles look theirs up instead of summing Tsum in every call (W8A8 on svhn's
// 18x18 layers at batch 32: 3% of the time).
class StartTable {
 public:
  // Empty (Find gives null) unless c.shift != 0 and the layer has padding.
  void Build(const Int8Conv& c);
  // The start sums of blocks ob, ob + 1, ... for taps t (16 per block), or null: then
  // StartSums.
  const int32_t* Find(const FieldTaps& t, int64_t ob) const {
    for (size_t i = 0; i < taps_.size(); ++i)
      if (taps_[i] == t) return rows_ + static_cast<int64_t>(i) * lanes_ + ob * kInt8Lanes;
    return nullptr;
  }

 private:
  std::vector<FieldTaps> taps_;
  Scratch<int32_t> init_;
  const int32_t* rows_ = nullptr;  // init_: taps_.size() rows of lanes_, 64-byte aligned
  int64_t lanes_ = 0;
};

// A tile kernel: outputs of pixels [pix0, pix0 + npix) and blocks [ob0, ob0 + nob).
using Int8TileFn = void (*)(const Int8Conv& c, int64_t pix0, int64_t npix, int64_t ob0,
                            int64_t nob);
// z for x_bits (the kernel's choice): activations are stored as x - z (see the maths above).
using Int8ShiftFn = int32_t (*)(int x_bits);
// lut kernels (lut.h): the tables of packed bytes xq[0 .. bytes) into tq (slice s at
// tq + s * slice_bytes, each at 4 x its offset in xq).
using LutTablesFn = void (*)(const uint8_t* xq, int64_t bytes, int x_bits, int64_t slice_bytes,
                             uint8_t* tq);

struct Int8Kernel {
  const char* tile;  // register tile, output pixels x output channels, e.g. "6x64"
  Int8TileFn run;
  Int8ShiftFn shift;
  int64_t pix_tile;  // output pixels a call handles best and at most (<= kMaxCallPixels)
  int64_t ob_tile;   // 16-channel blocks a call handles best
  LutTablesFn tables = nullptr;  // lut: the activation tables built after packing
  bool dot_lanes = false;        // lut: the "lutdp" weight layout (lut.h), channels in dwords
  // Once per convolution, where set: the kernel's own per-layer choices into c (int8-amx's
  // direct strips), and the output pixels of its calls (else pix_tile).
  int64_t (*prepare)(Int8Conv* c) = nullptr;
  // Where set: called by each thread after its last call of a convolution (int8-amx releases
  // the tile configuration its calls loaded once).
  void (*done)() = nullptr;
  // The packed weights' layout: "int8" (above), or "lut" / "lutdp" (lut.h) for a kernel with
  // tables.
  const char* Layout() const {
    if (tables == nullptr) return winograd != nullptr ? "int8wino" : "int8";
    return dot_lanes ? "lutdp" : "lut";
  }
  // Where set: the layers for which winograd_runs(g) holds run on Winograd F(2x2, 3x3) or
  // F(2x4, 3x3) (int8conv_winograd_avx2.cpp), the others on the tiles.
  const struct Int8Winograd* winograd = nullptr;
  bool (*winograd_runs)(const ConvGeom& g) = nullptr;
  // The layer's packed weights carry the Winograd transform ("int8wino", Int8Winograd::packs).
  bool WinogradPacks(const ConvGeom& g) const;
};

#ifdef DOREFA_HAVE_X86_KERNELS
extern const Int8Kernel kInt8Avx2;
extern const Int8Kernel kInt8WinogradAvx2;
extern const Int8Winograd kWinogradAvx2;
extern const Int8Kernel kInt8Vnni;
#endif
#ifdef DOREFA_HAVE_AMX
extern const Int8Kernel kInt8Amx;
#endif

// Winograd F(2x2, 3x3) and F(2x4, 3x3) over the int8 layout (int8conv_winograd_avx2.cpp): 3x3,
// stride-1 layers in bands of tiles, on weights transformed when packed (the "int8wino" layout:
// the int8 layout, then the transformed weights of 3x3 kernels that fit). Int8FieldBuffer also
// holds a band's transforms, products and outputs.
struct Int8Winograd {
  // A 3x3 kernel whose sums stay exact (4 |sum| inside int32 at any x_bits): its packed
  // weights hold the transform.
  bool (*packs)(const ConvGeom& g);
  int64_t (*weight_elems)(const ConvGeom& g);  // int16 elements of the transformed weights
  // The transformed weights of the packed int8 weights wq into v (weight_elems of them).
  void (*transform)(const ConvGeom& g, const uint8_t* wq, int16_t* v);
  // A call's work items: bands of `rows` output tile rows of one image, or of `images` whole
  // images (small outputs, where a band of one image would hold few tiles).
  struct Bands {
    int64_t images, rows, count;
  };
  Bands (*bands)(const ConvGeom& g, int threads);
  // Band `item` of b: its outputs stored as the tiles' (StoreCall).
  void (*band)(const Int8Conv& c, const int16_t* v, const Bands& b, int64_t item);
};
// Bytes a Winograd band may read past the last packed image (its last tile row and column
// may lie one past the padded image: outputs it drops), beyond Int8Geom::slack.
inline int64_t WinogradExtraBytes(const Int8Geom& q) { return 2 * q.row + 4 * q.pixel + 64; }

inline bool Int8Kernel::WinogradPacks(const ConvGeom& g) const {
  return winograd != nullptr && winograd->packs(g);
}

// A per-thread buffer of at least `bytes` bytes, 64-byte aligned, uninitialised, valid until
// this thread's next call: int8-amx's gathered fields, a Winograd band's buffers. Out of line
// here, not a Scratch in int8conv_amx.cpp, whose inline members would be compiled with that
// file's AVX-512 and AMX flags and might be the copy the linker keeps for every file.
uint8_t* Int8FieldBuffer(size_t bytes);

// The whole convolution (packing, tiles, output transform) in one parallel region of up to
// `threads` threads (a lut kernel: one per chunk of images, lut.h): x (N, C, H, W) codes, wq
// packed by PackWeightsInt8 or, for a lut kernel, PackWeightsLut (64-byte aligned). Returns
// the OR of all activation codes. Results do not depend on the thread count.
struct ConvOutput;
uint8_t RunInt8Conv(const Int8Kernel& kernel, const ConvGeom& g, const uint8_t* x,
                    const uint64_t* wq, const ConvOutput& out, int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_INT8CONV_H_
