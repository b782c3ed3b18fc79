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
// on one-step maps (7x7) the finish is ~40% of a call and the tiles ~30% (on training's integer
// scales the pairs finish below). Small maps with training's integer scales go to the digits
// (wgrad_amx_digits.cpp) instead (no per-sample finish); one output pixel, maps of fewer than
// kMinQuads quads and the packed path's layers run `wgrad-vnni`'s code. Measured figures:
// docs/training.md.
#include "wgrad_amx.h"

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

constexpr int64_t kMinQuads = 2;   // smaller maps: wgrad-vnni's register tiles
constexpr int64_t kItemTaps = 12;  // taps x channel vectors of a work item's float64 sums
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
//
// PairRow: lo[0 .. 16) += q_lo,0 s0 + q_lo,1 s1 and hi likewise: one tile row of 16 outputs of two
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

// Sample i of the packed block, item it's 16 input channels: taps t, t + 1 (na of them) x
// channel vectors v, v + 1 (nb) on the tiles, into buf (rows of 32 int32).
void ItemTiles(const WgradGeom& g, const AmxPacked& pk, const AmxItem& it, int64_t i, int64_t t,
               int na, int64_t v, int nb, int32_t* buf) {
  const AmxLayout& l = pk.l;
  const uint8_t* a =
      pk.xs.data() + i * l.xs_size + (t * g.c + it.group * kLanes) * l.plane + it.r * g.ow;
  const int8_t* gq = pk.gq.data() + i * l.gq_size + v * l.pq * 64;
  const TileStepsFn step = kTileSteps<true>[na - 1][nb - 1];
  step(a, g.c * l.plane, l.plane, 4 * l.kq, gq, l.pq * 64, l.steps, l.kq, buf, 2 * kLanes);
}

// Item i's samples [b0, b1) (packed in pk from b0 on), in order. acc: [KW][16][16 vb] doubles
// (dW mode), added to.
void RunItem(const WgradGeom& g, const AmxPacked& pk, const WgradOutput& out, DirectMode mode,
             const AmxItem& it, int64_t b0, int64_t b1, double* acc, int64_t width) {
  const int64_t tap_stride = kLanes * width, ci0 = it.group * kLanes;
  const int rows = static_cast<int>(std::min<int64_t>(kLanes, g.c - ci0));
  alignas(64) int32_t buf[2 * kLanes * 2 * kLanes];
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t t = 0; t < g.kw; t += 2) {
      const int na = static_cast<int>(std::min<int64_t>(2, g.kw - t));
      for (int64_t v = it.v0; v < it.v1; v += 2) {
        const int nb = static_cast<int>(std::min<int64_t>(2, it.v1 - v));
        ItemTiles(g, pk, it, b - b0, t, na, v, nb, buf);
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
        for (int64_t s = 0; s <= two; ++s) ItemTiles(g, pk, it, b + s - b0, t, na, v, nb, buf[s]);
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

}  // namespace

uint32_t WeightGradDirectAmx(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                             const WgradOutput& out, int threads) {
  if (g.P() == 1) return WeightGradDirectVnni(g, c, x, out, threads);
  if (DigitsAmxFits(g, out)) return WeightGradDigitsAmx(g, c, x, out, threads);
  if (g.PQ() < kMinQuads) return WeightGradDirectVnni(g, c, x, out, threads);
  return WeightGradAmx(g, c, x, out, threads);
}

}  // namespace dorefa
