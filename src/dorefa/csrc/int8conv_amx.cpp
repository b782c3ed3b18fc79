// AMX int8 kernel (int8conv.h's layouts): tiles of 16 output pixels x 16 output channels,
// 2 x 2 of them at a time, summed by TDPBUUD over the receptive field in steps of 64 bytes.
//
// TDPBUUD C, A, B: C[m][n] += sum_{i<4} u8(A[m][4k + i]) * u8(B[k][4n + i]) over the 16 rows
// k of B, into int32. Both operands are unsigned, so the codes go in as they are: no
// activation shift (z = 0), every bit pair 1..8 on one path, and every partial sum is at most
// the final one, which the callers check fits int32.
//   A: 16 pixels x 64 bytes of their fields (16 groups of 4 channels): at stride 1 straight
//      from the packed image (the direct strips, below), else from a gathered copy of the
//      call's fields, a[p][0 .. kp), kp = 4 gstride (zero past the field);
//   B: 16 groups x (16 output channels x 4 bytes): 16 consecutive groups of the packed weight
//      block, wq[ob][16 s .. 16 s + 15] (the int8 layout, gstride a multiple of 16);
//   C: the int32 sums of 16 pixels x 16 channels.
// In the signed and requant modes, where the layout has them (w_bits <= 7, blocks of at most
// 256 KB), the B tiles come from its signed blocks (2 w - nw, int8) and TDPBUSD (unsigned A by
// signed B) sums D = 2 acc - nw S itself: no field terms (Int8Conv::d_sums; its partial sums are
// bounded by nx nw K as acc's are).
// Tiles: C in tmm0..3 (pixel strips 0, 1 x blocks 0, 1), A in tmm4, 5, B in tmm6, 7: per
// 64-byte step 4 tile loads and 4 TDPBUUD.
//
// The padding is summed like every other tap (its code is 0), so there are no pixel classes
// or start sums here (int8conv.h's "Skipping the padding" is for the VNNI and AVX2 tiles).
// The sums go to a buffer in pixel order, then to int8conv_store.h's store (zmm, as int8-vnni).
//
// Ceiling: one TDPBUUD (16 x 16 x 64 = 16384 MAC) per 16 cycles on Sapphire Rapids, 1024
// MAC/cycle; the step with its 4 KB of tile loads from L1 measured 966 (docs/kernels.md,
// Ceilings). With its operands in L2 (the gathered fields of the larger layers) a standalone
// loop of the step ran 6-40% slower; the direct strips keep a call's A operands, a few image
// rows, in L1.
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

// The fields of the call's np pixels into a[p][0 .. kp): per kernel row its KW cp bytes,
// then zeros up to kp (the weights past the field are zero too; this keeps the bytes defined).
// Inline vector copies (memcpy calls measured the same; so did a second copy into tile order,
// each A tile 1 KB of consecutive lines).
void Gather(const Int8Conv& c, const int8_t* const* fields, int np, int64_t kp, uint8_t* a) {
  const ConvGeom& g = *c.g;
  const int64_t span = g.kw * c.q.cp, used = g.kh * span;
  for (int p = 0; p < np; ++p) {
    uint8_t* dst = a + p * kp;
    for (int64_t r = 0; r < g.kh; ++r) CopyBytes(dst + r * span, fields[p] + r * c.q.row, span);
    for (int64_t k = used; k < kp; k += 64)
      _mm512_mask_storeu_epi8(dst + k, FirstBytes(kp - k), _mm512_setzero_si512());
  }
}

// The direct path (stride 1; steps of 64 bytes where a kernel row is whole ones, else of one
// tap: DirectKq): the A tiles are loaded from the packed image itself, no gathered copy, and
// the call's image rows stay in L1 (svhn's 64->64 at batch 32 1.2x, 48->64 1.1-1.2x, AlexNet's
// conv3 1.06-1.11x). Strip s's rows are the fields at start[s] + i cp (i < 16), one tile load
// with rows cp apart per step: along an output row the fields are cp apart, and across the
// row's end too, after the KW - 1 - pad packed pixels between (int8conv.h), whose rows are
// summed and not stored. Pixel p of the call is row at[p] = 16 s + i of the strips' sums.
// Strips are greedy: each starts at the first pixel the strips before do not cover. Calls are
// sized so that 4 strips cover them (Prepare), but where one crosses into the next image
// (one strip more).
struct Strips {
  static constexpr int kMax = kCallPixels / kStrip + 1;
  int count = 0;
  const uint8_t* start[kMax];
  int16_t at[kCallPixels];
};

// Packed pixels between an output row's last field and the next row's first (stride 1).
int64_t RowGap(const ConvGeom& g) { return g.kw - 1 - g.pad; }

// The direct path's steps: 64 bytes (kq 16), span / 64 a kernel row, where a kernel row is
// whole 64-byte steps; else one tap (kq = cp / 4) a step, KW a row, where cp <= 64 and the
// taps' KH KW steps are at most 1.3x the gathered path's (a TDPBUUD of K = 48 takes as long as
// one of 64): svhn's 48-channel layer, 9 steps against 7. 0: none.
int64_t DirectKq(const ConvGeom& g) {
  const Int8Geom q(g);
  if (g.kw * q.cp % 64 == 0) return 16;
  if (q.cp <= 64 && 10 * g.kh * g.kw <= 13 * (q.gstride / 16)) return q.cp / 4;
  return 0;
}

// Whether a layer takes the direct path, and the output pixels of its calls. An image whose
// pixels with the row gaps between them fit 4 strips is one call, where its pixels fill at least
// 3/4 of its strips' rows (7x7 outputs, 49 pixels in 55 or 61 rows: at batch 32 1.12x (padded)
// and 1.05x (valid) against gathered calls of 64 pixels over 2-3 images; 5x5 outputs, 25 in 33
// rows, 0.82x: gathered). Larger images: calls of the most pixels, up to 64, whose fields with
// the gaps fit 4 strips from any first pixel, where that is at least 56 (the gaps' share of the
// tile work at most 1/8; a call then crosses into the next image at most once).
int64_t DirectCallPixels(const ConvGeom& g) {
  const int64_t gap = RowGap(g);  // < 0: a row's last fields overlap the next row's first
  if (g.stride != 1 || DirectKq(g) == 0 || gap < 0) return 0;
  const int64_t ohw = g.oh * g.ow, rows = ohw + gap * (g.oh - 1);
  if (rows <= kCallPixels) return 4 * ohw >= 3 * kStrip * ((rows + kStrip - 1) / kStrip) ? ohw : 0;
  int64_t r = kCallPixels;
  while (r > 0 && r + gap * ((g.ow - 1 + r - 1) / g.ow) > kCallPixels) --r;
  return r >= 56 ? r : 0;
}

// Int8Kernel::prepare: the layer's direct kq (0: gathered), whether its tiles sum D on the
// signed blocks (kSigned and kRequant, where the layout has them: no field terms, no pixel sums,
// less in the store; requant on svhn's 64->64 1.12x at batch 1, 1.08x at batch 32), and its
// calls' output pixels.
int64_t Prepare(Int8Conv* c) {
  c->d_sums = c->mode != Epilogue::kAcc && c->wqs != nullptr;
  const int64_t r = DirectCallPixels(*c->g);
  c->direct_kq = r > 0 ? DirectKq(*c->g) : 0;
  return r > 0 ? r : kCallPixels;
}

// The strips of the call's pixels [pix0, pix0 + np) (Strips), or false past Strips::kMax (a
// call over 3 images: DirectCallPixels leaves none).
bool DirectStrips(const Int8Conv& c, int64_t pix0, int np, Strips* st) {
  const ConvGeom& g = *c.g;
  const int64_t ohw = g.oh * g.ow, row = c.q.row / c.q.pixel, image = c.q.image / c.q.pixel;
  int64_t n = pix0 / ohw, oy = pix0 % ohw / g.ow, ox = pix0 % g.ow;
  int64_t first = 0;  // the current strip's first packed pixel
  st->count = 0;
  for (int p = 0; p < np; ++p) {
    const int64_t u = n * image + oy * row + ox;  // the field's first packed pixel
    if (st->count == 0 || u - first >= kStrip) {
      if (st->count == Strips::kMax) return false;
      first = u;
      st->start[st->count++] = reinterpret_cast<const uint8_t*>(c.xq) + u * c.q.pixel;
    }
    st->at[p] = static_cast<int16_t>((st->count - 1) * kStrip + (u - first));
    if (++ox == g.ow) {
      ox = 0;
      if (++oy == g.oh) oy = 0, ++n;
    }
  }
  return true;
}

// Rows at[p] of sums (ostride int32 each) moved to rows p, in place (at[p] >= p, ascending).
void CompactRows(const Strips& st, int np, int64_t ostride, int32_t* sums) {
  for (int p = 0; p < np; ++p) {
    if (st.at[p] == p) continue;
    const int32_t* src = sums + st.at[p] * ostride;
    int32_t* dst = sums + p * ostride;
    for (int64_t l = 0; l < ostride; l += 16)
      _mm512_store_si512(dst + l, _mm512_load_si512(src + l));
  }
}

// The kq of the tile configuration this thread has loaded in the convolution it runs (0: none).
// LDTILECFG zeroes the tiles and costs ~2% of a call on svhn's 64->64 at batch 32: it is loaded
// once a convolution (and again where a call's kq differs), released by ReleaseTiles.
thread_local int64_t tcfg_kq = 0;
void LoadTileConfig(int64_t kq) {
  if (kq == tcfg_kq) return;
  const AmxTileConfig cfg(kq);
  _tile_loadconfig(&cfg);
  tcfg_kq = kq;
}

// A call: the fields (direct strips, else a gathered copy), then per group of up to 4 blocks
// the sums of every strip pair x block pair, and the store, 8 pixels at a time (as
// TileClasses).
void TileAmx(const Int8Conv& c, int64_t pix0, int64_t npix, int64_t ob0, int64_t nob) {
  alignas(64) int32_t raw[Strips::kMax * kStrip * kGroupBlocks * kInt8Lanes];
  int32_t terms[kCallPixels];
  const ConvGeom& g = *c.g;
  const int np = static_cast<int>(npix);
  const int64_t kp = c.q.gstride * 4, steps = c.q.gstride / 16, span = g.kw * c.q.cp;
  Strips st;
  const bool direct = c.direct_kq > 0 && DirectStrips(c, pix0, np, &st);
  const uint8_t* a = nullptr;
  int strips = (np + kStrip - 1) / kStrip;
  if (direct) {
    strips = st.count;
  } else {
    const int8_t* fields[kCallPixels];
    c.Fields(pix0, np, fields);
    uint8_t* buf = Int8FieldBuffer(static_cast<size_t>(strips * kStrip * kp));
    Gather(c, fields, np, kp, buf);
    // Rows past np in the last strip: defined bytes, sums never stored.
    std::memset(buf + np * kp, 0, static_cast<size_t>((strips * kStrip - np) * kp));
    a = buf;
  }
  Int8FieldTerms(c, pix0, npix, terms);          // zeros where the tiles sum D
  const int64_t kq = direct ? c.direct_kq : 16;  // direct: kq 16 steps span / 64 a row, else KW
  const int64_t row_steps = kq == 16 ? span / 64 : g.kw;
  LoadTileConfig(kq);
  const int64_t bstride = c.q.gstride * 64;
  // TDPBUSD on the signed blocks (the sums are D), else TDPBUUD on the codes' blocks.
  const auto* wbase = c.d_sums ? reinterpret_cast<const uint8_t*>(c.wqs) : c.wq;
  const auto& steps_fn = c.d_sums ? kTileRowSteps<true> : kTileRowSteps<false>;
  for (int64_t ob = ob0; ob < ob0 + nob; ob += kGroupBlocks) {
    const int nb = static_cast<int>(std::min<int64_t>(kGroupBlocks, ob0 + nob - ob));
    const int64_t ostride = nb * kInt8Lanes;
    for (int b = 0; b < nb; b += 2) {
      const uint8_t* w = wbase + (ob + b) * bstride;
      for (int s = 0; s < strips; s += 2) {
        // strips s, s + 1 x blocks b, b + 1 over the field's steps
        const int na = std::min(2, strips - s);
        const TileRowStepsFn step = steps_fn[na - 1][std::min(2, nb - b) - 1];
        int32_t* out = raw + s * kStrip * ostride + b * kInt8Lanes;
        if (direct) {  // per kernel row, row_steps steps from the image
          const int64_t a2 = na == 2 ? st.start[s + 1] - st.start[s] : 0;
          step(st.start[s], a2, c.q.cp, 4 * kq, g.kh, c.q.row, w, bstride, row_steps, kq, out,
               ostride);
        } else {  // strips' rows kp bytes apart
          step(a + s * kStrip * kp, kStrip * kp, kp, 64, 1, 0, w, bstride, steps, 16, out, ostride);
        }
      }
    }
    if (direct) CompactRows(st, np, ostride, raw);
    StoreCall<VnniStore>(c, pix0, npix, ob, nb, raw, terms);
  }
}

// Int8Kernel::done: the tile configuration released.
void ReleaseTiles() {
  if (tcfg_kq != 0) _tile_release();
  tcfg_kq = 0;
}

}  // namespace

extern const Int8Kernel kInt8Amx = {"32x32", &TileAmx, &Shift,   kCallPixels,  kGroupBlocks,
                                    nullptr, false,    &Prepare, &ReleaseTiles};

}  // namespace dorefa
