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
// loads (8 x 256-bit) + 6 broadcasts per 24 cycles, against 2-3 loads per cycle. This tile
// reaches 41-45 MAC/cycle on AlexNet conv3 (1 thread): the 4 blocks' weights (147 KB for
// 3x3x256) stream from L2 for every 6-pixel tile; blocking the receptive field so that they
// stay in L1 is the next step.
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

template <int P, int NB>
void Block(const Int8Conv& c, const int8_t* const* xs, int64_t ob, int32_t* raw) {
  const ConvGeom& g = *c.g;
  const int64_t span = g.kw * c.q.cp / 4;  // groups per kernel row
  const int64_t bstride = c.q.groups * 64;
  __m512i acc[P][NB];
  DOREFA_UNROLL for (int p = 0; p < P; ++p) {
    DOREFA_UNROLL for (int b = 0; b < NB; ++b) acc[p][b] = _mm512_setzero_si512();
  }
  const uint8_t* w0 = c.wq + ob * bstride;
  for (int64_t r = 0; r < g.kh; ++r) {
    const int8_t* xr[P];
    DOREFA_UNROLL for (int p = 0; p < P; ++p) xr[p] = xs[p] + r * c.q.row;
    const uint8_t* wr = w0 + r * span * 64;
    for (int64_t j = 0; j < span; ++j) {
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
        _mm512_storeu_si512(raw + (p * NB + b) * kInt8Lanes, acc[p][b]);
  }
}

using BlockFn = void (*)(const Int8Conv&, const int8_t* const*, int64_t, int32_t*);

template <int P>
constexpr BlockFn kRow[kTileB] = {&Block<P, 1>, &Block<P, 2>, &Block<P, 3>, &Block<P, 4>};
constexpr const BlockFn* kBlocks[kTileP] = {kRow<1>, kRow<2>, kRow<3>, kRow<4>, kRow<5>, kRow<6>};

void TileVnni(const Int8Conv& c, int64_t pix0, int64_t npix, int64_t ob0, int64_t nob) {
  alignas(64) int32_t raw[kTileP * kTileB * kInt8Lanes];
  int32_t terms[kMaxCallPixels];  // npix <= the kernel's pix_tile (below)
  Int8FieldTerms(c, pix0, npix, terms);
  const int8_t* fields[kMaxCallPixels];
  c.Fields(pix0, static_cast<int>(npix), fields);
  for (int64_t ob = ob0; ob < ob0 + nob; ob += kTileB) {
    const int nb = static_cast<int>(std::min<int64_t>(kTileB, ob0 + nob - ob));
    for (int64_t p0 = pix0; p0 < pix0 + npix; p0 += kTileP) {
      const int np = static_cast<int>(std::min<int64_t>(kTileP, pix0 + npix - p0));
      kBlocks[np - 1][nb - 1](c, fields + (p0 - pix0), ob, raw);
      if (!StoreTileWith<VnniStore>(c, p0, np, ob, nb, raw, terms + (p0 - pix0), pix0 + npix))
        StoreInt8Tile(c, p0, np, ob, nb, raw);
    }
  }
}

}  // namespace

static_assert(8 * kTileP <= kMaxCallPixels, "a call's pixels fit its field terms");
extern const Int8Kernel kInt8Vnni = {"6x64",     &TileVnni, &Shift,
                                     8 * kTileP, kTileB,    &RequantPixelAvx512};

}  // namespace dorefa
