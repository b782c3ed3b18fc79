// The AVX-512 packing of the direct weight gradient's operands (wgrad_direct.h): the strip
// planes of the activations and the gradient factors in 16-channel x 4-pixel vectors, shared by
// the VNNI register tiles (wgrad_vnni_direct.cpp) and the AMX tiles (wgrad_amx.cpp). Internal
// linkage, as wgrad_direct.h.
#ifndef DOREFA_CSRC_WGRAD_DIRECT_AVX512_H_
#define DOREFA_CSRC_WGRAD_DIRECT_AVX512_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "avx512_transpose.h"
#include "wgrad_direct.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA file

// a * b per byte, for products below 256 (the low byte of each 16-bit product).
inline __m512i MulBytes(__m512i a, __m512i b) {
  const __m512i even = _mm512_mullo_epi16(a, b);
  const __m512i odd = _mm512_mullo_epi16(_mm512_srli_epi16(a, 8), _mm512_srli_epi16(b, 8));
  return _mm512_mask_blend_epi8(0xAAAAAAAAAAAAAAAAULL, even, _mm512_slli_epi16(odd, 8));
}

struct Avx512DirectPack {
  // The strip planes of n channels of one tap column (wgrad_direct.h). Where the input rows
  // are as wide as the output's (w == ow: a convolution padded to keep its size), strip byte j
  // is input byte j - (p ow - shift) wherever it is not padding: per 64 strip bytes one masked
  // load (the padding's bytes masked off, never read) and one store, the masks built once for
  // the n planes. Unpadded planes of rows up to 8 bytes by 8-byte copies (ValidRows); wider
  // planes than kMaskChunks steps, and the others, row by row.
  static constexpr int64_t kMaskChunks = 16;
  static void StripPlanes(const uint8_t* src, int64_t n, int64_t h, int64_t w, int64_t p,
                          int64_t first, int64_t last, int64_t shift, uint8_t* dst, int64_t step,
                          int64_t ow, int64_t hp) {
    const int64_t size = hp * ow, chunks = (size + 63) / 64;
    if (p == 0 && first == 0 && last == ow && ow <= 8) {
      for (int64_t i = 0; i < n; ++i) ValidRows(src + i * h * w + shift, h, w, dst + i * step, ow);
      return;
    }
    if (w != ow || chunks > kMaskChunks) {
      for (int64_t i = 0; i < n; ++i)
        StripPlane(src + i * h * w, h, w, p, first, last, shift, dst + i * step, ow, hp);
      return;
    }
    __mmask64 data[kMaskChunks] = {};
    for (int64_t y = p; y < p + h && first < last; ++y) {  // strip bytes [j0, j1) of row y
      const int64_t j0 = y * ow + first, j1 = y * ow + last;
      for (int64_t k = j0 / 64; k <= (j1 - 1) / 64; ++k)
        data[k] |= ByteSpan(64 * k, j1) & ~ByteSpan(64 * k, j0);
    }
    const int64_t offset = p * ow - shift;
    for (int64_t i = 0; i < n; ++i) {
      // (the address below the plane's first byte is only formed, its bytes masked off)
      const uint8_t* in = src + i * h * w - offset;
      uint8_t* out = dst + i * step;
      for (int64_t k = 0; k < chunks; ++k)
        _mm512_mask_storeu_epi8(out + 64 * k, ByteSpan(64 * k, size),
                                _mm512_maskz_loadu_epi8(data[k], in + 64 * k));
    }
  }

  // An unpadded plane's h rows of ow <= 8 bytes, row y from src + y w: an 8-byte copy where
  // its load stays inside the h w input bytes and its store inside the plane (the bytes past
  // the row are the next rows', written after it), else a masked one.
  static void ValidRows(const uint8_t* src, int64_t h, int64_t w, uint8_t* dst, int64_t ow) {
    const int64_t in_end = (h - 1) * w + ow, out_end = h * ow;  // bytes from src, to dst
    const __mmask16 row = static_cast<__mmask16>((1u << ow) - 1);
    for (int64_t y = 0; y < h; ++y) {
      if (y * w + 8 <= in_end && y * ow + 8 <= out_end) {
        uint64_t v;
        std::memcpy(&v, src + y * w, 8);
        std::memcpy(dst + y * ow, &v, 8);
      } else {
        _mm_mask_storeu_epi8(dst + y * ow, row, _mm_maskz_loadu_epi8(row, src + y * w));
      }
    }
  }

  // One strip plane (wgrad_direct.h): rows of ow bytes in 64-byte masked steps, the data
  // columns loaded under their mask (the rest read as 0), the padding rows stored as zeros.
  static void StripPlane(const uint8_t* src, int64_t h, int64_t w, int64_t p, int64_t first,
                         int64_t last, int64_t shift, uint8_t* dst, int64_t ow, int64_t hp) {
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t i = 0; i < ow; i += 64) {
      const __mmask64 row = ByteSpan(i, ow), data = row & ~ByteSpan(i, first) & ByteSpan(i, last);
      for (int64_t y = 0; y < hp; ++y) {
        const int64_t iy = y - p;
        const __m512i v = iy < 0 || iy >= h || data == 0
                              ? zero
                              : _mm512_maskz_loadu_epi8(data, src + iy * w + i + shift);
        _mm512_mask_storeu_epi8(dst + y * ow + i, row, v);
      }
    }
  }
  // g = 2c - n_g of one sample into 16-channel x 4-pixel vectors: per 16 channels and 16 quads,
  // 16 rows of 64 code bytes (masked: 0 past P and past O), transformed, then transposed as a
  // 16 x 16 matrix of 4-byte quads.
  static void PackGrads(const WgradGeom& g, const DirectLayout& l, const uint8_t* c, int8_t* gq) {
    const int64_t p_count = g.P();
    const __m512i ng = _mm512_set1_epi8(static_cast<char>((1 << g.g_bits) - 1));
    for (int64_t v = 0; v < l.ov; ++v) {
      for (int64_t q0 = 0; q0 < l.pq; q0 += 16) {
        const __mmask64 m = ByteSpan(q0 * 4, p_count);
        __m512i r[16];
        for (int i = 0; i < 16; ++i) {
          const int64_t o = v * 16 + i;
          const __m512i x = o < g.o ? _mm512_maskz_loadu_epi8(m, c + o * p_count + q0 * 4)
                                    : _mm512_setzero_si512();
          r[i] = o < g.o ? _mm512_maskz_sub_epi8(m, _mm512_add_epi8(x, x), ng) : x;
        }
        Transpose16Dwords(r);
        const int64_t n = std::min<int64_t>(16, l.pq - q0);
        for (int64_t j = 0; j < n; ++j) _mm512_storeu_si512(gq + (v * l.pq + q0 + j) * 64, r[j]);
      }
    }
  }
};

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_WGRAD_DIRECT_AVX512_H_
