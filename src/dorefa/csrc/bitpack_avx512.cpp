// AVX-512 activation packing (see PackActivations in bitpack.h for the method): VPTESTMB turns
// 64 pixel bytes into the 64-bit mask of one bit plane in one instruction, and the 64x64
// transpose runs on 8 zmm registers (register i, lane l = row 8i + l): with GFNI and VBMI
// (Ice Lake and later) as 8x8 bit-block transposes (TransposeGfni, ~50 instructions), else
// by shifts and masks (TransposeZmm, ~290). Both packers are entries of the kernel table
// (kernel_table.cpp), so one machine with GFNI tests both.
#include <immintrin.h>

#include <algorithm>

#include "bitpack.h"
#include "fields.h"

namespace dorefa {
namespace {

// Transpose64x64 (bitpack.cpp) with rows in 8 zmm. Steps s = 32, 16, 8 pair rows k, k + s
// that sit in the same lane of registers i, i + s / 8; steps s = 4, 2, 1 pair lanes l, l ^ s
// of one register, reached with a lane permutation.
inline void TransposeZmm(__m512i r[8]) {
  const uint64_t kLow[6] = {0x00000000FFFFFFFFULL, 0x0000FFFF0000FFFFULL, 0x00FF00FF00FF00FFULL,
                            0x0F0F0F0F0F0F0F0FULL, 0x3333333333333333ULL, 0x5555555555555555ULL};
  for (int step = 0; step < 3; ++step) {
    const int s = 32 >> step, d = s / 8;
    const __m512i low = _mm512_set1_epi64(static_cast<long long>(kLow[step]));
    for (int i = 0; i < 8; ++i) {
      if (i & d) continue;
      const __m512i t =
          _mm512_and_si512(_mm512_xor_si512(_mm512_srli_epi64(r[i], s), r[i + d]), low);
      r[i + d] = _mm512_xor_si512(r[i + d], t);
      r[i] = _mm512_xor_si512(r[i], _mm512_slli_epi64(t, s));
    }
  }
  for (int step = 3; step < 6; ++step) {
    const int s = 32 >> step;
    const __m512i low = _mm512_set1_epi64(static_cast<long long>(kLow[step]));
    const __m512i partner =
        _mm512_xor_si512(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(s));
    __mmask8 high = 0;  // lanes l with l & s != 0 (the "k + s" rows)
    for (int l = 0; l < 8; ++l) high |= static_cast<__mmask8>((l & s) ? 1 << l : 0);
    for (int i = 0; i < 8; ++i) {
      const __m512i p = _mm512_permutexvar_epi64(partner, r[i]);
      // Valid in low lanes: t for the pair (lane l, lane l + s).
      const __m512i t = _mm512_and_si512(_mm512_xor_si512(_mm512_srli_epi64(r[i], s), p), low);
      const __m512i t_of_partner = _mm512_permutexvar_epi64(partner, t);
      r[i] = _mm512_mask_blend_epi64(high, _mm512_xor_si512(r[i], _mm512_slli_epi64(t, s)),
                                     _mm512_xor_si512(r[i], t_of_partner));
    }
  }
}

// TransposeZmm's result with GFNI and VBMI, in four steps. Row r of the input is B[r] (a
// channel: bit p = pixel p); block (I, J) = byte J of rows 8I..8I+7, an 8x8 bit matrix.
// (1) VPERMB in register I: qword J = block (I, J), bytes in reverse row order.
// (2) GF2P8AFFINEQB with the data as the matrix and x = byte i -> 1 << i: byte i of the result
//     gets bit k = bit i of row k (the formula reads matrix byte 7 - k for bit k, hence the
//     reversal in (1)); so qword J, byte i = channels 8I..8I+7 of pixel 8J + i.
// (3) An 8x8 qword transpose across the registers (unpacks, then 128-bit lane shuffles):
//     register J, qword I = qword J of register I.
// (4) VPERMB in register J: qword i, byte I = old qword I, byte i, i.e. row 8J + i of the
//     transpose (pixel 8J + i: bit c = channel c).
struct ByteIndex {
  alignas(64) uint8_t v[64];
};
constexpr ByteIndex MakeIndex(bool blocks) {
  ByteIndex t{};
  for (int a = 0; a < 8; ++a) {
    for (int b = 0; b < 8; ++b) {
      // blocks, step (1): position 8J + j <- 8(7 - j) + J; else step (4): 8i + I <- 8I + i.
      t.v[8 * a + b] = static_cast<uint8_t>(blocks ? 8 * (7 - b) + a : 8 * b + a);
    }
  }
  return t;
}
constexpr ByteIndex kBlocks = MakeIndex(true), kBytes8x8 = MakeIndex(false);

// (Not inlined: a function compiled for more instructions cannot be inlined into Pack.)
__attribute__((target("avx512f,avx512bw,avx512vbmi,gfni"), noinline)) void TransposeGfni(
    __m512i r[8]) {
  const __m512i blocks = _mm512_load_si512(kBlocks.v), bytes8x8 = _mm512_load_si512(kBytes8x8.v);
  const __m512i diag = _mm512_set1_epi64(static_cast<long long>(0x8040201008040201ULL));
  __m512i y[8], a[8], b[8];
  for (int i = 0; i < 8; ++i) {
    y[i] = _mm512_gf2p8affine_epi64_epi8(diag, _mm512_permutexvar_epi8(blocks, r[i]), 0);
  }
  // (3) a[2i] / a[2i + 1], 128-bit lane L: qwords 2L / 2L + 1 of y[2i] and y[2i + 1].
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm512_unpacklo_epi64(y[2 * i], y[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi64(y[2 * i], y[2 * i + 1]);
  }
  // b[4i + h]: lanes 0 and 2 of a[4i + h], then of a[4i + 2 + h] (qwords J = h, 4 + h of
  // rows 4i..4i + 3); b[4i + 2 + h]: lanes 1 and 3 (J = 2 + h, 6 + h).
  for (int i = 0; i < 2; ++i) {
    for (int h = 0; h < 2; ++h) {
      b[4 * i + h] = _mm512_shuffle_i64x2(a[4 * i + h], a[4 * i + 2 + h], 0x88);
      b[4 * i + 2 + h] = _mm512_shuffle_i64x2(a[4 * i + h], a[4 * i + 2 + h], 0xDD);
    }
  }
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 2; ++s) {
      const __m512i lo = b[2 * s + h], hi = b[4 + 2 * s + h];  // rows 0..3 and 4..7
      r[2 * s + h] = _mm512_permutexvar_epi8(bytes8x8, _mm512_shuffle_i64x2(lo, hi, 0x88));
      r[4 + 2 * s + h] = _mm512_permutexvar_epi8(bytes8x8, _mm512_shuffle_i64x2(lo, hi, 0xDD));
    }
  }
}

// The packer, with the transpose as a parameter.
template <void (*Transpose)(__m512i*)>
__attribute__((always_inline)) inline uint8_t Pack(const ConvGeom& g, const uint8_t* x,
                                                   uint64_t* xpk, int64_t item0, int64_t item1) {
  const int64_t hw = g.h * g.w;
  uint8_t all_or = 0;
  for (int64_t it = item0; it < item1; ++it) {
    const PackItem item = LocatePackItem(g, it);
    const int64_t npx = item.npx, nch = item.nch;
    const __mmask64 pmask = npx == 64 ? ~__mmask64{0} : ((__mmask64{1} << npx) - 1);
    alignas(64) uint64_t bits[8][64];  // [plane][channel] -> after the transpose [plane][pixel]
    __m512i ors = _mm512_setzero_si512();
    const uint8_t* src = x + (item.n * g.c + item.cb * 64) * hw + item.q0;
    if (hw == 1) {  // one pixel (1x1 weights as images): its channels are contiguous bytes,
      // and bit m of each is the packed word itself: no transpose
      const __mmask64 cmask = nch == 64 ? ~__mmask64{0} : ((__mmask64{1} << nch) - 1);
      const __m512i v = _mm512_maskz_loadu_epi8(cmask, src);
      for (int m = 0; m < g.x_bits; ++m)
        bits[m][0] = _mm512_test_epi8_mask(v, _mm512_set1_epi8(static_cast<char>(1 << m)));
      ors = v;
    }
    for (int64_t r = 0; hw != 1 && r < nch; ++r) {
      // Masked: bytes past the plane are neither read nor counted (they load as 0).
      const __m512i v = _mm512_maskz_loadu_epi8(pmask, src + r * hw);
      ors = _mm512_or_si512(ors, v);
      for (int m = 0; m < g.x_bits; ++m) {
        bits[m][r] = _mm512_test_epi8_mask(v, _mm512_set1_epi8(static_cast<char>(1 << m)));
      }
    }
    for (int m = 0; hw != 1 && m < g.x_bits; ++m) {
      std::fill(bits[m] + nch, bits[m] + 64, uint64_t{0});
      __m512i rows[8];
      for (int i = 0; i < 8; ++i) rows[i] = _mm512_load_si512(bits[m] + 8 * i);
      Transpose(rows);
      for (int i = 0; i < 8; ++i) _mm512_store_si512(bits[m] + 8 * i, rows[i]);
    }
    // Fold the 64 OR-ed bytes to one.
    const __m256i o4 =
        _mm256_or_si256(_mm512_castsi512_si256(ors), _mm512_extracti64x4_epi64(ors, 1));
    __m128i o2 = _mm_or_si128(_mm256_castsi256_si128(o4), _mm256_extracti128_si256(o4, 1));
    o2 = _mm_or_si128(o2, _mm_srli_si128(o2, 8));
    o2 = _mm_or_si128(o2, _mm_srli_si128(o2, 4));
    o2 = _mm_or_si128(o2, _mm_srli_si128(o2, 2));
    o2 = _mm_or_si128(o2, _mm_srli_si128(o2, 1));
    all_or |= static_cast<uint8_t>(_mm_cvtsi128_si32(o2));

    StorePackItem(g, item, bits, xpk);
  }
  return all_or;
}

}  // namespace

uint8_t PackActivationsAvx512Shift(const ConvGeom& g, const uint8_t* x, uint64_t* xpk,
                                   int64_t item0, int64_t item1) {
  return Pack<TransposeZmm>(g, x, xpk, item0, item1);
}

uint8_t PackActivationsAvx512Gfni(const ConvGeom& g, const uint8_t* x, uint64_t* xpk, int64_t item0,
                                  int64_t item1) {
  return Pack<TransposeGfni>(g, x, xpk, item0, item1);
}

// The field's kernel row r of output pixel ox: the KW tap words at x0 + r * row (their
// bytes 0 .. b - 1 hold the channels) to bytes [r * KW * b, (r + 1) * KW * b) of the field,
// out byte i = in byte (i / b) * 8 + i % b, by a masked store (the field's last word zeroed
// first, for the bytes past it). (Plain 64-byte stores where they stay inside the output row
// measured the same on Zen 4.)
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void BuildFieldRowVbmi(
    const ConvGeom& g, const ConvGeom& gf, const uint64_t* xpk, int64_t n, int m, int64_t oy,
    uint64_t* xf) {
  if (g.cw != 1 || g.c % 8 != 0 || g.c > 56 || g.kw > 8) {  // a kernel row: < 64 bytes
    BuildFieldRow(g, gf, xpk, n, m, oy, xf);
    return;
  }
  const int64_t kh = g.kh, lw = gf.cw, ow = g.ow, step = g.stride, row = g.RowStride();
  const int64_t b = g.c / 8, rb = g.kw * b;  // bytes per tap, per kernel row (<= 56)
  alignas(64) uint8_t idx[64];
  for (int64_t i = 0; i < 64; ++i) idx[i] = static_cast<uint8_t>(i < rb ? i / b * 8 + i % b : 0);
  const __m512i perm = _mm512_load_si512(idx);
  const __mmask64 in = g.kw == 8 ? ~__mmask64{0} : (__mmask64{1} << (8 * g.kw)) - 1;
  const __mmask64 out = (__mmask64{1} << rb) - 1;
  const uint64_t* x0 = xpk + (n * g.x_bits + m) * g.PlaneStride() + oy * g.stride * row;
  uint64_t* dst = xf + (n * gf.x_bits + m) * gf.PlaneStride() + oy * ow * lw;
  for (int64_t ox = 0; ox < ow; ++ox, dst += lw, x0 += step) {
    dst[lw - 1] = 0;
    auto* o8 = reinterpret_cast<unsigned char*>(dst);
    for (int64_t r = 0; r < kh; ++r) {
      const __m512i v = _mm512_maskz_loadu_epi8(in, x0 + r * row);
      _mm512_mask_storeu_epi8(o8 + r * rb, out, _mm512_permutexvar_epi8(perm, v));
    }
  }
}

}  // namespace dorefa
