// AMX int8 kernel (int8conv.h's layouts): tiles of 16 output pixels x 16 output channels,
// 2 x 2 of them at a time, summed by TDPBUUD over the receptive field in steps of 64 bytes.
//
// TDPBUUD C, A, B: C[m][n] += sum_{i<4} u8(A[m][4k + i]) * u8(B[k][4n + i]) over the 16 rows
// k of B, into int32. Both operands are unsigned, so the codes go in as they are: no
// activation shift (z = 0), every bit pair 1..8 on one path, and every partial sum is at most
// the final one, which the callers check fits int32.
//   A: 16 pixels x 64 bytes of their fields (16 groups of 4 channels), from a gathered copy
//      of the call's fields, a[p][0 .. kp), kp = 4 gstride (zero past the field);
//   B: 16 groups x (16 output channels x 4 bytes): 16 consecutive groups of the packed weight
//      block, wq[ob][16 s .. 16 s + 15] (the int8 layout, gstride a multiple of 16);
//   C: the int32 sums of 16 pixels x 16 channels.
// Tiles: C in tmm0..3 (pixel strips 0, 1 x blocks 0, 1), A in tmm4, 5, B in tmm6, 7: per
// 64-byte step 4 tile loads and 4 TDPBUUD.
//
// The padding is summed like every other tap (its code is 0), so there are no pixel classes
// or start sums here (int8conv.h's "Skipping the padding" is for the VNNI and AVX2 tiles).
// The sums go to a buffer in pixel order, then to int8conv_store.h's store (zmm, as int8-vnni).
//
// Ceiling: one TDPBUUD (16 x 16 x 64 = 16384 MAC) per 16 cycles on Sapphire Rapids, 1024
// MAC/cycle; the step with its 4 KB of tile loads from L1 measured 966 (docs/kernels.md,
// Ceilings). With its operands in L2, as here on the larger layers, a standalone loop of the
// step ran 6-40% slower, and this kernel's tile loop about as fast as such a loop.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "amx_tiles.h"
#include "int8conv.h"
#include "int8conv_store.h"
#include "int8conv_store_avx512.h"

namespace dorefa {
namespace {

constexpr int kStrip = 16;                   // pixels per A tile (its rows)
constexpr int kCallPixels = kMaxCallPixels;  // pixels per call: 4 strips
constexpr int kGroupBlocks = 4;              // blocks summed before one store pass

int32_t Shift(int /*x_bits*/) { return 0; }

// The first n (0 < n <= 64) bytes of a vector.
inline __mmask64 FirstBytes(int64_t n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

// n bytes from src to dst (n > 0) by 64-byte vectors, the last one masked.
inline void CopyBytes(uint8_t* dst, const int8_t* src, int64_t n) {
  for (; n > 64; n -= 64, src += 64, dst += 64) _mm512_storeu_si512(dst, _mm512_loadu_si512(src));
  const __mmask64 m = FirstBytes(n);
  _mm512_mask_storeu_epi8(dst, m, _mm512_maskz_loadu_epi8(m, src));
}

// The fields of pixels [pix0, pix0 + np) into a[p][0 .. kp): per kernel row its KW cp bytes,
// then zeros up to kp (the weights past the field are zero too; this keeps the bytes defined).
// Inline vector copies (memcpy calls measured the same; so did a second copy into tile order,
// each A tile 1 KB of consecutive lines).
void Gather(const Int8Conv& c, int64_t pix0, int np, int64_t kp, uint8_t* a) {
  const ConvGeom& g = *c.g;
  const int8_t* fields[kCallPixels];
  c.Fields(pix0, np, fields);
  const int64_t span = g.kw * c.q.cp, used = g.kh * span;
  for (int p = 0; p < np; ++p) {
    uint8_t* dst = a + p * kp;
    for (int64_t r = 0; r < g.kh; ++r) CopyBytes(dst + r * span, fields[p] + r * c.q.row, span);
    for (int64_t k = used; k < kp; k += 64)
      _mm512_mask_storeu_epi8(dst + k, FirstBytes(kp - k), _mm512_setzero_si512());
  }
}

// A call: gather the fields once, then per group of up to 4 blocks the sums of every pixel
// strip pair x block pair, and the store, 8 pixels at a time (as TileClasses).
void TileAmx(const Int8Conv& c, int64_t pix0, int64_t npix, int64_t ob0, int64_t nob) {
  alignas(64) int32_t raw[kCallPixels * kGroupBlocks * kInt8Lanes];
  int32_t terms[kCallPixels];
  const int np = static_cast<int>(npix);
  const int strips = (np + kStrip - 1) / kStrip;
  const int64_t kp = c.q.gstride * 4, steps = c.q.gstride / 16;
  uint8_t* a = Int8FieldBuffer(static_cast<size_t>(strips * kStrip * kp));
  Gather(c, pix0, np, kp, a);
  // Rows past np in the last strip: defined bytes, sums never stored.
  std::memset(a + np * kp, 0, static_cast<size_t>((strips * kStrip - np) * kp));
  Int8FieldTerms(c, pix0, npix, terms);
  const AmxTileConfig cfg;
  _tile_loadconfig(&cfg);
  const int64_t bstride = c.q.gstride * 64;
  for (int64_t ob = ob0; ob < ob0 + nob; ob += kGroupBlocks) {
    const int nb = static_cast<int>(std::min<int64_t>(kGroupBlocks, ob0 + nob - ob));
    const int64_t ostride = nb * kInt8Lanes;
    for (int b = 0; b < nb; b += 2) {
      const uint8_t* w = c.wq + (ob + b) * bstride;
      for (int s = 0; s < strips; s += 2) {
        // strips s, s + 1 (rows kp bytes apart) x blocks b, b + 1 over 64-byte steps (kq 16)
        const TileStepsFn step =
            kTileSteps<false>[std::min(2, strips - s) - 1][std::min(2, nb - b) - 1];
        step(a + s * kStrip * kp, kStrip * kp, kp, 64, w, bstride, steps, 16,
             raw + s * kStrip * ostride + b * kInt8Lanes, ostride);
      }
    }
    StoreCall<VnniStore>(c, pix0, npix, ob, nb, raw, terms);
  }
  _tile_release();
}

}  // namespace

extern const Int8Kernel kInt8Amx = {"32x32", &TileAmx, &Shift, kCallPixels, kGroupBlocks};

}  // namespace dorefa
