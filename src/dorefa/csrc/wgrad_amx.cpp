// AMX weight gradient (`wgrad-amx`): the direct route of wgrad_direct.h (stride 1, n_g <= 127,
// the activations read in place from their strips) with the per-sample sums on the tile unit.
//
//   S_b[o, k] = sum_p (2 c_b[o, p] - n_g) X_b[p, k],   k = (ci, r, t),
//
// TDPBUSD C, A, B: C[m][n] += sum_{i<4} u8(A[m][4q + i]) * s8(B[q][4n + i]) over the rows q of
// B, into int32 (no saturation), so
//   A (16 x 4 kq bytes): 16 input channels ci0 .. ci0 + 15 at one tap (r, t): rows of the strip
//      planes X_t[ci] from row r (wgrad_direct.h), `plane` bytes apart, kq pixel quads each;
//   B (kq x 64 bytes): kq quads of 16 output channels' gradient factors, the direct route's
//      packed vectors as they are ([quad][16 channels][4 pixels]);
//   C: S for 16 input channels x 16 output channels at that tap, summed over the map in
//      `steps` steps of kq quads (kq = ceil(PQ / steps), steps = ceil(PQ / 16): the factors
//      are padded with zero quads up to steps kq, and a step reads at most 4 kq - 1 bytes past
//      a plane's pixels, which meet zero factors).
// Tiles: C in tmm0..3 (taps t, t + 1 x channel vectors v, v + 1), A in tmm4, 5, B in tmm6, 7.
// Rows of A past the layer's channels read the next planes (or the buffer's zeroed slack):
// their sums are never used.
//
// Per sample the C tiles go to a buffer, and their sums S into the float64 sums
// acc[t][ci][o] += scale_b * double(S) (one FMA where the product is exact, else a multiply and
// an add: DirectMode), each output's samples in batch order, so the results are the direct
// route's bit for bit whatever the thread count. Work item: 16 input channels x the KW taps of
// one kernel row x up to 4 channel vectors; its float64 sums (KW x 16 x 64 doubles: 24 KB at
// KW = 3) stay in L1 while it runs a block of samples (AmxPacked). Each thread owns a range of
// channel groups and packs its own operands.
//
// Cost per sample and 16 x 16 outputs: `steps` TDPBUSD (16 cycles each), a TILESTORED (measured
// as long as a TDPBUSD), and the finish's 16 rows x (2 int32 -> float64 conversions + 2 FMA):
// on one-step maps (7x7) the finish is ~40% of a call and the tiles ~30%. Small maps with
// training's integer scales go to the digits below instead (no per-sample finish); one output
// pixel, maps of fewer than kMinQuads quads and the packed path's layers run `wgrad-vnni`'s
// code. Measured figures: docs/training.md.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "amx_tiles.h"
#include "wgrad.h"
#include "wgrad_digits.h"
#include "wgrad_direct.h"
#include "wgrad_direct_avx512.h"

namespace dorefa {
namespace {

constexpr int kLanes = 16;             // channels per A row block and per B row
constexpr int64_t kMinQuads = 2;       // smaller maps: wgrad-vnni's register tiles
constexpr int64_t kItemTaps = 12;      // taps x channel vectors of a work item's float64 sums
constexpr int64_t kGatherSlack = 128;  // bytes read past the digits' strips (DigitGather)
constexpr int64_t kSampleBlockBytes = 1 << 20;  // packed operands of a block of samples (L2)

struct AmxLayout {
  int64_t steps, kq, pq, groups, vectors, plane, strips, xs_size, gq_size;
  explicit AmxLayout(const WgradGeom& g)
      : steps((g.PQ() + 15) / 16),
        kq((g.PQ() + steps - 1) / steps),
        pq(steps * kq),
        groups((g.c + kLanes - 1) / kLanes),
        vectors((g.o + kLanes - 1) / kLanes),
        plane((g.h + 2 * g.padding) * g.ow),
        strips(g.kw * g.c * plane),
        // A rows past the channels (up to 15 planes) and quads past the map read the slack
        xs_size(strips + (groups * kLanes - g.c) * plane + 4 * pq + 64),
        gq_size(vectors * pq * 64) {}
};

// acc[i][0 .. 16 nb) += scale * double(buf row i) for the tile rows i < rows (buf as TileSteps
// writes it, one tap: rows of 32 int32; acc rows `stride` doubles apart).
template <DirectMode M>
void Finish(const int32_t* buf, int rows, int nb, double scale, double* acc, int64_t stride) {
  const __m512d s = _mm512_set1_pd(scale);
  for (int i = 0; i < rows; ++i) {
    const int32_t* src = buf + i * 2 * kLanes;
    double* dst = acc + i * stride;
    for (int h = 0; h < 2 * nb; ++h) {
      const __m512d v =
          _mm512_cvtepi32_pd(_mm256_load_si256(reinterpret_cast<const __m256i*>(src + 8 * h)));
      const __m512d old = _mm512_loadu_pd(dst + 8 * h);
      _mm512_storeu_pd(dst + 8 * h, M == DirectMode::kFma
                                        ? _mm512_fmadd_pd(s, v, old)
                                        : _mm512_add_pd(old, _mm512_mul_pd(s, v)));
    }
  }
}

// The per-sample finish on training's integer scales (wgrad_digits.h, IntScalePlan), two
// samples at a time: one VPDPWSSD adds q_lo,b S_b + q_lo,b+1 S_b+1 to 16 int32 sums from the
// two samples' tile rows packed as int16 pairs (one VPACKSSDW, one VPSHUFB), another the q_hi
// terms: 2 stores and 4 vector uops for 2 x 16 outputs, against 4 stores and 12 uops
// (conversions, FMAs) in the float64 finish, which bounds the one-step (7 x 7) maps. The
// int32 sums go to the float64 sums every plan.flush / 2 pairs and at the end of a block.
// lo[0 .. 16) += q_lo,0 s0 + q_lo,1 s1 and hi likewise: one tile row of 16 outputs of two
// samples (int32 |S| < 2^15); q: (q_1 << 16) | q_0 in every lane.
inline void PairRow(const int32_t* s0, const int32_t* s1, __m512i q_lo, __m512i q_hi, int32_t* lo,
                    int32_t* hi) {
  // per 128-bit lane VPACKSSDW gives words [s0 o0 .. o3, s1 o0 .. o3]; to (s0 o, s1 o) pairs
  const __m512i order =
      _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15));
  const __m512i w =
      _mm512_shuffle_epi8(_mm512_packs_epi32(_mm512_load_si512(s0), _mm512_load_si512(s1)), order);
  _mm512_store_si512(lo, _mm512_dpwssd_epi32(_mm512_load_si512(lo), w, q_lo));
  _mm512_store_si512(hi, _mm512_dpwssd_epi32(_mm512_load_si512(hi), w, q_hi));
}

// acc[i] += 4096 hi[i] + lo[i] (exact integers), lo and hi zeroed; n a multiple of 16.
void FlushPairs(int32_t* lo, int32_t* hi, double* acc, int64_t n) {
  const __m512d scale = _mm512_set1_pd(4096.0);
  for (int64_t i = 0; i < n; i += 16) {
    for (int64_t h = 0; h < 16; h += 8) {
      const __m512d l =
          _mm512_cvtepi32_pd(_mm256_load_si256(reinterpret_cast<const __m256i*>(lo + i + h)));
      const __m512d u =
          _mm512_cvtepi32_pd(_mm256_load_si256(reinterpret_cast<const __m256i*>(hi + i + h)));
      _mm512_storeu_pd(acc + i + h,
                       _mm512_add_pd(_mm512_loadu_pd(acc + i + h), _mm512_fmadd_pd(scale, u, l)));
    }
    _mm512_store_si512(lo + i, _mm512_setzero_si512());
    _mm512_store_si512(hi + i, _mm512_setzero_si512());
  }
}

// The strip planes of small maps (input plane <= 128 bytes, strip plane <= 64: svhn's 7 x 7
// and 9 x 9 layers), one two-source byte permute (VPERMI2B) per tap column and channel where
// the generic packer stores a masked vector per strip row: idx[t][i] is the input byte of strip
// byte i = y OW + ox, x[y - padding][ox + t - padding], and bit i of keep[t] says it is inside.
struct SmallStrips {
  bool fits;
  std::vector<__m512i> idx;
  std::vector<__mmask64> keep;
  __mmask64 in_mask, out_mask;
  explicit SmallStrips(const WgradGeom& g) {
    const int64_t hp = g.h + 2 * g.padding, in = g.h * g.w, plane = hp * g.ow;
    fits = in <= 128 && plane <= 64;
    if (!fits) return;
    in_mask = in >= 64 ? ~0ull : (1ull << in) - 1;  // of the first 64 input bytes
    out_mask = plane >= 64 ? ~0ull : (1ull << plane) - 1;
    for (int64_t t = 0; t < g.kw; ++t) {
      alignas(64) uint8_t index[64] = {};
      __mmask64 inside = 0;
      for (int64_t i = 0; i < plane; ++i) {
        const int64_t iy = i / g.ow - g.padding, ix = i % g.ow + t - g.padding;
        if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
        index[i] = static_cast<uint8_t>(iy * g.w + ix);
        inside |= 1ull << i;
      }
      idx.push_back(_mm512_load_si512(index));
      keep.push_back(inside);
    }
  }
  // The strips of one sample (wgrad_direct.h's layout): plane (t, ci) at xs + (t C + ci) stride,
  // channels [c0, c1) when c1 > 0.
  void Pack(const WgradGeom& g, int64_t stride, const uint8_t* x, uint8_t* xs, int64_t c0 = 0,
            int64_t c1 = 0) const {
    const int64_t in = g.h * g.w;
    const __mmask64 hi_mask = in > 64 ? (in >= 128 ? ~0ull : (1ull << (in - 64)) - 1) : 0;
    for (int64_t ci = c0; ci < (c1 > 0 ? c1 : g.c); ++ci) {
      const uint8_t* src = x + ci * in;
      const __m512i lo = _mm512_maskz_loadu_epi8(in_mask, src);
      const __m512i hi = _mm512_maskz_loadu_epi8(hi_mask, src + 64);
      for (int64_t t = 0; t < g.kw; ++t)
        _mm512_mask_storeu_epi8(xs + (t * g.c + ci) * stride, out_mask,
                                _mm512_maskz_permutex2var_epi8(keep[t], lo, idx[t], hi));
    }
  }
};

// Samples in a block: `fit`, within 1 .. n, even where it can be (the pairs finish).
int64_t EvenBlock(int64_t fit, int64_t n) {
  const int64_t samples = std::clamp<int64_t>(fit, 1, n);
  return samples > 1 ? samples & ~int64_t{1} : samples;
}

// A block of samples' operands, packed, then read by every work item of a thread while they are
// in its core's L2 (items over the whole batch streamed them from memory: 60 MB a call on svhn's
// 18x18 layers; blocks made one thread 1.3x faster there). Each thread packs its own: its
// channel groups' strips and every sample's gradient factors (blocks packed by all threads and
// read by all crossed between the cores' caches: two threads ran slower than one).
struct AmxPacked {
  AmxLayout l;
  DirectLayout dl;          // the same strips and vectors for the shared packers
  int64_t samples;          // per block
  PoolScratch<uint8_t> xs;  // [block][KW][C][H + 2 padding][OW] strips, then the slack (zeros)
  PoolScratch<int8_t> gq;   // [block][vectors][pq][16][4] g = 2c - n_g, zero past P
  explicit AmxPacked(const WgradGeom& g)
      : l(g),
        dl(g, kLanes),
        samples(EvenBlock(kSampleBlockBytes / (l.xs_size + l.gq_size), g.n)),
        xs(static_cast<size_t>(samples * l.xs_size)),
        gq(static_cast<size_t>(samples * l.gq_size)) {
    dl.pq = l.pq, dl.xs_size = l.xs_size, dl.gq_size = l.gq_size;
  }
};

// A work item: channel group `group` (16 input channels), kernel row r, channel vectors
// [v0, v0 + vb) (of which `vectors` exist).
struct AmxItem {
  int64_t group, r, v0, v1;
};

// Item i's samples [b0, b1) (packed in pk from b0 on), in order. acc: [KW][16][16 vb] doubles
// (dW mode), added to.
void RunItem(const WgradGeom& g, const AmxPacked& pk, const WgradOutput& out, DirectMode mode,
             const AmxItem& it, int64_t b0, int64_t b1, double* acc, int64_t width) {
  const AmxLayout& l = pk.l;
  const int64_t tap_stride = kLanes * width, ci0 = it.group * kLanes;
  const int rows = static_cast<int>(std::min<int64_t>(kLanes, g.c - ci0));
  alignas(64) int32_t buf[2 * kLanes * 2 * kLanes];
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* xs = pk.xs.data() + (b - b0) * l.xs_size;
    const int8_t* gq = pk.gq.data() + (b - b0) * l.gq_size;
    for (int64_t t = 0; t < g.kw; t += 2) {
      const int na = static_cast<int>(std::min<int64_t>(2, g.kw - t));
      const uint8_t* a = xs + (t * g.c + ci0) * l.plane + it.r * g.ow;
      for (int64_t v = it.v0; v < it.v1; v += 2) {
        const int nb = static_cast<int>(std::min<int64_t>(2, it.v1 - v));
        const TileStepsFn step = kTileSteps<true>[na - 1][nb - 1];
        step(a, g.c * l.plane, l.plane, gq + v * l.pq * 64, l.pq * 64, l.steps, l.kq, buf,
             2 * kLanes);
        for (int i = 0; i < na; ++i) {
          const int32_t* tile = buf + i * kLanes * 2 * kLanes;
          if (mode == DirectMode::kS) {
            int32_t* s = out.s + b * g.o * g.K();
            for (int ci = 0; ci < rows; ++ci)
              for (int64_t o = v * kLanes; o < std::min(g.o, (v + nb) * kLanes); ++o)
                s[o * g.K() + ((ci0 + ci) * g.kh + it.r) * g.kw + t + i] =
                    tile[ci * 2 * kLanes + o - v * kLanes];
            continue;
          }
          double* dst = acc + (t + i) * tap_stride + (v - it.v0) * kLanes;
          if (mode == DirectMode::kFma) {
            Finish<DirectMode::kFma>(tile, rows, nb, out.scale[b], dst, width);
          } else {
            Finish<DirectMode::kMulAdd>(tile, rows, nb, out.scale[b], dst, width);
          }
        }
      }
    }
  }
}

// Item it's samples [b0, b1) (packed in pk from b0 on) into its float64 sums acc
// ([KW][16][width] doubles) by the pairs finish: lo and hi ([KW][16][width] int32, zero) are
// the pairs' int32 sums, flushed into acc every plan.flush / 2 pairs and at the end (zero
// again).
void RunItemPairs(const WgradGeom& g, const AmxPacked& pk, const WgradOutput& out,
                  const AmxItem& it, int64_t b0, int64_t b1, const IntScalePlan& plan, double* acc,
                  int32_t* lo, int32_t* hi, int64_t width) {
  const AmxLayout& l = pk.l;
  const int64_t ci0 = it.group * kLanes, size = g.kw * kLanes * width;
  const int rows = static_cast<int>(std::min<int64_t>(kLanes, g.c - ci0));
  alignas(64) int32_t buf[2][2 * kLanes * 2 * kLanes] = {};  // sample b's, sample b + 1's
  int64_t pairs = 0;
  for (int64_t b = b0; b < b1; b += 2) {
    const int64_t two = b + 1 < b1 ? 1 : 0;  // else sample b + 1's q is 0
    const auto q0 = static_cast<int32_t>(out.scale[b]);
    const auto q1 = two ? static_cast<int32_t>(out.scale[b + 1]) : 0;
    const __m512i q_lo = _mm512_set1_epi32(((q1 & 4095) << 16) | (q0 & 4095));
    const __m512i q_hi = _mm512_set1_epi32(((q1 >> 12) << 16) | (q0 >> 12));
    for (int64_t t = 0; t < g.kw; t += 2) {
      const int na = static_cast<int>(std::min<int64_t>(2, g.kw - t));
      for (int64_t v = it.v0; v < it.v1; v += 2) {
        const int nb = static_cast<int>(std::min<int64_t>(2, it.v1 - v));
        for (int64_t s = 0; s <= two; ++s) {
          const uint8_t* a =
              pk.xs.data() + (b + s - b0) * l.xs_size + (t * g.c + ci0) * l.plane + it.r * g.ow;
          const int8_t* gq = pk.gq.data() + (b + s - b0) * l.gq_size + v * l.pq * 64;
          kTileSteps<true>[na - 1][nb - 1](a, g.c* l.plane, l.plane, gq, l.pq* 64, l.steps, l.kq,
                                           buf[s], 2 * kLanes);
        }
        for (int i = 0; i < na; ++i)
          for (int ci = 0; ci < rows; ++ci)
            for (int h = 0; h < nb; ++h) {
              const int64_t row = (i * kLanes + ci) * 2 * kLanes + h * kLanes;
              const int64_t at = ((t + i) * kLanes + ci) * width + (v - it.v0 + h) * kLanes;
              PairRow(buf[0] + row, buf[1] + row, q_lo, q_hi, lo + at, hi + at);
            }
      }
    }
    if (++pairs == plan.flush / 2) FlushPairs(lo, hi, acc, size), pairs = 0;
  }
  FlushPairs(lo, hi, acc, size);
}

// Item i's float64 sums to dW.
void WriteItem(const WgradGeom& g, const WgradOutput& out, const AmxItem& it, const double* acc,
               int64_t width) {
  const int64_t ci0 = it.group * kLanes, rows = std::min<int64_t>(kLanes, g.c - ci0);
  for (int64_t o = it.v0 * kLanes; o < std::min(g.o, it.v1 * kLanes); ++o)
    for (int64_t ci = 0; ci < rows; ++ci)
      out.Write(o * g.K() + ((ci0 + ci) * g.kh + it.r) * g.kw,
                acc + ci * width + o - it.v0 * kLanes, g.kw, kLanes * width);
}

uint32_t WeightGradAmx(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                       const WgradOutput& out, int threads) {
  const AmxLayout l(g);
  const SmallStrips small(g);
  const DirectMode mode = out.s != nullptr              ? DirectMode::kS
                          : DirectExactProducts(g, out) ? DirectMode::kFma
                                                        : DirectMode::kMulAdd;
  const IntScalePlan ints = PlanIntScales(g, out);
  // Channel vectors per item: its float64 sums, KW x 16 x 16 vb doubles, in L1 (24 KB at KW 3)
  const int64_t vb = std::clamp<int64_t>(kItemTaps / g.kw, 1, 4);
  const int64_t blocks = (l.vectors + vb - 1) / vb, per_group = g.kh * blocks;
  const int64_t width = vb * kLanes, item_size = g.kw * kLanes * width;
  // Each part (a thread) takes a range of channel groups and runs the batch on its own.
  const int64_t parts = std::clamp<int64_t>(threads, 1, l.groups);
  std::atomic<uint32_t> ors{0};
  const AmxTileConfig cfg(l.kq);
  ParallelForOrThrow(static_cast<int>(parts), parts, [&](int64_t part_begin, int64_t part_end) {
    for (int64_t part = part_begin; part < part_end; ++part) {
      const int64_t g0 = part * l.groups / parts, g1 = (part + 1) * l.groups / parts;
      const int64_t c0 = g0 * kLanes, c1 = std::min(g.c, g1 * kLanes);
      std::vector<AmxItem> items;
      for (int64_t i = g0 * per_group; i < g1 * per_group; ++i) {
        const int64_t v0 = (i % blocks) * vb;
        items.push_back(
            {i / per_group, (i % per_group) / blocks, v0, std::min(l.vectors, v0 + vb)});
      }
      std::vector<double> acc(
          mode == DirectMode::kS ? 0 : static_cast<size_t>(item_size) * items.size(), 0.0);
      AmxPacked pk(g);
      PoolScratch<int32_t> lohi(static_cast<size_t>(ints.flush > 0 ? 2 * item_size : 0));
      if (ints.flush > 0) std::fill(lohi.data(), lohi.data() + 2 * item_size, 0);
      uint32_t mine = 0;
      for (int64_t b0 = 0; b0 < g.n; b0 += pk.samples) {
        const int64_t b1 = std::min(g.n, b0 + pk.samples);
        for (int64_t b = b0; b < b1; ++b) {
          const uint8_t* cb = c + b * g.o * g.P();
          const uint8_t* xb = x + b * g.c * g.h * g.w;
          uint8_t* xs = pk.xs.data() + (b - b0) * l.xs_size;
          Avx512DirectPack::PackGrads(g, pk.dl, cb, pk.gq.data() + (b - b0) * l.gq_size);
          if (small.fits) {
            small.Pack(g, l.plane, xb, xs, c0, c1);
          } else {
            PackDirectInput<Avx512DirectPack>(g, pk.dl, xb, xs, l.plane, c0, c1);
          }
          std::memset(xs + l.strips, 0, static_cast<size_t>(l.xs_size - l.strips));
          if (part == 0) {  // the codes' OR (for the callers' range checks), once
            mine |= uint32_t{OrBytes(cb, g.o * g.P())};
            mine |= uint32_t{OrBytes(xb, g.c * g.h * g.w)} << 8;
          }
        }
        _tile_loadconfig(&cfg);
        for (size_t i = 0; i < items.size(); ++i) {
          double* sums = acc.data() + i * item_size;
          if (ints.flush > 0) {
            RunItemPairs(g, pk, out, items[i], b0, b1, ints, sums, lohi.data(),
                         lohi.data() + item_size, width);
          } else {
            RunItem(g, pk, out, mode, items[i], b0, b1, sums, width);
          }
        }
        _tile_release();
      }
      if (mode != DirectMode::kS)
        for (size_t i = 0; i < items.size(); ++i)
          WriteItem(g, out, items[i], acc.data() + i * item_size, width);
      ors.fetch_or(mine);
    }
  });
  return ors.load();
}

// Small maps by the scales' digits (wgrad_digits.h's plan over N P terms): the batch and the
// map are one sum, e = b P + p, so no sample pads a tile step of its own:
//
//   dW[o, k] = sum_j beta^j T_j[o, k],   T_j[o, k] = sum_e g[o, e] (d_{b(e) j} X[e, k]),
//
// A_j (16 columns k x 64 e per tile row block): the strips' runs of each sample, one after the
// other, times the sample's digit j (<= 255: u8); B: g = 2c - n_g as [e quad][16 channels][4]
// (0 past E = N P). Work item: 32 columns k (A_j of every digit built once, in L2), then per
// pair of channel vectors and digit, 4 C tiles over all E, and beta^j T_j added to float64 sums
// exactly (integers below 2^53). A sample costs D P / 64 tile steps instead of
// ceil(PQ / 16) steps, their tile stores and the per-sample finish.
struct DigitOperands {
  int64_t e_count, steps, width, vectors, plane;
  PoolScratch<int8_t> g;     // [vectors][width / 4][16][4]
  PoolScratch<uint8_t> xs;   // strips [KW][C][N][plane]: a column's runs of all samples in a row
  std::vector<int64_t> col;  // [K] offset of column k's run in sample 0's strips
  DigitOperands(const WgradGeom& g0, const DirectLayout& l)
      : e_count(g0.n * g0.P()),
        steps((e_count + 63) / 64),
        width(steps * 64),
        vectors((g0.o + kLanes - 1) / kLanes),
        plane(l.plane),
        g(static_cast<size_t>(vectors * width * kLanes)),
        xs(static_cast<size_t>(g0.kw * g0.c * g0.n * plane + kGatherSlack)),
        col(static_cast<size_t>(g0.K())) {
    int64_t k = 0;
    for (int64_t ci = 0; ci < g0.c; ++ci)
      for (int64_t r = 0; r < g0.kh; ++r)
        for (int64_t t = 0; t < g0.kw; ++t) col[k++] = (t * g0.c + ci) * g0.n * plane + r * g0.ow;
    std::memset(xs.data() + g0.kw * g0.c * g0.n * plane, 0, kGatherSlack);
  }
};

// Channel vector v's gradient factors over all e: 16 rows of e bytes (c's rows of every sample,
// transformed), then 16 x 16 transposes of 4-byte quads.
void PackDigitGrads(const WgradGeom& g, const uint8_t* c, int64_t v, DigitOperands& op) {
  const int64_t p_count = g.P();
  const int8_t ng = static_cast<int8_t>((1 << g.g_bits) - 1);
  std::vector<int8_t> rows(static_cast<size_t>(kLanes * op.width), int8_t{0});
  const __m512i ngv = _mm512_set1_epi8(ng);
  for (int i = 0; i < kLanes && v * kLanes + i < g.o; ++i) {
    int8_t* row = rows.data() + i * op.width;
    for (int64_t b = 0; b < g.n; ++b) {
      const uint8_t* src = c + (b * g.o + v * kLanes + i) * p_count;
      for (int64_t p0 = 0; p0 < p_count; p0 += 64) {
        const __mmask64 m = ByteSpan(p0, p_count);
        const __m512i x = _mm512_maskz_loadu_epi8(m, src + p0);
        _mm512_mask_storeu_epi8(row + b * p_count + p0, m,
                                _mm512_sub_epi8(_mm512_add_epi8(x, x), ngv));
      }
    }
  }
  for (int64_t q0 = 0; q0 < op.width / 4; q0 += 16) {
    __m512i r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(rows.data() + i * op.width + q0 * 4);
    Transpose16Dwords(r);
    for (int j = 0; j < 16; ++j)
      _mm512_storeu_si512(op.g.data() + (v * op.width / 4 + q0 + j) * 64, r[j]);
  }
}

// The samples a 64-byte step of e can touch, and whether the gather below serves the layer:
// their codes' table slots (n_a + 1 each) within 64 bytes, and their bytes within the 128
// bytes read from the strips (the runs of consecutive samples are a plane apart).
bool DigitGatherFits(const WgradGeom& g) {
  const int64_t p_count = g.P(), span = (63 + p_count - 1) / p_count + 1;
  const int64_t gap = (g.h + 2 * g.padding) * g.ow - p_count;
  return span * (int64_t{1} << g.a_bits) <= 64 && 63 + (span - 1) * gap < 128;
}

// Per 64-byte step v of e, what every column's gather needs (the same for all columns): the
// window of the strips it reads (off[v] from the column's run of sample 0; 128 bytes), each
// lane's byte in it (idx), the lane's sample slot times n_a + 1 (slot), the lanes inside E,
// and per digit j the table of x d_bj for each slot's sample b and code x.
struct DigitGather {
  std::vector<int64_t> off;
  std::vector<__mmask64> inside;
  PoolScratch<uint8_t> idx, slot, table;  // [steps][64], [steps][64], [D][steps][64]
  DigitGather(const WgradGeom& g, const DigitOperands& op, int digits,
              const std::vector<uint8_t>& digit)
      : off(static_cast<size_t>(op.steps)),
        inside(static_cast<size_t>(op.steps)),
        idx(static_cast<size_t>(op.width)),
        slot(static_cast<size_t>(op.width)),
        table(static_cast<size_t>(digits * op.width)) {
    const int64_t p_count = g.P(), codes = int64_t{1} << g.a_bits;
    std::memset(idx.data(), 0, static_cast<size_t>(op.width));
    std::memset(slot.data(), 0, static_cast<size_t>(op.width));
    std::memset(table.data(), 0, static_cast<size_t>(digits * op.width));
    for (int64_t v = 0; v < op.steps; ++v) {
      const int64_t e0 = v * 64, b0 = e0 / p_count;
      off[v] = b0 * op.plane + (e0 - b0 * p_count);
      inside[v] = ByteSpan(e0, op.e_count);
      for (int64_t i = 0; i < 64 && e0 + i < op.e_count; ++i) {
        const int64_t e = e0 + i, b = e / p_count;
        idx.data()[e] = static_cast<uint8_t>(b * op.plane + (e - b * p_count) - off[v]);
        slot.data()[e] = static_cast<uint8_t>((b - b0) * codes);
        for (int j = 0; j < digits; ++j)
          for (int64_t x = 0; x < codes; ++x)
            table.data()[j * op.width + e0 + (b - b0) * codes + x] =
                static_cast<uint8_t>(x * digit[j * g.n + b]);  // <= 255 for codes <= n_a
      }
    }
  }
};

// A_j of columns [k0, k0 + 32) for every digit: a[j][i][e] (rows `width` bytes), 0 past E and
// for columns past K. Per 64 bytes of e: the 128 bytes of the interleaved strips that hold the
// runs of the samples they span, one VPERMI2B to the lanes, the slot added, and per digit one
// VPERMB from its table and an aligned store. (Merging each sample's run by masked loads and
// multiplying by the digits took 3x longer: instructions; reading each sample's own strip
// buffer, 13 KB apart, cost more again.)
void PackDigitColumns(const WgradGeom& g, const DigitOperands& op, const DigitGather& gt,
                      int digits, int64_t k0, uint8_t* a) {
  const int64_t rows = 2 * kLanes, plane_bytes = rows * op.width;
  for (int64_t i = 0; i < rows; ++i) {
    uint8_t* row = a + i * op.width;
    if (k0 + i >= g.K()) {
      for (int j = 0; j < digits; ++j)
        std::memset(row + j * plane_bytes, 0, static_cast<size_t>(op.width));
      continue;
    }
    const uint8_t* runs = op.xs.data() + op.col[k0 + i];
    for (int64_t v = 0; v < op.steps; ++v) {
      const uint8_t* w = runs + gt.off[v];
      const __m512i x = _mm512_maskz_permutex2var_epi8(gt.inside[v], _mm512_loadu_si512(w),
                                                       _mm512_load_si512(gt.idx.data() + v * 64),
                                                       _mm512_loadu_si512(w + 64));
      const __m512i id = _mm512_add_epi8(x, _mm512_load_si512(gt.slot.data() + v * 64));
      for (int j = 0; j < digits; ++j)
        _mm512_store_si512(row + j * plane_bytes + v * 64,
                           _mm512_permutexvar_epi8(
                               id, _mm512_load_si512(gt.table.data() + j * op.width + v * 64)));
    }
  }
}

uint32_t WeightGradDigitsAmx(const WgradGeom& g, const DigitPlan& plan, const uint8_t* c,
                             const uint8_t* x, const WgradOutput& out, int threads) {
  const DirectLayout l(g, kLanes);
  DigitOperands op(g, l);
  const SmallStrips small(g);
  struct None {};
  const uint32_t ors = PackSamples<None>(threads, g.n, [&](int64_t b, None&) {
    const uint8_t* xb = x + b * g.c * g.h * g.w;
    const int64_t stride = g.n * op.plane;  // samples interleaved: reads in address order
    if (small.fits) {
      small.Pack(g, stride, xb, op.xs.data() + b * op.plane);
    } else {
      PackDirectInput<Avx512DirectPack>(g, l, xb, op.xs.data() + b * op.plane, stride);
    }
    return uint32_t{OrBytes(c + b * g.o * g.P(), g.o * g.P())} |
           uint32_t{OrBytes(xb, g.c * g.h * g.w)} << 8;
  });
  ParallelForOrThrow(threads, op.vectors, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) PackDigitGrads(g, c, v, op);
  });
  const std::vector<uint8_t> digit = ScaleDigits(g, plan, out);
  const DigitGather gather(g, op, plan.digits, digit);
  std::vector<double> weight(static_cast<size_t>(plan.digits), 1.0);
  for (int j = 1; j < plan.digits; ++j) weight[j] = weight[j - 1] * static_cast<double>(plan.base);
  const int64_t pairs = (g.K() + 2 * kLanes - 1) / (2 * kLanes);
  const int64_t plane_bytes = 2 * kLanes * op.width;
  const AmxTileConfig cfg(16);
  ParallelForOrThrow(threads, pairs, [&](int64_t begin, int64_t end) {
    PoolScratch<uint8_t> a(static_cast<size_t>(plan.digits * plane_bytes));
    alignas(64) int32_t buf[2 * kLanes * 2 * kLanes];
    std::vector<double> acc(static_cast<size_t>(4 * kLanes * kLanes));
    _tile_loadconfig(&cfg);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t k0 = pair * 2 * kLanes, nk = std::min<int64_t>(2 * kLanes, g.K() - k0);
      PackDigitColumns(g, op, gather, plan.digits, k0, a.data());
      const int na = nk > kLanes ? 2 : 1;
      for (int64_t v = 0; v < op.vectors; v += 2) {
        const int nb = static_cast<int>(std::min<int64_t>(2, op.vectors - v));
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int j = 0; j < plan.digits; ++j) {
          const TileStepsFn step = kTileSteps<true>[na - 1][nb - 1];
          step(a.data() + j * plane_bytes, kLanes * op.width, op.width,
               op.g.data() + v * op.width * kLanes, op.width * kLanes, op.steps, 16, buf,
               2 * kLanes);
          for (int i = 0; i < na; ++i)
            Finish<DirectMode::kFma>(buf + i * kLanes * 2 * kLanes, kLanes, nb, weight[j],
                                     acc.data() + i * kLanes * 2 * kLanes, 2 * kLanes);
        }
        for (int64_t o = v * kLanes; o < std::min(g.o, (v + nb) * kLanes); ++o)
          out.Write(o * g.K() + k0, acc.data() + o - v * kLanes, nk, 2 * kLanes);
      }
    }
    _tile_release();
  });
  return ors;
}

}  // namespace

uint32_t WeightGradDirectAmx(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                             const WgradOutput& out, int threads) {
  if (g.P() == 1) return WeightGradDirectVnni(g, c, x, out, threads);
  // The digits where their D P / 64 tile steps a sample cost less than the per-sample route's
  // ceil(PQ / 16) steps, its tile stores and its finish (together ~1 step more: measured, the
  // digits were faster at 7 x 7 -> 5 x 5, D P / 64 = 1.6, and slower at 7 x 7, 3.1).
  const DigitPlan plan = PlanScaleDigits(g, out, g.n * g.P());
  if (plan.digits > 0 && plan.digits * g.P() < 64 * (AmxLayout(g).steps + 1) && DigitGatherFits(g))
    return WeightGradDigitsAmx(g, plan, c, x, out, threads);
  if (g.PQ() < kMinQuads) return WeightGradDirectVnni(g, c, x, out, threads);
  return WeightGradAmx(g, c, x, out, threads);
}

}  // namespace dorefa
