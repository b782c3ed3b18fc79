// The shared parts of the int8 kernels (int8conv.h): packing, the output transform of a tile,
// the parallel region.
#include "int8conv.h"

#include "lut.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <vector>

#include "byte_transpose.h"
#include "cpu_features.h"
#include "int8pack.h"
#include "run_conv.h"
#include "scratch.h"
#include "thread_pool.h"
#include "work_queue.h"

namespace dorefa {
namespace {

// Work below which one more thread does not pay: ~10 us at ~100 G int8 MAC/s.
constexpr int64_t kMinMacsPerThread = int64_t{1} << 20;

#if defined(__SSE2__)
// The 16-channel groups [0, groups) of the plane's pixels [j0, j1) (src: channel 0's plane,
// stride hw between channels) into their packed pixels, a block of 16 pixels (which may span
// image rows) at a time: per group a 16 x 16 byte transpose, and the block's channel sums added
// up in vectors (16-bit per group, then 32-bit) and added to d.sums once per block. Returns the
// OR of the codes packed. A group reads 16 bytes of a channel whenever that stays before `end`
// (the input's end; bytes past j1 are not used), else copies the pixels left.
uint8_t PackGroups16(const uint8_t* src, const uint8_t* end, int64_t hw, int64_t groups, int64_t j0,
                     int64_t j1, int32_t z, const PlaneDst& d) {
  const __m128i shift = _mm_set1_epi8(static_cast<char>(z));
  const __m128i zero = _mm_setzero_si128();
  __m128i ors = zero;
  int64_t y = j0 / d.w, x = j0 % d.w;
  for (int64_t j = j0; j < j1; j += 16) {
    const int64_t m = std::min<int64_t>(16, j1 - j);
    int64_t out[16], at[16];  // pixel k's packed offset and its place in d.sums
    d.Pixels(m, &y, &x, out, at);
    __m128i s32[4] = {zero, zero, zero, zero};  // pixels 4i .. 4i + 3
    for (int64_t gi = 0; gi < groups; ++gi) {
      __m128i r[16];
      for (int i = 0; i < 16; ++i) {
        const uint8_t* s = src + (16 * gi + i) * hw + j;
        if (end - s >= 16) {
          r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
        } else {
          alignas(16) uint8_t tail[16] = {};
          std::memcpy(tail, s, static_cast<size_t>(m));
          r[i] = _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
        }
      }
      if (d.sums != nullptr) {  // channel sums of the 16 pixels: <= 16 x 255 in 16 bits
        __m128i lo = zero, hi = zero;
        for (int i = 0; i < 16; ++i) {
          lo = _mm_add_epi16(lo, _mm_unpacklo_epi8(r[i], zero));
          hi = _mm_add_epi16(hi, _mm_unpackhi_epi8(r[i], zero));
        }
        s32[0] = _mm_add_epi32(s32[0], _mm_unpacklo_epi16(lo, zero));
        s32[1] = _mm_add_epi32(s32[1], _mm_unpackhi_epi16(lo, zero));
        s32[2] = _mm_add_epi32(s32[2], _mm_unpacklo_epi16(hi, zero));
        s32[3] = _mm_add_epi32(s32[3], _mm_unpackhi_epi16(hi, zero));
      }
      Transpose16x16(r);
      uint8_t* dst = d.out + 16 * gi;
      for (int64_t k = 0; k < m; ++k) {
        ors = _mm_or_si128(ors, r[k]);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + out[k]), _mm_sub_epi8(r[k], shift));
      }
    }
    if (d.sums != nullptr) {
      alignas(16) int32_t sum[16];
      for (int i = 0; i < 4; ++i) _mm_store_si128(reinterpret_cast<__m128i*>(sum + 4 * i), s32[i]);
      for (int64_t k = 0; k < m; ++k) d.sums[at[k]] += sum[k];
    }
  }
  alignas(16) uint8_t v[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(v), ors);
  uint8_t all = 0;
  for (uint8_t b : v) all |= b;
  return all;
}
#endif

// Padded rows [yp0, yp1) of image n into xq (and the per-pixel channel sums, when wanted);
// returns the OR of the codes read. Every byte of the rows is written: padding and the extra
// channels hold code 0, stored as -z. The image rows inside the band are one run of each
// channel's plane, packed 16 channels x 16 pixels at a time.
uint8_t PackBand(const ConvGeom& g, const Int8Geom& q, const uint8_t* x, int32_t z, int64_t n,
                 int64_t yp0, int64_t yp1, uint8_t* xq, int32_t* pixsum) {
  const uint8_t zero = static_cast<uint8_t>(-z);  // code 0, shifted (mod 256)
  uint8_t* image = xq + n * q.image;
  int32_t* sums = pixsum != nullptr ? pixsum + n * g.hp * g.wp : nullptr;
  for (int64_t yp = yp0; yp < yp1; ++yp) {
    uint8_t* dst = image + yp * q.row;
    if (sums != nullptr) std::fill(sums + yp * g.wp, sums + (yp + 1) * g.wp, 0);
    if (yp < g.pad || yp >= g.pad + g.h) {
      std::memset(dst, zero, static_cast<size_t>(q.row));
      continue;
    }
    std::memset(dst, zero, static_cast<size_t>(g.pad * q.pixel));  // the right one: next row's
    for (int64_t xx = 0; xx < g.w && q.cp > g.c; ++xx)             // the channels past C, if any
      std::memset(dst + (g.pad + xx) * q.pixel + g.c, zero, static_cast<size_t>(q.cp - g.c));
  }
  const int64_t y0 = std::max<int64_t>(yp0 - g.pad, 0), y1 = std::min(yp1 - g.pad, g.h);
  if (y0 >= y1) return 0;
  const int64_t hw = g.h * g.w, j0 = y0 * g.w, j1 = y1 * g.w;
  const uint8_t* src = x + n * g.c * hw;
  PlaneDst d{image + g.pad * (q.row + q.pixel),
             g.w,
             q.row,
             q.pixel,
             g.wp,
             sums != nullptr ? sums + g.pad * (g.wp + 1) : nullptr};
  uint8_t ors = 0;
  int64_t c = 0;
  const uint8_t* end = x + g.n * g.c * hw;
#ifdef DOREFA_HAVE_X86_KERNELS
  constexpr uint32_t kBw = kAvx512F | kAvx512Bw;
  if (g.c >= 64 && (CpuFeatures() & kBw) == kBw) {
    ors |= PackGroups64Avx512(src, end, hw, g.c / 64, j0, j1, z, d);
    c = g.c / 64 * 64;
  }
#endif
#if defined(__SSE2__)
  if (g.c - c >= 16) {
    PlaneDst rest = d;
    rest.out += c;
    ors |= PackGroups16(src + c * hw, end, hw, (g.c - c) / 16, j0, j1, z, rest);
    c = g.c / 16 * 16;
  }
#endif
  for (; c < g.c; ++c) {  // contiguous reads, strided writes
    const uint8_t* s = src + c * hw;
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t yy = j / g.w, xx = j % g.w;
      ors |= s[j];
      d.out[yy * q.row + xx * q.pixel + c] = static_cast<uint8_t>(s[j] - z);
      if (d.sums != nullptr) d.sums[yy * g.wp + xx] += s[j];
    }
  }
  return ors;
}

// Padded rows per packing item: about 128 pixels of the plane (8 transposes), at least one row.
int64_t BandRows(const ConvGeom& g) {  // (an input of width 0 still has padded rows)
  return std::max<int64_t>(1, (128 + g.w - 1) / std::max<int64_t>(g.w, 1));
}

}  // namespace

uint8_t PackInt8Image(const ConvGeom& g, const uint8_t* x, int32_t z, int64_t n, uint8_t* dst) {
  ConvGeom one = g;  // image n alone: PackBand reads no byte past its end
  one.n = 1;
  return PackBand(one, Int8Geom(one), x + n * g.c * g.h * g.w, z, 0, 0, one.hp, dst, nullptr);
}

uint8_t* Int8FieldBuffer(size_t bytes) {
  static thread_local Scratch<uint8_t> buffer;
  return buffer.Get(bytes);
}

namespace {

// The signed blocks (int8conv.h; Int8Geom::has_signed) from the packed blocks, 64 bytes a row: 2 v
// - nw where a weight is (lane o < O, channel c < C, group inside the field), else 0 (the groups
// past the field stay zero). A loop the compiler vectorises, after the packing loops (a second
// store per weight inside them made the packing ~1.9x as long). (q by value: a reference to the
// packer's own would let its byte stores alias q, and the compiler reload q.cp for every
// weight: 1.4x the packing time.)
void PackSignedBlocks(const ConvGeom& g, const Int8Geom q, uint8_t* bytes) {
  if (!q.has_signed) return;
  const auto nw = static_cast<uint8_t>((1 << g.w_bits) - 1);
  const int64_t cpq = q.cp / 4;
  uint8_t* sb = bytes + q.SignedOffset();
  for (int64_t ob = 0; ob < q.ob; ++ob) {
    const int64_t lanes = std::min<int64_t>(kInt8Lanes, g.o - ob * kInt8Lanes);
    uint8_t keep[2][64];  // a group's bytes that hold weights: all its channels, C % 4 of them
    for (int k = 0; k < 64; ++k) {
      keep[0][k] = k / 4 < lanes ? 0xFF : 0;
      keep[1][k] = k / 4 < lanes && k % 4 < g.c % 4 ? 0xFF : 0;
    }
    for (int64_t j = 0; j < q.groups; ++j) {
      const uint8_t* mask = keep[g.c % 4 != 0 && j % cpq == cpq - 1];
      const uint8_t* src = bytes + (ob * q.gstride + j) * 64;
      uint8_t* dst = sb + (ob * q.gstride + j) * 64;
      for (int k = 0; k < 64; ++k) dst[k] = static_cast<uint8_t>((2 * src[k] - nw) & mask[k]);
    }
  }
}

}  // namespace

uint8_t PackWeightsInt8(const ConvGeom& g, const uint8_t* w, uint64_t* wq) {
  const Int8Geom q(g);
  auto* bytes = reinterpret_cast<uint8_t*>(wq);
  auto* wsum = reinterpret_cast<int32_t*>(bytes + q.WeightBytes());
  auto* tsum = wsum + q.ob * kInt8Lanes;  // Tsum[ob][t][lane]
  std::memset(bytes, 0, static_cast<size_t>(q.WeightWords() * 8));
  uint8_t ors = 0;
  const int64_t taps = q.taps;
  // Sums modulo 2^32: they fit int32 for codes in range (the caller's bound); out-of-range
  // codes are reported.
  if (taps == 1 && g.c % 4 == 0) {  // 1x1: each lane's 4 channels are 4 neighbouring bytes
    for (int64_t o = 0; o < g.o; ++o) {
      uint8_t* block = bytes + (o / kInt8Lanes) * q.gstride * 64 + (o % kInt8Lanes) * 4;
      const uint8_t* row = w + o * g.c;
      uint32_t sum = 0;
      for (int64_t c = 0; c < g.c; c += 4) {
        std::memcpy(block + c / 4 * 64, row + c, 4);
        sum += uint32_t{row[c]} + row[c + 1] + row[c + 2] + row[c + 3];
        ors |= row[c] | row[c + 1] | row[c + 2] | row[c + 3];
      }
      wsum[o] = tsum[o] = static_cast<int32_t>(sum);  // one tap: o / 16 * 16 + o % 16 = o
    }
    PackSignedBlocks(g, q, bytes);
    return ors;
  }
  for (int64_t o = 0; o < g.o; ++o) {
    uint8_t* block = bytes + (o / kInt8Lanes) * q.gstride * 64 + (o % kInt8Lanes) * 4;
    int32_t* ot = tsum + (o / kInt8Lanes) * taps * kInt8Lanes + o % kInt8Lanes;
    uint32_t sum = 0;
    for (int64_t t = 0; t < taps; ++t) {
      uint32_t tap = 0;
      for (int64_t c = 0; c < g.c; ++c) {
        const uint8_t v = w[(o * g.c + c) * taps + t];
        ors |= v;
        tap += v;
        const int64_t j = t * (q.cp / 4) + c / 4;
        block[j * 64 + c % 4] = v;
      }
      ot[t * kInt8Lanes] = static_cast<int32_t>(tap);
      sum += tap;
    }
    wsum[o] = static_cast<int32_t>(sum);
  }
  PackSignedBlocks(g, q, bytes);
  return ors;
}

void ClassifyPixels(const ConvGeom& g, int64_t pix0, int np, PixelClasses* out) {
  PixelClasses& k = *out;
  const auto kh = static_cast<int32_t>(g.kh), kw = static_cast<int32_t>(g.kw);
  k.start[0] = 0;
  if (g.pad == 0) {  // every field inside the image
    k.count = 1;
    k.start[1] = np;
    k.taps[0] = FieldTaps{0, kh, 0, kw};
    for (int p = 0; p < np; ++p) k.order[p] = static_cast<uint8_t>(p);
    return;
  }
  // Output columns [x0, x1) have every column tap inside the image.
  const int64_t x0 = std::min(g.ow, (g.pad + g.stride - 1) / g.stride);
  const int64_t last = g.w + g.pad - g.kw;  // the last such column starts at <= last
  const int64_t x1 = last < 0 ? x0 : std::max(x0, std::min(g.ow, last / g.stride + 1));
  const int64_t ohw = g.oh * g.ow;
  int64_t oy = pix0 % ohw / g.ow, ox = pix0 % g.ow;
  // Runs of neighbouring pixels of one class (at most 3 an output row), then each class's
  // runs in order.
  int run_at[kMaxCallPixels], run_len[kMaxCallPixels], run_cls[kMaxCallPixels];
  int runs = 0;
  k.count = 0;
  for (int p = 0; p < np;) {  // the pixels along one output row
    const int n = static_cast<int>(std::min<int64_t>(np - p, g.ow - ox));
    FieldTaps t;
    TapsInside(oy * g.stride, g.h, g.pad, kh, &t.r0, &t.r1);
    for (int i = 0; i < n;) {
      const int64_t x = ox + i;
      int m = 1;  // pixels of this class from x on: the inside columns at once
      if (x >= x0 && x < x1) {
        t.k0 = 0, t.k1 = kw;
        m = static_cast<int>(std::min<int64_t>(n - i, x1 - x));
      } else {
        TapsInside(x * g.stride, g.w, g.pad, kw, &t.k0, &t.k1);
      }
      int c = 0;
      while (c < k.count && !(k.taps[c] == t)) ++c;
      if (c == k.count) k.taps[k.count++] = t;
      run_at[runs] = p + i, run_len[runs] = m, run_cls[runs++] = c;
      i += m;
    }
    p += n;
    ox += n;
    if (ox == g.ow) {
      ox = 0;
      if (++oy == g.oh) oy = 0;
    }
  }
  int at = 0;
  for (int c = 0; c < k.count; ++c) {
    for (int r = 0; r < runs; ++r) {
      if (run_cls[r] != c) continue;
      for (int i = 0; i < run_len[r]; ++i) k.order[at++] = static_cast<uint8_t>(run_at[r] + i);
    }
    k.start[c + 1] = at;
  }
}

void StartSums(const Int8Conv& c, const FieldTaps& t, int64_t ob, int nb, int32_t* init) {
  const ConvGeom& g = *c.g;
  const int64_t lanes = nb * kInt8Lanes;
  if (c.shift == 0 || (t.r0 == 0 && t.r1 == g.kh && t.k0 == 0 && t.k1 == g.kw)) {
    std::fill(init, init + lanes, 0);
    return;
  }
  const auto z = static_cast<uint32_t>(c.shift);
  for (int b = 0; b < nb; ++b) {
    const int32_t* ts = c.tsum + (ob + b) * c.q.taps * kInt8Lanes;
    uint32_t r[kInt8Lanes] = {};
    for (int64_t kh = t.r0; kh < t.r1; ++kh)
      for (int64_t kw = t.k0; kw < t.k1; ++kw)
        for (int l = 0; l < kInt8Lanes; ++l)
          r[l] += static_cast<uint32_t>(ts[(kh * g.kw + kw) * kInt8Lanes + l]);
    for (int l = 0; l < kInt8Lanes; ++l) {
      const auto wsum = static_cast<uint32_t>(c.wsum[(ob + b) * kInt8Lanes + l]);
      init[b * kInt8Lanes + l] = static_cast<int32_t>(z * (r[l] - wsum));
    }
  }
}

void StartTable::Build(const Int8Conv& c) {
  const ConvGeom& g = *c.g;
  taps_.clear();
  lanes_ = c.q.ob * kInt8Lanes;
  if (c.shift == 0 || g.pad == 0) return;
  // The distinct ranges along one axis, over every output position.
  auto ranges = [&](int64_t outs, int64_t size, int64_t taps) {
    std::vector<std::pair<int32_t, int32_t>> out;
    for (int64_t o = 0; o < outs; ++o) {
      std::pair<int32_t, int32_t> r;
      TapsInside(o * g.stride, size, g.pad, static_cast<int32_t>(taps), &r.first, &r.second);
      if (std::find(out.begin(), out.end(), r) == out.end()) out.push_back(r);
    }
    return out;
  };
  for (const auto& [r0, r1] : ranges(g.oh, g.h, g.kh))
    for (const auto& [k0, k1] : ranges(g.ow, g.w, g.kw)) taps_.push_back(FieldTaps{r0, r1, k0, k1});
  int32_t* init = init_.Get(taps_.size() * static_cast<size_t>(lanes_));
  rows_ = init;
  for (size_t i = 0; i < taps_.size(); ++i)
    StartSums(c, taps_[i], 0, static_cast<int>(c.q.ob), init + static_cast<int64_t>(i) * lanes_);
}

// Sum of the activation codes over the receptive field of output (n, oy, ox).
int64_t Int8FieldSum(const Int8Conv& c, int64_t n, int64_t oy, int64_t ox) {
  const ConvGeom& g = *c.g;
  int64_t s = 0;
  for (int64_t r = 0; r < g.kh; ++r) {
    const int32_t* row = c.pixsum + (n * g.hp + oy * g.stride + r) * g.wp + ox * g.stride;
    for (int64_t k = 0; k < g.kw; ++k) s += row[k];
  }
  return s;
}

void Int8FieldTerms(const Int8Conv& c, int64_t pix0, int64_t np, int32_t* terms) {
  const ConvGeom& g = *c.g;
  if (c.mode == Epilogue::kAcc || c.d_sums) {
    std::fill(terms, terms + np, 0);
    return;
  }
  const auto nw = static_cast<uint32_t>((1 << g.w_bits) - 1);
  const int64_t ohw = g.oh * g.ow;
  int64_t n = pix0 / ohw, oy = pix0 % ohw / g.ow, ox = pix0 % g.ow;
  // Per run of pixels along an output row: the field's column sums (kh rows of pixsum) once,
  // then kw of them per pixel (sums modulo 2^32, as nw S is used).
  constexpr int64_t kCols = 256;
  uint32_t col[kCols];
  const int64_t most = g.kw <= kCols ? (kCols - g.kw) / g.stride + 1 : 0;
  for (int64_t p = 0; p < np;) {
    const int64_t cnt = std::min({np - p, g.ow - ox, std::max<int64_t>(most, 1)});
    if (most == 0) {  // a field wider than col: one pixel at a time
      terms[p] = static_cast<int32_t>(nw * static_cast<uint32_t>(Int8FieldSum(c, n, oy, ox)));
    } else {
      const int64_t width = (cnt - 1) * g.stride + g.kw;
      const int32_t* rows = c.pixsum + (n * g.hp + oy * g.stride) * g.wp + ox * g.stride;
      for (int64_t x = 0; x < width; ++x) col[x] = static_cast<uint32_t>(rows[x]);
      for (int64_t r = 1; r < g.kh; ++r)
        for (int64_t x = 0; x < width; ++x) col[x] += static_cast<uint32_t>(rows[r * g.wp + x]);
      for (int64_t i = 0; i < cnt; ++i) {
        uint32_t sum = 0;
        for (int64_t k = 0; k < g.kw; ++k) sum += col[i * g.stride + k];
        terms[p + i] = static_cast<int32_t>(nw * sum);
      }
    }
    p += cnt;
    if ((ox += cnt) == g.ow) {
      ox = 0;
      if (++oy == g.oh) oy = 0, ++n;
    }
  }
}

void Int8Conv::Fields(int64_t pix0, int np, const int8_t** xs) const {
  const int64_t ohw = g->oh * g->ow;
  int64_t n = pix0 / ohw, oy = pix0 % ohw / g->ow, ox = pix0 % g->ow;
  for (int p = 0; p < np; ++p) {
    xs[p] = xq + n * q.image + oy * g->stride * q.row + ox * g->stride * q.pixel;
    if (++ox == g->ow) {
      ox = 0;
      if (++oy == g->oh) oy = 0, ++n;
    }
  }
}

namespace {

// int32 outputs of more bytes than this (the whole call's) are stored with their lines
// fetched ahead (Int8Conv::prefetch): at batch 1 they stay in L2 (~1 MB a core on Zen 4).
constexpr int64_t kPrefetchOutputBytes = 1 << 20;

// An int8 kernel's batch whose packed images take more bytes than kChunkAbove is run in chunks
// of kChunkBytes (at least one image), each packed and convolved by one thread: packed all at
// once, AlexNet conv3's batch of 32 (1.7 MB) had left L2 before the tiles read it. int8-amx,
// requant, batch 32, one process: 1.09x (medians) and 1.11x (best rounds) at 1 and at 2 threads;
// int8-vnni 1.04x, int8-avx2 1.01-1.04x. Chunks of 128 KB or more gained less (two images:
// 1.07x, eight: 0.99x); below 1 MB (svhn's layers, 0.3-0.8 MB at batch 32) 0.97-1.03x, and
// with both threads inside each chunk (a barrier a chunk) 2 threads ran slower than unchunked.
constexpr int64_t kChunkAbove = 1 << 20;
constexpr int64_t kChunkBytes = 64 << 10;

// The whole convolution of the images of g in one parallel region (RunInt8Conv).
uint8_t RunImages(const Int8Kernel& kernel, const ConvGeom& g, const uint8_t* x, const uint64_t* wq,
                  const ConvOutput& out, bool prefetch, int threads) {
  static thread_local Scratch<uint8_t> xbuf;
  static thread_local Scratch<int32_t> sums;
  static thread_local Scratch<uint8_t> tbuf;
  Int8Conv c;
  c.g = &g;
  c.q = Int8Geom(g);
  const Int8Winograd* wino =
      kernel.winograd != nullptr && kernel.winograd_runs(g) ? kernel.winograd : nullptr;
  // After the last image, its rows' right padding and 16 pixels for int8-amx's direct strips
  // (and what a Winograd band reads past it).
  const int64_t slack = c.q.slack + (wino != nullptr ? WinogradExtraBytes(c.q) : 0);
  uint8_t* xq = xbuf.Get(static_cast<size_t>(g.n * c.q.image + slack));
  std::memset(xq + g.n * c.q.image, static_cast<uint8_t>(-kernel.shift(g.x_bits)),
              static_cast<size_t>(slack));
  c.xq = reinterpret_cast<const int8_t*>(xq);
  c.wq = reinterpret_cast<const uint8_t*>(wq);
  c.wsum = reinterpret_cast<const int32_t*>(c.wq + ByteWeightBytes(kernel, g));  // after them
  c.shift = kernel.shift(g.x_bits);
  static thread_local StartTable starts;
  if (kernel.tables == nullptr) {
    c.tsum = c.wsum + c.q.ob * kInt8Lanes;
    if (wino == nullptr) {  // the tiles' start sums (Winograd sums every tap)
      starts.Build(c);
      c.starts = &starts;
    }
  }
  c.mode = out.mode;
  c.acc = out.acc;
  c.prefetch = prefetch;
  c.codes = out.codes;
  if (out.mode == Epilogue::kRequant) {
    c.table = &TableOf(out.table, g.o, out.thresholds, out.t, out.direction);
  }
  uint8_t* tq = nullptr;
  if (kernel.tables != nullptr) {  // lut kernels: each slice's tables, zero tables (code 0)
    const int slices = LutSlices(g.x_bits).count;  // for the slack, then kLutSlack
    c.tslice = (4 * (g.n * c.q.image + c.q.slack) + kLutSlack + 63) / 64 * 64;
    tq = tbuf.Get(static_cast<size_t>(slices * c.tslice));
    for (int s = 0; s < slices; ++s)
      std::memset(tq + s * c.tslice + 4 * g.n * c.q.image, 0,
                  static_cast<size_t>(c.tslice - 4 * g.n * c.q.image));
    c.tq = tq;
  }
  if (kernel.tables == nullptr && c.q.has_signed)
    c.wqs = reinterpret_cast<const int8_t*>(c.wq + c.q.SignedOffset());
  const int64_t ptile = kernel.prepare != nullptr ? kernel.prepare(&c) : kernel.pix_tile;
  int32_t* pixsum = nullptr;
  if (out.mode != Epilogue::kAcc && !c.d_sums) {
    pixsum = sums.Get(static_cast<size_t>(g.n * g.hp * g.wp));
    c.pixsum = pixsum;
  }

  const int64_t macs = g.OutPixels() * g.o * g.c * g.kh * g.kw;
  threads =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, macs / kMinMacsPerThread)));
  const int64_t band = BandRows(g), bands = (g.hp + band - 1) / band;
  // Winograd: the transformed weights after the int8 ones ("int8wino").
  const auto* v =
      wino != nullptr ? reinterpret_cast<const int16_t*>(wq + c.q.WeightWords()) : nullptr;
  const int64_t pack_items = g.n * bands;
  const int64_t npix = g.OutPixels();
  const int64_t ntiles = (npix + ptile - 1) / ptile;
  // As bitconv.cpp: with few pixel tiles, also split the output channels (in whole register
  // tiles), about two items per thread; otherwise one item covers all channels of its pixels.
  int64_t ochunks = 1;
  const int64_t ob_units = (c.q.ob + kernel.ob_tile - 1) / kernel.ob_tile;
  if (threads > 1 && ntiles < 4 * threads)
    ochunks = std::min<int64_t>(ob_units, (2 * threads + ntiles - 1) / ntiles);
  const int64_t ob_per_chunk =
      std::max<int64_t>(1, (ob_units + ochunks - 1) / ochunks) * kernel.ob_tile;
  ochunks = (c.q.ob + ob_per_chunk - 1) / ob_per_chunk;
  // Winograd: bands of output tile rows, one an item.
  const Int8Winograd::Bands wbands =
      wino != nullptr ? wino->bands(g, threads) : Int8Winograd::Bands{1, 1, 0};
  const int64_t conv_items = wino != nullptr ? wbands.count : ntiles * ochunks;
  const int nt = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(threads, std::max(pack_items, conv_items))));

  HomeQueue pack_q(pack_items, nt);
  HomeQueue conv_q(conv_items, nt);
  auto worker = [&](int tid, auto&& barrier) -> uint8_t {
    uint8_t ors = 0;
    int64_t item;
    while (pack_q.Next(tid, &item)) {
      const int64_t n = item / bands, r0 = item % bands * band;
      const int64_t r1 = std::min(g.hp, r0 + band);
      ors |= PackBand(g, c.q, x, c.shift, n, r0, r1, xq, pixsum);
      if (tq != nullptr) {
        const int64_t off = n * c.q.image + r0 * c.q.row;
        kernel.tables(xq + off, (r1 - r0) * c.q.row, g.x_bits, c.tslice, tq + 4 * off);
      }
    }
    barrier();
    if (wino != nullptr) {
      while (conv_q.Next(tid, &item)) wino->band(c, v, wbands, item);
    } else {
      while (conv_q.Next(tid, &item)) {
        const int64_t oc = item / ntiles, t = item % ntiles;
        const int64_t pix0 = t * ptile, ob0 = oc * ob_per_chunk;
        kernel.run(c, pix0, std::min(ptile, npix - pix0), ob0,
                   std::min(ob_per_chunk, c.q.ob - ob0));
      }
    }
    if (kernel.done != nullptr) kernel.done();
    return ors;
  };
  return ParallelOr(nt, worker);
}

// Images [n0, n0 + count) of the convolution (RunImages on that part of the batch).
uint8_t RunPart(const Int8Kernel& kernel, const ConvGeom& g, const uint8_t* x, const uint64_t* wq,
                const ConvOutput& out, bool prefetch, int64_t n0, int64_t count, int threads) {
  ConvGeom part = g;
  part.n = count;
  ConvOutput o = out;
  const int64_t res = g.o * g.oh * g.ow;
  if (o.acc != nullptr) o.acc += n0 * res;
  if (o.codes != nullptr) o.codes += n0 * res;
  return RunImages(kernel, part, x + n0 * g.c * g.h * g.w, wq, o, prefetch, threads);
}

}  // namespace

uint8_t RunInt8Conv(const Int8Kernel& kernel, const ConvGeom& g, const uint8_t* x,
                    const uint64_t* wq, const ConvOutput& out, int threads) {
  const bool prefetch = out.acc != nullptr && 4 * g.OutPixels() * g.o > kPrefetchOutputBytes;
  const int64_t image = Int8Geom(g).image;
  if (kernel.tables == nullptr) {
    // A batch whose packed images pass kChunkAbove: chunks of kChunkBytes (at least one
    // image), each packed and convolved by one thread while its packed rows are in cache.
    const int64_t chunk = std::clamp<int64_t>(kChunkBytes / image, 1, g.n);
    const int64_t chunks = (g.n + chunk - 1) / chunk;
    if (g.n * image <= kChunkAbove || chunks < threads)
      return RunImages(kernel, g, x, wq, out, prefetch, threads);
    HomeQueue queue(chunks, threads);
    return ParallelOr(threads, [&](int tid, auto&& /*barrier*/) -> uint8_t {
      uint8_t ors = 0;
      for (int64_t i; queue.Next(tid, &i);)
        ors |= RunPart(kernel, g, x, wq, out, prefetch, i * chunk, std::min(chunk, g.n - i * chunk),
                       1);
      return ors;
    });
  }
  // lut kernels: the batch in chunks of images whose tables fit kLutTableBytes (at least one
  // image), packed and then convolved while their tables are still in L2.
  const int64_t per_image = 4 * image * LutSlices(g.x_bits).count;
  const int64_t chunk = std::clamp<int64_t>(kLutTableBytes / per_image, 1, g.n);
  uint8_t ors = 0;
  for (int64_t n0 = 0; n0 < g.n; n0 += chunk)
    ors |= RunPart(kernel, g, x, wq, out, prefetch, n0, std::min(chunk, g.n - n0), threads);
  return ors;
}

}  // namespace dorefa
