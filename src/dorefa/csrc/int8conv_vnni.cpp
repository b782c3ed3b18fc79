// AVX-512 VNNI int8 kernel: register tile of 6 output pixels x 64 output channels (4 blocks of
// 16 lanes), 24 zmm accumulators.
//
// VPDPBUSD acc, w, x: per 32-bit lane, acc += sum_{i<4} u8(w_i) * s8(x_i), into int32 without
// saturation (wraps). Weights (codes <= 255) are the unsigned operand, one zmm per block and
// group of 4 channels; the 4 activation bytes of a group are broadcast from memory (embedded
// {1to16} broadcast) as the signed operand. Activations must therefore fit s8: x_bits <= 7
// needs no shift (x <= 127); x_bits = 8 is stored as x' = x - 128 in [-128, 127] and
// 128 * Wsum[o] is added back when storing (int8conv.h), so every bit pair takes this one path.
// Each product fits easily (|x' * w| <= 128 * 255), and the int32 sums are exact modulo 2^32.
//
// Per group: 4 weight loads and 6 broadcast loads for 24 VPDPBUSD.
//
// Ceiling (Zen 4, measured with independent register-only chains): one 512-bit VPDPBUSD per
// cycle (executed as two 256-bit halves; 256-bit ones issue two per cycle), i.e.
// 16 lanes x 4 = 64 MAC/cycle, whatever the bit pair. Loads are not the limit: 4 zmm weight
// loads (8 x 256-bit) + 6 broadcasts per 24 cycles, against 2-3 loads per cycle.
//
// The padding's taps are left out (int8conv.h, "Skipping the padding"): a tile's pixels share
// their taps inside the image, so a border tile runs fewer groups (AlexNet conv3 at 13x13:
// 10% of the taps are padding; svhn's 128->128 at 7x7: 18%).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "int8conv.h"
#include "int8conv_store.h"
#include "int8conv_store_avx512.h"
#include "unroll.h"

namespace dorefa {
namespace {

constexpr int kTileP = 6;
constexpr int kTileB = 4;

int32_t Shift(int x_bits) { return x_bits == 8 ? 128 : 0; }

// The sums of P pixels (fields xs) x NB blocks from ob over taps t, started at init[16 b ..],
// to out[p] + 16 b.
template <int P, int NB>
void Block(const Int8Conv& c, const FieldTaps& t, const int8_t* const* xs, int64_t ob,
           const int32_t* init, int32_t* const* out) {
  const ConvGeom& g = *c.g;
  const int64_t span = g.kw * c.q.cp / 4;  // groups per kernel row
  const int64_t j0 = t.k0 * c.q.cp / 4, j1 = t.k1 * c.q.cp / 4;
  const int64_t bstride = c.q.gstride * 64;
  __m512i acc[P][NB];
  DOREFA_UNROLL for (int p = 0; p < P; ++p) {
    DOREFA_UNROLL for (int b = 0; b < NB; ++b) acc[p][b] = _mm512_load_si512(init + b * kInt8Lanes);
  }
  const uint8_t* w0 = c.wq + ob * bstride;
  for (int64_t r = t.r0; r < t.r1; ++r) {
    const int8_t* xr[P];
    DOREFA_UNROLL for (int p = 0; p < P; ++p) xr[p] = xs[p] + r * c.q.row;
    const uint8_t* wr = w0 + r * span * 64;
    for (int64_t j = j0; j < j1; ++j) {
      __m512i wv[NB];
      DOREFA_UNROLL for (int b = 0; b < NB; ++b) wv[b] =
          _mm512_loadu_si512(wr + b * bstride + j * 64);
      DOREFA_UNROLL for (int p = 0; p < P; ++p) {
        int32_t v;
        std::memcpy(&v, xr[p] + 4 * j, 4);
        const __m512i xv = _mm512_set1_epi32(v);
        DOREFA_UNROLL for (int b = 0; b < NB; ++b) acc[p][b] =
            _mm512_dpbusd_epi32(acc[p][b], wv[b], xv);
      }
    }
  }
  DOREFA_UNROLL for (int p = 0; p < P; ++p) {
    DOREFA_UNROLL for (int b = 0; b < NB; ++b)
        _mm512_storeu_si512(out[p] + b * kInt8Lanes, acc[p][b]);
  }
}

using BlockFn = void (*)(const Int8Conv&, const FieldTaps&, const int8_t* const*, int64_t,
                         const int32_t*, int32_t* const*);

template <int P>
constexpr BlockFn kRow[kTileB] = {&Block<P, 1>, &Block<P, 2>, &Block<P, 3>, &Block<P, 4>};
constexpr const BlockFn* kBlocks[kTileP] = {kRow<1>, kRow<2>, kRow<3>, kRow<4>, kRow<5>, kRow<6>};

// A call: TileClasses (int8conv_store.h), the padding left out.
void TileVnni(const Int8Conv& c, int64_t pix0, int64_t npix, int64_t ob0, int64_t nob) {
  TileClasses<VnniStore>(c, pix0, npix, ob0, nob, kTileP, kTileB,
                         [&](const FieldTaps& t, int np, int nb, const int8_t* const* xs,
                             int64_t ob, const int32_t* init, int32_t* const* out) {
                           kBlocks[np - 1][nb - 1](c, t, xs, ob, init, out);
                         });
}

}  // namespace

static_assert(8 * kTileP <= kMaxCallPixels, "a call's pixels fit its field terms");
extern const Int8Kernel kInt8Vnni = {"6x64", &TileVnni, &Shift, 8 * kTileP, kTileB};

}  // namespace dorefa
