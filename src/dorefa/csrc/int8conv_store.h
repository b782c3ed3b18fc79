// The vector store of the int8 kernels' tiles, shared by the AMX, AVX-512 VNNI and AVX2 files: for
// a tile of np <= 8 pixels, split where it crosses into the next image (so each channel's
// outputs in a segment are a run of neighbours in the NCHW plane), per 16-channel block,
//   acc = raw + z Wsum,   D = 2 acc - nw S      (modulo 2^32: the true values fit int32)
// (D = raw where the tiles summed it on the signed weights: Int8Conv::d_sums)
// and, in kRequant, the codes of D on the rows' lines (requant_table.h) in vectors (a row
// without a line is searched, lane by lane). The block's np x 16 values then go out channel by
// channel, each channel's run as a few plain stores, not one strided store per output: int32
// values through 8 x 8 transposes, codes shifted into one byte per pixel of the lane's two
// words, in registers.
//
// Isa provides kLanes (channels per vector: 16 or 8), its vector type Vec of int32 lanes with
// Zero(), Or(a, b), Shl(a, bits) and Store(uint32_t*, a), StoreInt32 (a block's int32 outputs,
// as StoreInt32Ymm below), and a type Lanes, made once per block
// for channels o .. o + kLanes - 1 (Lanes(c, o): z Wsum, the signs and the lines
// in registers) with Codes(raw, nws): one pixel's codes of D on the lines (exact where
// tab.line is set; in [0, T] on every lane).
// Internal linkage, one copy per ISA file (as wgrad_direct.h); AVX2 instructions only outside
// Isa.
#ifndef DOREFA_CSRC_INT8CONV_STORE_H_
#define DOREFA_CSRC_INT8CONV_STORE_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "byte_runs.h"
#include "int8conv.h"

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

constexpr int kMaxStorePixels = 8;
// How far ahead of a channel's run of int32 outputs the store fetches its line (into L2) when
// c.prefetch: a store to a line not in cache waits for it (lut-avx512 on ResNet's 64->64 at
// 56x56, batch 8: 8-10% faster; at batch 1, outputs in L2, 2-3% slower, hence the flag).
constexpr int64_t kPrefetchInt32 = 32;

// The first np (<= 8) int32 lanes of v to dst, by plain stores.
inline void StoreRun32(int32_t* dst, __m256i v, int np) {
  if (np == 8) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), v);
    return;
  }
  __m128i part = _mm256_castsi256_si128(v);
  if (np & 4) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), part);
    part = _mm256_extracti128_si256(v, 1);
    dst += 4;
  }
  if (np & 2) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), part);
    part = _mm_srli_si128(part, 8);
    dst += 2;
  }
  if (np & 1) *dst = _mm_cvtsi128_si32(part);
}

// A channel's run of np outputs (StoreRun32) and, with prefetch, a fetch of its line
// kPrefetchInt32 outputs on.
inline void StoreChannelRun(int32_t* dst, __m256i v, int np, bool prefetch) {
  StoreRun32(dst, v, np);
  if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(dst + kPrefetchInt32), _MM_HINT_T1);
}

// v[p][l] (p < 8, l < 16) -> dst[l * stride + p] for p < np, l < lanes: per 8 lanes an 8 x 8
// transpose (unpack 32, unpack 64, 128-bit halves), then one StoreChannelRun per lane.
inline void TransposeStore32(const int32_t (*v)[kInt8Lanes], int np, int32_t* dst, int64_t stride,
                             int64_t lanes, bool prefetch) {
  auto run = [&](int64_t l, __m256i r) { StoreChannelRun(dst + l * stride, r, np, prefetch); };
  for (int h = 0; h < 2 && 8 * h < lanes; ++h) {
    __m256i r[8], t[8], u[8];
    for (int p = 0; p < 8; ++p)
      r[p] = _mm256_load_si256(reinterpret_cast<const __m256i*>(v[p] + 8 * h));
    for (int p = 0; p < 8; p += 2) {
      t[p] = _mm256_unpacklo_epi32(r[p], r[p + 1]);      // lanes 4k, 4k+1 of rows p, p+1
      t[p + 1] = _mm256_unpackhi_epi32(r[p], r[p + 1]);  // lanes 4k+2, 4k+3
    }
    for (int q = 0; q < 8; q += 4) {
      u[q] = _mm256_unpacklo_epi64(t[q], t[q + 2]);      // lane 4k, rows q..q+3
      u[q + 1] = _mm256_unpackhi_epi64(t[q], t[q + 2]);  // lane 4k+1
      u[q + 2] = _mm256_unpacklo_epi64(t[q + 1], t[q + 3]);
      u[q + 3] = _mm256_unpackhi_epi64(t[q + 1], t[q + 3]);
    }
    for (int j = 0; j < 4; ++j) {
      const int64_t l = 8 * h + j;
      if (l < lanes) run(l, _mm256_permute2x128_si256(u[j], u[j + 4], 0x20));
      if (l + 4 < lanes) run(l + 4, _mm256_permute2x128_si256(u[j], u[j + 4], 0x31));
    }
  }
}

// The int32 outputs of a block (channels o0 ..) for np <= 8 pixels (pixel p's raw sums at
// raw + p * step) to dst[l * stride + p] for p < run, l < lanes: acc = raw + z Wsum, then acc
// (kAcc) or D = 2 acc - nws[p], 8 lanes a vector (written as whole vectors: the transpose
// reads them back without a store-forwarding stall), then TransposeStore32. On ymm (AVX2).
inline void StoreInt32Ymm(const Int8Conv& c, int64_t o0, const int32_t* raw, int64_t step,
                          const int32_t* nws, int np, int run, int32_t* dst, int64_t stride,
                          int64_t lanes) {
  alignas(64) int32_t v[kMaxStorePixels][kInt8Lanes];
  const __m128i one = _mm_cvtsi32_si128(c.mode == Epilogue::kAcc ? 0 : 1);
  const __m256i zv = _mm256_set1_epi32(c.shift);
  __m256i zw[2];
  for (int h = 0; h < 2; ++h)
    zw[h] = _mm256_mullo_epi32(
        zv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c.wsum + o0 + 8 * h)));
  for (int p = 0; p < kMaxStorePixels; ++p) {
    for (int h = 0; h < 2; ++h) {
      __m256i d = _mm256_setzero_si256();
      if (p < np) {
        const __m256i sums =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(raw + p * step + 8 * h));
        const __m256i acc = _mm256_add_epi32(sums, zw[h]);
        d = c.d_sums ? sums
                     : _mm256_sub_epi32(_mm256_sll_epi32(acc, one), _mm256_set1_epi32(nws[p]));
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(v[p] + 8 * h), d);
    }
  }
  TransposeStore32(v, run, dst, stride, lanes, c.prefetch);
}

// Codes of the block at channel o0 for np pixels to dst[lane * stride + p]. Pixel p's code
// (< 256) is shifted into byte p % 4 of the lane's word p / 4, in registers, so a lane's two
// words are its run of bytes (StoreRun8: run >= np bytes, the ones past np zero). Lanes whose
// row has no line get their codes from the search afterwards, D recomputed as above.
template <class Isa>
void StoreBlockCodes(const Int8Conv& c, int64_t o0, int np, int run, int nb, int b,
                     const int32_t* raw, const int32_t* nws, uint8_t* dst, int64_t stride,
                     int64_t lanes) {
  using Vec = typename Isa::Vec;
  const ThresholdTable& tab = *c.table;
  alignas(64) uint32_t word[2][kInt8Lanes];
  for (int h = 0; h < kInt8Lanes; h += Isa::kLanes) {
    const typename Isa::Lanes line(c, o0 + h);
    const int32_t* in = raw + b * kInt8Lanes + h;
    const int64_t step = nb * kInt8Lanes;
    Vec lo = Isa::Zero(), hi = Isa::Zero();
    for (int p = 0; p < std::min(np, 4); ++p)
      lo = Isa::Or(lo, Isa::Shl(line.Codes(in + p * step, nws[p]), 8 * p));
    for (int p = 4; p < np; ++p)
      hi = Isa::Or(hi, Isa::Shl(line.Codes(in + p * step, nws[p]), 8 * (p - 4)));
    Isa::Store(word[0] + h, lo);
    Isa::Store(word[1] + h, hi);
  }
  const __m128i has_line =
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(tab.line.data() + o0));  // rows >= o0 + 16
  const bool all_lines = _mm_movemask_epi8(_mm_cmpeq_epi8(has_line, _mm_setzero_si128())) == 0;
  const auto z = static_cast<uint32_t>(c.shift);
  for (int l = 0; l < kInt8Lanes && !all_lines; ++l) {
    if (tab.line[o0 + l]) continue;
    for (int p = 0; p < np; ++p) {
      const int32_t v = raw[(p * nb + b) * kInt8Lanes + l];
      const uint32_t acc = static_cast<uint32_t>(v) + z * static_cast<uint32_t>(c.wsum[o0 + l]);
      const auto d = c.d_sums ? v : static_cast<int32_t>(2 * acc - static_cast<uint32_t>(nws[p]));
      const int shift = 8 * (p % 4);
      uint32_t& w = word[p / 4][l];
      w = (w & ~(0xFFu << shift)) | uint32_t{RequantCode(tab, o0 + l, d)} << shift;
    }
  }
  int64_t l = 0;
  if (run == kMaxStorePixels) {  // 4 lanes at a time: their two words interleaved to 8 bytes
    for (; l + 4 <= lanes; l += 4) {
      const __m128i w0 = _mm_load_si128(reinterpret_cast<const __m128i*>(word[0] + l));
      const __m128i w1 = _mm_load_si128(reinterpret_cast<const __m128i*>(word[1] + l));
      const __m128i q01 = _mm_unpacklo_epi32(w0, w1), q23 = _mm_unpackhi_epi32(w0, w1);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + l * stride), q01);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + (l + 1) * stride),
                       _mm_unpackhi_epi64(q01, q01));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + (l + 2) * stride), q23);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + (l + 3) * stride),
                       _mm_unpackhi_epi64(q23, q23));
    }
  }
  for (; l < lanes; ++l) StoreRun8(dst + l * stride, word[0][l] | uint64_t{word[1][l]} << 32, run);
}

// np <= 8 pixels of one image, starting at output offset `base` (n O OH OW + row-major pixel),
// written as runs of `run` >= np outputs per channel (the ones past np: 0); raw and nws start
// at the segment's first pixel.
template <class Isa>
void StoreSegment(const Int8Conv& c, int64_t base, int np, int run, int64_t ob0, int nb,
                  const int32_t* raw, const int32_t* nws) {
  const ConvGeom& g = *c.g;
  const int64_t ohw = g.oh * g.ow;
  for (int b = 0; b < nb; ++b) {
    const int64_t o0 = (ob0 + b) * kInt8Lanes;
    const int64_t lanes = std::min<int64_t>(kInt8Lanes, g.o - o0);
    if (c.mode == Epilogue::kRequant) {
      StoreBlockCodes<Isa>(c, o0, np, run, nb, b, raw, nws, c.codes + base + o0 * ohw, ohw, lanes);
      continue;
    }
    Isa::StoreInt32(c, o0, raw + b * kInt8Lanes, nb * kInt8Lanes, nws, np, run,
                    c.acc + base + o0 * ohw, ohw, lanes);
  }
}

// Stores a tile of np <= kMaxStorePixels pixels from pix0, one segment per image it touches. nws:
// nw S of the tile's pixels (Int8FieldTerms). The caller's tiles run in ascending pixel order up to
// its pixel `end`, all stored by this thread: when the next 8 pixels lie before `end` and in the
// segment's image, each channel's run is written as 8 outputs (one or two plain stores), the ones
// past the segment as 0 until the next tile overwrites them.
template <class Isa>
void StoreTileWith(const Int8Conv& c, int64_t pix0, int np, int64_t ob0, int nb, const int32_t* raw,
                   const int32_t* nws, int64_t end) {
  const ConvGeom& g = *c.g;
  const int64_t ohw = g.oh * g.ow;
  int64_t n = pix0 / ohw, r = pix0 % ohw;
  for (int s = 0; s < np; r = 0, ++n) {
    const int cnt = static_cast<int>(std::min<int64_t>(np - s, ohw - r));
    const int run =
        pix0 + s + kMaxStorePixels <= end && r + kMaxStorePixels <= ohw ? kMaxStorePixels : cnt;
    StoreSegment<Isa>(c, n * g.o * ohw + r, cnt, run, ob0, nb, raw + s * nb * kInt8Lanes, nws + s);
    s += cnt;
  }
}

// Stores a call's pixels [pix0, pix0 + npix), blocks ob .. ob + nb - 1, from raw (each pixel's
// nb x 16 sums after the previous pixel's) and nws (nw S per pixel), kMaxStorePixels at a time in
// ascending order (StoreTileWith): the common end of the int8, AMX and lut kernels' calls.
template <class Isa>
void StoreCall(const Int8Conv& c, int64_t pix0, int64_t npix, int64_t ob, int nb,
               const int32_t* raw, const int32_t* nws) {
  for (int64_t p0 = 0; p0 < npix; p0 += kMaxStorePixels) {
    const int np = static_cast<int>(std::min<int64_t>(kMaxStorePixels, npix - p0));
    StoreTileWith<Isa>(c, pix0 + p0, np, ob, nb, raw + p0 * nb * kInt8Lanes, nws + p0, pix0 + npix);
  }
}

// A call of an int8 kernel that leaves the padding out (int8conv.h): per group of up to
// `group` blocks, the sums of every pixel class (ClassifyPixels: pixels whose fields have the
// same taps inside the image) in tiles of up to `tile` (<= 8) of its pixels,
//   block(taps, np, nb, xs, ob, init, out): np pixels (fields xs) x nb blocks from ob over
//   taps, started at init[16 b ..] (StartSums), to out[p] + 16 b,
// into a buffer in pixel order; then the store, 8 neighbouring pixels at a time. (Against
// tiles of neighbouring pixels over every tap, each stored as soon as summed: on int8-vnni
// 1.6-12% faster on every padded layer measured, 7x7 to 56x56; the same without padding.)
template <class Isa, class Block>
void TileClasses(const Int8Conv& c, int64_t pix0, int64_t npix, int64_t ob0, int64_t nob, int tile,
                 int group, Block&& block) {
  constexpr int kMaxTile = 8, kMaxGroup = 4;
  alignas(64) int32_t raw[kMaxCallPixels * kMaxGroup * kInt8Lanes];
  alignas(64) int32_t init[kMaxGroup * kInt8Lanes];
  int32_t terms[kMaxCallPixels];
  Int8FieldTerms(c, pix0, npix, terms);
  const int8_t* fields[kMaxCallPixels];
  c.Fields(pix0, static_cast<int>(npix), fields);
  PixelClasses cls;
  ClassifyPixels(*c.g, pix0, static_cast<int>(npix), &cls);
  for (int64_t ob = ob0; ob < ob0 + nob; ob += group) {
    const int nb = static_cast<int>(std::min<int64_t>(group, ob0 + nob - ob));
    for (int k = 0; k < cls.count; ++k) {
      const int32_t* start = c.starts != nullptr ? c.starts->Find(cls.taps[k], ob) : nullptr;
      if (start == nullptr) {
        StartSums(c, cls.taps[k], ob, nb, init);
        start = init;
      }
      for (int i = cls.start[k]; i < cls.start[k + 1]; i += tile) {
        const int np = std::min(tile, cls.start[k + 1] - i);
        const int8_t* xs[kMaxTile];
        int32_t* out[kMaxTile];
        for (int p = 0; p < np; ++p) {
          xs[p] = fields[cls.order[i + p]];
          out[p] = raw + cls.order[i + p] * nb * kInt8Lanes;
        }
        block(cls.taps[k], np, nb, xs, ob, start, out);
      }
    }
    StoreCall<Isa>(c, pix0, npix, ob, nb, raw, terms);
  }
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_INT8CONV_STORE_H_
