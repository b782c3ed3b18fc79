// AVX-512 kernel (F + BW + VPOPCNTDQ): register tile of 8 output pixels x 24 output channels.
//
// Inner step, per 64-bit activation word j of pixel p and plane m: broadcast it to all 8
// lanes, AND with word j of 8 output channels' plane k (one zmm of the lane-interleaved
// weights), VPOPCNTQ, add to that (p, channel-block) accumulator. Each weight load is reused
// by 8 pixels and each broadcast by 3 channel blocks; the loop body is 24 x (AND, POPCNT,
// ADD), which is what ports 0 and 5 can retire: ~1.5 cycles per 512 bit-MACs. 24 accumulators
// + 3 weight vectors + 1 broadcast fill 28 of the 32 zmm registers; measured against 8 x 16
// (the previous tile), 16 x 8, 12 x 16, 6 x 32 and 4 x 32 in benchmarks/bench_kernels.py's
// setting, 8 x 24 was fastest (+2-4% over 8 x 16 on AlexNet conv3; docs/kernels.md).
// Planes combine by Horner's rule over their weight e = m + k, highest first:
// cnt = 2 * cnt + sum_{m + k = e} popcounts, so one set of accumulators serves all planes.
//
// Results leave the registers with one lane per output channel, but the output is
// (N, O, OH, OW): a channel's pixels are contiguous. For 8 consecutive pixels of one image the
// epilogue narrows and transposes each 8-channel block with two-source permutes (VPERMT2D: 4 to
// narrow, 8 to transpose, per 64 outputs) into "channel pair" vectors of 2 channels x 8 pixels
// of int32, in which the signed transform and the threshold compares are one instruction per
// 16 outputs, and every channel's 8 results are one store. (The earlier VPMOVQD + unpack
// transpose needed ~80 port-5 uops per 8 x 16 tile, where VPOPCNTQ runs too; the permutes need
// 24, though in A/B runs this alone made no measurable difference.)
//
// Loop order: a call covers up to kMacroP output pixels; channel-block groups are the outer
// loop and 8-pixel tiles the inner one, so a group's weights stay in L1 while the macro tile's
// activation words (also L1-sized) are swept once per group.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

#include "bitconv.h"
#include "bitpack.h"
#include "requant_avx512.h"

namespace dorefa {
namespace {

// The register tile (the "8x24" of its name in the kernel table). To try another, change these
// two and A/B the two builds with benchmarks/bench_ab.py.
constexpr int kTileP = 8;  // output pixels per register tile
constexpr int kTileQ = 3;  // 8-channel blocks per register tile
// Output pixels per call: the L1 block of activations. 128 pixels of a 256-channel 3x3 layer
// take ~11 KB of packed activations, with ~7 KB of weights per channel group (64 and 256
// measured within 1% of it on AlexNet conv3).
constexpr int kMacroP = 128;

// VPERMT2D index vectors of the epilogue (see ToChannelPairs).
struct PermIdx {
  __m512i narrow, lo4, hi4, pair0, pair1;
};

// narrow: the low dwords of 8 qwords of a, then of b. lo4 / hi4: from rows (0, 1) in a and
// rows (2, 3) in b (each row 8 channels), channels 0..3 / 4..7 as [c][r], position 4c + r.
// pair0 / pair1: from [c][r] of rows 0..3 in a and rows 4..7 in b (4 channels each), channels
// (0, 1) / (2, 3) as [c][r] with r = 0..7, position 8c + r. (An index >= 16 selects b.)
alignas(64) constexpr int32_t kPermNarrow[16] = {0,  2,  4,  6,  8,  10, 12, 14,
                                                 16, 18, 20, 22, 24, 26, 28, 30};
alignas(64) constexpr int32_t kPermLo4[16] = {0, 8,  16, 24, 1, 9,  17, 25,
                                              2, 10, 18, 26, 3, 11, 19, 27};
alignas(64) constexpr int32_t kPermHi4[16] = {4, 12, 20, 28, 5, 13, 21, 29,
                                              6, 14, 22, 30, 7, 15, 23, 31};
alignas(64) constexpr int32_t kPermPair0[16] = {0, 1, 2, 3, 16, 17, 18, 19,
                                                4, 5, 6, 7, 20, 21, 22, 23};
alignas(64) constexpr int32_t kPermPair1[16] = {8,  9,  10, 11, 24, 25, 26, 27,
                                                12, 13, 14, 15, 28, 29, 30, 31};

inline PermIdx MakePermIdx() {
  return {_mm512_load_si512(kPermNarrow), _mm512_load_si512(kPermLo4), _mm512_load_si512(kPermHi4),
          _mm512_load_si512(kPermPair0), _mm512_load_si512(kPermPair1)};
}

// total[p] (p = 0..7): int64 lanes = 8 channels of pixel p (values fit int32). Returns
// r[i] (i = 0..3) = int32 [channel 2i: pixels 0..7 | channel 2i + 1: pixels 0..7].
// 4 narrowing + 8 transposing permutes.
inline void ToChannelPairs(const PermIdx& ix, const __m512i (&total)[8], __m512i (&r)[4]) {
  __m512i n[4];  // n[j] = int32 [pixel 2j: 8 channels | pixel 2j + 1: 8 channels]
  for (int j = 0; j < 4; ++j)
    n[j] = _mm512_permutex2var_epi32(total[2 * j], ix.narrow, total[2 * j + 1]);
  // Channels 0..3 / 4..7 of pixels 0..3 (from n0, n1) and of pixels 4..7 (from n2, n3).
  const __m512i a0 = _mm512_permutex2var_epi32(n[0], ix.lo4, n[1]);
  const __m512i a1 = _mm512_permutex2var_epi32(n[0], ix.hi4, n[1]);
  const __m512i b0 = _mm512_permutex2var_epi32(n[2], ix.lo4, n[3]);
  const __m512i b1 = _mm512_permutex2var_epi32(n[2], ix.hi4, n[3]);
  r[0] = _mm512_permutex2var_epi32(a0, ix.pair0, b0);
  r[1] = _mm512_permutex2var_epi32(a0, ix.pair1, b0);
  r[2] = _mm512_permutex2var_epi32(a1, ix.pair0, b1);
  r[3] = _mm512_permutex2var_epi32(a1, ix.pair1, b1);
}

// Requant of one channel pair: d = int32 D of [channel 2i: 8 pixels | channel 2i + 1: 8
// pixels] (pair = blk * 4 + i); returns the 16 codes #{j : s * D > u_j} as bytes in that order.
inline __m128i PairCodes(const Epilogue& ep, int64_t pair, __m512i d) {
  if (ep.table != nullptr) {  // many thresholds: a search per output (requant_table.h)
    alignas(64) int32_t dv[2 * kLanes];
    alignas(16) uint8_t cv[2 * kLanes];
    _mm512_store_si512(dv, d);
    RequantChannelAvx512(*ep.table, 2 * pair, dv, kLanes, cv);
    RequantChannelAvx512(*ep.table, 2 * pair + 1, dv + kLanes, kLanes, cv + kLanes);
    return _mm_load_si128(reinterpret_cast<const __m128i*>(cv));
  }
  const __m512i sd = _mm512_mask_sub_epi32(d, ep.neg[pair], _mm512_setzero_si512(), d);
  if (ep.rows != nullptr) {  // t < 16: branchless binary search over the pair's sorted rows
    static_assert(kSearchRow == 16, "one zmm per row");
    const __m512i ra = _mm512_loadu_si512(ep.rows + 2 * pair * kSearchRow);
    const __m512i rb = _mm512_loadu_si512(ep.rows + (2 * pair + 1) * kSearchRow);
    const __m512i half = _mm512_set_epi32(16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512i pos = _mm512_setzero_si512();  // #{j : sd > u_j} among the slots passed
    for (int step = 8; step >= 1; step /= 2) {
      const __m512i at = _mm512_add_epi32(pos, _mm512_add_epi32(half, _mm512_set1_epi32(step - 1)));
      const __mmask16 gt = _mm512_cmpgt_epi32_mask(sd, _mm512_permutex2var_epi32(ra, at, rb));
      pos = _mm512_mask_add_epi32(pos, gt, pos, _mm512_set1_epi32(step));
    }
    return _mm512_cvtepi32_epi8(pos);
  }
  const int32_t* u = ep.u + pair * ep.t * 2 * kLanes;
  const __m512i one = _mm512_set1_epi32(1);
  __m512i code = _mm512_setzero_si512();
  for (int64_t j = 0; j < ep.t; ++j) {
    const __mmask16 gt = _mm512_cmpgt_epi32_mask(sd, _mm512_loadu_si512(u + j * 2 * kLanes));
    code = _mm512_mask_add_epi32(code, gt, code, one);
  }
  return _mm512_cvtepi32_epi8(code);
}

// Epilogue of 8 consecutive output pixels and one 8-channel block: t8[p] = acc of pixel p,
// ns = int32 [nw * S of pixels 0..7] twice. Pixels 0..k-1 are consecutive outputs from out0 of
// one image, pixels k..7 consecutive from out1 + k of the next (k = 8: one image, out1 unused);
// the two runs are written with masked stores. Compiled per mode, with the Epilogue's fields
// in locals (see FinishFull).
template <Epilogue::Mode kMode>
inline void Finish8(const ConvGeom& g, const PermIdx& ix, const __m512i (&t8)[8], __m512i ns,
                    int64_t out0, int64_t out1, int k, int64_t blk, int32_t* acc,
                    const Epilogue& ep) {
  const int64_t ohw = g.oh * g.ow;
  const int64_t obase = blk * kLanes;
  const int64_t nlanes = std::min<int64_t>(kLanes, g.o - obase);
  const __mmask8 m0 = static_cast<__mmask8>((1u << k) - 1), m1 = static_cast<__mmask8>(~m0);
  const Epilogue e = ep;
  __m512i r[4];
  ToChannelPairs(ix, t8, r);
  for (int i = 0; i < 4; ++i) {
    // D = 2 * acc - nw * S; int32 wrap-around in between is harmless: D itself fits.
    if constexpr (kMode != Epilogue::kAcc) {
      r[i] = _mm512_sub_epi32(_mm512_add_epi32(r[i], r[i]), ns);
    }
    __m128i bytes = _mm_setzero_si128();
    if constexpr (kMode == Epilogue::kRequant) bytes = PairCodes(e, blk * (kLanes / 2) + i, r[i]);
    for (int h = 0; h < 2; ++h) {  // the pair's two channels: low and high half of r[i]
      const int64_t c = 2 * i + h;
      if (c >= nlanes) break;
      const int64_t off = (obase + c) * ohw;
      if constexpr (kMode == Epilogue::kRequant) {
        const __m128i b = h == 0 ? bytes : _mm_bsrli_si128(bytes, 8);
        if (k == 8) {
          _mm_storel_epi64(reinterpret_cast<__m128i*>(e.codes + out0 + off), b);
        } else {
          _mm_mask_storeu_epi8(e.codes + out0 + off, m0, b);
          _mm_mask_storeu_epi8(e.codes + out1 + off, m1, b);
        }
      } else {
        const __m256i v =
            h == 0 ? _mm512_castsi512_si256(r[i]) : _mm512_extracti64x4_epi64(r[i], 1);
        if (k == 8) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + out0 + off), v);
        } else {
          _mm256_mask_storeu_epi32(acc + out0 + off, m0, v);
          _mm256_mask_storeu_epi32(acc + out1 + off, m1, v);
        }
      }
    }
  }
}

// Epilogue of one pixel and one 8-channel block, lane by lane (tails, image boundaries).
inline void FinishLanes(const ConvGeom& g, __m512i total, int64_t s, int64_t out, int64_t blk,
                        int32_t* acc, const Epilogue& ep) {
  const int64_t ohw = g.oh * g.ow;
  const int64_t nw = (int64_t{1} << g.w_bits) - 1;
  alignas(64) int64_t lanes[kLanes];
  _mm512_store_si512(reinterpret_cast<__m512i*>(lanes), total);
  const int64_t nlanes = std::min<int64_t>(kLanes, g.o - blk * kLanes);
  for (int64_t lane = 0; lane < nlanes; ++lane) {
    const int64_t o = blk * kLanes + lane, at = out + o * ohw;
    int64_t v = lanes[lane];
    if (ep.mode != Epilogue::kAcc) v = 2 * v - nw * s;
    if (ep.mode == Epilogue::kRequant) {
      if (ep.table != nullptr) {
        ep.codes[at] = RequantCode(*ep.table, o, static_cast<int32_t>(v));
        continue;
      }
      const int64_t pair = o / 2, k = (o % 2) * kLanes;
      const int64_t sd = (ep.neg[pair] >> k) & 1 ? -v : v;
      int code = 0;
      for (int64_t j = 0; j < ep.t; ++j)
        code += sd > (ep.rows != nullptr ? ep.rows[o * kSearchRow + j]
                                         : ep.u[(pair * ep.t + j) * 2 * kLanes + k]);
      ep.codes[at] = static_cast<uint8_t>(code);
    } else {
      acc[at] = static_cast<int32_t>(v);
    }
  }
}

// How far ahead of its stores FinishFull prefetches an int32 output row: 128 bytes.
constexpr int64_t kPrefetchAhead = 32;

// The common epilogue, all in registers: 8 consecutive output pixels of one image from out0,
// Q full 8-channel blocks from ob. Kept apart from the general Finish8 (tails, image
// boundaries) and compiled per mode, with the Epilogue in a local copy: the stores may alias
// a `const Epilogue&` (uint8 codes alias anything), so GCC reloaded its fields after every
// store, and with the mode a run-time branch it spilled the 24 accumulators and the channel
// pairs to the stack. The whole epilogue had cost 8-11% of an AlexNet conv3 call (against a
// variant that only XORs the accumulators into one store); compiled this way, 3-5%.
template <int Q, Epilogue::Mode kMode>
inline void FinishFull(const ConvGeom& g, const __m512i (&total)[8][Q], __m512i ns, int64_t out0,
                       int64_t ob, int32_t* acc, const Epilogue& ep) {
  const int64_t ohw = g.oh * g.ow;
  const Epilogue e = ep;
  const PermIdx ix = MakePermIdx();
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) {
    const __m512i t8[8] = {total[0][q], total[1][q], total[2][q], total[3][q],
                           total[4][q], total[5][q], total[6][q], total[7][q]};
    __m512i r[4];
    ToChannelPairs(ix, t8, r);
    const int64_t blk = ob + q;
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const int64_t at = out0 + (blk * kLanes + 2 * i) * ohw;  // channel 2i; 2i + 1 is ohw on
      if constexpr (kMode == Epilogue::kRequant) {
        const __m512i d = _mm512_sub_epi32(_mm512_add_epi32(r[i], r[i]), ns);  // 2 acc - nw S
        const __m128i bytes = PairCodes(e, blk * (kLanes / 2) + i, d);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(e.codes + at), bytes);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(e.codes + at + ohw), _mm_bsrli_si128(bytes, 8));
      } else {
        __m512i v = r[i];
        if constexpr (kMode == Epilogue::kSigned) v = _mm512_sub_epi32(_mm512_add_epi32(v, v), ns);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + at), _mm512_castsi512_si256(v));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + at + ohw),
                            _mm512_extracti64x4_epi64(v, 1));
        // The lines these two channels' rows reach 4 tiles on, fetched ahead: a store to a
        // line not in cache waits for it. +0.6-2.2% at batch 32 (int32 outputs of 8 MB, in
        // memory), neutral at batch 1 (in L2). A prefetch never faults, even past the output.
        _mm_prefetch(reinterpret_cast<const char*>(acc + at + kPrefetchAhead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(acc + at + ohw + kPrefetchAhead), _MM_HINT_T0);
      }
    }
  }
}

// int32 [nw * S of pixels 0..7] twice, the signed transform's per-pixel term (zero for kAcc,
// which does not use it).
template <Epilogue::Mode kMode>
inline __m512i PixelTerms(const ConvGeom& g, const int64_t* s) {
  if constexpr (kMode == Epilogue::kAcc) return _mm512_setzero_si512();
  const int64_t nw = (int64_t{1} << g.w_bits) - 1;
  alignas(64) int32_t nsv[16];
  for (int p = 0; p < 8; ++p) nsv[p] = nsv[p + 8] = static_cast<int32_t>(nw * s[p]);
  return _mm512_load_si512(nsv);
}

// The lane-by-lane epilogue of a register tile of np pixels x nq channel blocks, accumulators
// in memory: total[p * nq + q] = acc of pixel p, channels (ob + q) * 8 + lane.
__attribute__((noinline)) void FinishLanesTile(const ConvGeom& g, const __m512i* total, int np,
                                               int nq, const int64_t* s, const int64_t* outs,
                                               int64_t ob, int32_t* acc, const Epilogue& ep) {
  for (int p = 0; p < np; ++p)
    for (int q = 0; q < nq; ++q) FinishLanes(g, total[p * nq + q], s[p], outs[p], ob + q, acc, ep);
}

// Pixels 0..k-1 of a tile are consecutive outputs from outs[0], pixels k..7 consecutive from
// outs[k] (k = 8: all from outs[0]). False when 8 pixels span three images (outputs smaller
// than 8 pixels): those tiles take the lane-by-lane epilogue.
inline bool TwoRuns(const int64_t* outs, int* k_out) {
  int k = 8;
  if (outs[7] != outs[0] + 7) {  // rare: the tile crosses an image boundary
    k = 1;
    while (k < 8 && outs[k] == outs[0] + k) ++k;
    for (int j = k + 1; j < 8; ++j)
      if (outs[j] != outs[k] + (j - k)) return false;
  }
  *k_out = k;
  return true;
}

// How a register tile leaves the registers (chosen per tile by the caller):
// kFull: 8 consecutive pixels of one image and Q whole channel blocks, the common case,
// compiled per Epilogue mode (FinishFull). kMixed: 8 pixels in two runs of consecutive
// outputs (a tile across an image boundary) or a partial last channel block (Finish8).
// kLanes: anything else (pixel tails, 8 pixels over three images), lane by lane, out of line.
// They are separate instantiations rather than branches here because at a branch to another
// path GCC writes all 24 accumulators to the stack first.
enum class Exit { kLanes, kMixed, kFull };

// The epilogue (Epilogue in bitconv.h) on one register tile: total[p][q] holds acc of pixel
// p, channels (ob + q) * 8 + lane; s[p] is S of pixel p (kSigned / kRequant only). kMode is
// the epilogue's mode for kFull and kMixed (kLanes reads ep.mode).
template <int P, int Q, Exit kExit, Epilogue::Mode kMode>
inline void Finish(const ConvGeom& g, __m512i (&total)[P][Q], const int64_t* s, const int64_t* outs,
                   int64_t ob, int32_t* acc, const Epilogue& ep) {
  if constexpr (kExit == Exit::kFull) {
    static_assert(P == 8, "the vector epilogue takes 8 pixels");
    const __m512i ns = PixelTerms<kMode>(g, s);
    FinishFull<Q, kMode>(g, total, ns, outs[0], ob, acc, ep);
  } else if constexpr (kExit == Exit::kMixed) {
    static_assert(P == 8, "the vector epilogue takes 8 pixels");
    int k = 8;
    TwoRuns(outs, &k);
    const PermIdx ix = MakePermIdx();
    const __m512i ns = PixelTerms<kMode>(g, s);
    const int64_t out1 = k < 8 ? outs[k] - k : 0;
    for (int q = 0; q < Q; ++q) {
      __m512i t8[8];
      for (int p = 0; p < 8; ++p) t8[p] = total[p][q];
      Finish8<kMode>(g, ix, t8, ns, outs[0], out1, k, ob + q, acc, ep);
    }
  } else {
    alignas(64) __m512i mem[P * Q];
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) mem[p * Q + q] = total[p][q];
    FinishLanesTile(g, mem, P, Q, s, outs, ob, acc, ep);
  }
}

// The (m, k) plane pairs in Horner order (weight e = m + k from high to low), and whether the
// accumulators double before the pair (first pair of a lower weight). Computed once per call of
// the tile function, not per register tile.
struct Passes {
  int n = 0;
  int64_t xoff[64], woff[64];  // plane m's offset in xpk, plane k's in a weight block
  bool dbl[64];
};

Passes MakePasses(const ConvGeom& g) {
  Passes ps;
  for (int e = g.x_bits + g.w_bits - 2; e >= 0; --e) {
    for (int m = std::max(0, e - g.w_bits + 1); m <= std::min(e, g.x_bits - 1); ++m) {
      ps.xoff[ps.n] = m * g.PlaneStride();
      ps.woff[ps.n] = (e - m) * g.l * kLanes;
      ps.dbl[ps.n] = ps.n > 0 && m == std::max(0, e - g.w_bits + 1);
      ++ps.n;
    }
  }
  return ps;
}

template <int P, int Q, Exit kExit, Epilogue::Mode kMode>
void Block(const ConvGeom& g, const Passes& ps, const uint64_t* const* xs, const int64_t* outs,
           const uint64_t* wpk, int64_t ob, int32_t* acc, const int64_t* s, const Epilogue& ep) {
  const int64_t span = g.kw * g.cw;
  const int64_t row = g.RowStride();
  const int64_t wob = g.w_bits * g.l * kLanes;  // distance between weight blocks
  const uint64_t* wblk = wpk + ob * wob;
  __m512i cnt[P][Q];
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < Q; ++q) cnt[p][q] = _mm512_setzero_si512();
  // do-while: every loop runs at least once (bits, kernel size and channels are >= 1).
  int ip = 0;
  do {
    if (ps.dbl[ip]) {
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q) cnt[p][q] = _mm512_add_epi64(cnt[p][q], cnt[p][q]);
    }
    const uint64_t* wk = wblk + ps.woff[ip];
    const int64_t xm = ps.xoff[ip];
    int64_t r = 0;
    do {
      const int64_t xoff = xm + r * row;
      const uint64_t* wr = wk + r * span * kLanes;
      int64_t t = 0;
      do {
        __m512i wv[Q];
        for (int q = 0; q < Q; ++q) wv[q] = _mm512_loadu_si512(wr + q * wob + t * kLanes);
        for (int p = 0; p < P; ++p) {
          const __m512i xv = _mm512_set1_epi64(static_cast<long long>(xs[p][xoff + t]));
          for (int q = 0; q < Q; ++q) {
            cnt[p][q] =
                _mm512_add_epi64(cnt[p][q], _mm512_popcnt_epi64(_mm512_and_si512(xv, wv[q])));
          }
        }
      } while (++t < span);
    } while (++r < g.kh);
  } while (++ip < ps.n);
  Finish<P, Q, kExit, kMode>(g, cnt, s, outs, ob, acc, ep);
}

using BlockFn = void (*)(const ConvGeom&, const Passes&, const uint64_t* const*, const int64_t*,
                         const uint64_t*, int64_t, int32_t*, const int64_t*, const Epilogue&);

// kLaneBlocks[(p - 1) * kTileQ + q - 1] = Block<p, q, kLanes>: pixel tails, channel tails and
// tiles over three images. kMixedBlocks[mode][q - 1] = Block<8, q, kMixed, mode>,
// kFullBlocks[mode][q - 1] = Block<8, q, kFull, mode>.
template <int... I>
constexpr std::array<BlockFn, sizeof...(I)> MakeLaneBlocks(std::integer_sequence<int, I...>) {
  return {{&Block<I / kTileQ + 1, I % kTileQ + 1, Exit::kLanes, Epilogue::kAcc>...}};
}
template <Exit kExit, Epilogue::Mode kMode, int... I>
constexpr std::array<BlockFn, sizeof...(I)> MakeVecBlocks(std::integer_sequence<int, I...>) {
  return {{&Block<kTileP, I + 1, kExit, kMode>...}};
}
using QSeq = std::make_integer_sequence<int, kTileQ>;
constexpr auto kLaneBlocks = MakeLaneBlocks(std::make_integer_sequence<int, kTileP * kTileQ>{});
constexpr std::array<std::array<BlockFn, kTileQ>, 3> kMixedBlocks = {
    MakeVecBlocks<Exit::kMixed, Epilogue::kAcc>(QSeq{}),
    MakeVecBlocks<Exit::kMixed, Epilogue::kSigned>(QSeq{}),
    MakeVecBlocks<Exit::kMixed, Epilogue::kRequant>(QSeq{})};
constexpr std::array<std::array<BlockFn, kTileQ>, 3> kFullBlocks = {
    MakeVecBlocks<Exit::kFull, Epilogue::kAcc>(QSeq{}),
    MakeVecBlocks<Exit::kFull, Epilogue::kSigned>(QSeq{}),
    MakeVecBlocks<Exit::kFull, Epilogue::kRequant>(QSeq{})};

// S = sum_m 2^m popcount(plane m of the field at x): each of its kh rows of span words per
// plane in zmm chunks of 8 (the last one masked), 2^m applied per chunk, one reduction.
inline int64_t FieldSum(const ConvGeom& g, const uint64_t* x, int64_t span) {
  const __mmask8 tail = static_cast<__mmask8>((1u << (span % 8 == 0 ? 8 : span % 8)) - 1);
  __m512i total = _mm512_setzero_si512();
  for (int m = 0; m < g.x_bits; ++m) {
    const __m128i shift = _mm_cvtsi32_si128(m);
    for (int64_t r = 0; r < g.kh; ++r) {
      const uint64_t* xr = x + m * g.PlaneStride() + r * g.RowStride();
      int64_t t = 0;
      for (; t + 8 < span; t += 8)
        total = _mm512_add_epi64(
            total, _mm512_sll_epi64(_mm512_popcnt_epi64(_mm512_loadu_si512(xr + t)), shift));
      total = _mm512_add_epi64(
          total,
          _mm512_sll_epi64(_mm512_popcnt_epi64(_mm512_maskz_loadu_epi64(tail, xr + t)), shift));
    }
  }
  return _mm512_reduce_add_epi64(total);
}

void FusedTileAvx512(const ConvGeom& g, const uint64_t* xpk, const uint64_t* wpk, int64_t pix0,
                     int64_t npix, int64_t ob0, int64_t nob, int32_t* acc, const Epilogue& ep) {
  const int64_t span = g.kw * g.cw;
  const Passes ps = MakePasses(g);
  for (int64_t m0 = pix0; m0 < pix0 + npix; m0 += kMacroP) {
    const int64_t mp = std::min<int64_t>(kMacroP, pix0 + npix - m0);
    const uint64_t* xs[kMacroP];
    int64_t outs[kMacroP], s[kMacroP] = {0};
    PixelWalker walk(g, xpk, m0);
    for (int64_t p = 0; p < mp; ++p, walk.Next()) {
      const PixelRef& ref = walk.ref();
      xs[p] = ref.x;
      outs[p] = ref.out;
      if (ep.mode != Epilogue::kAcc) s[p] = FieldSum(g, ref.x, span);
    }
    int runs[kMacroP / kTileP];  // per 8-pixel tile: k of TwoRuns, or 0 (lane by lane)
    for (int64_t p = 0; p + kTileP <= mp; p += kTileP) {
      int k;
      runs[p / kTileP] = TwoRuns(outs + p, &k) ? k : 0;
    }
    const auto& full_blocks = kFullBlocks[ep.mode];
    const auto& mixed_blocks = kMixedBlocks[ep.mode];
    for (int64_t ob = ob0; ob < ob0 + nob; ob += kTileQ) {
      const int nq = static_cast<int>(std::min<int64_t>(kTileQ, ob0 + nob - ob));
      const bool whole = (ob + nq) * kLanes <= g.o;  // no missing channel in the last block
      for (int64_t p = 0; p < mp; p += kTileP) {
        const int np = static_cast<int>(std::min<int64_t>(kTileP, mp - p));
        const int k = np == kTileP ? runs[p / kTileP] : 0;
        const BlockFn block = k == kTileP && whole ? full_blocks[nq - 1]
                              : k > 0              ? mixed_blocks[nq - 1]
                                                   : kLaneBlocks[(np - 1) * kTileQ + nq - 1];
        block(g, ps, xs + p, outs + p, wpk, ob, acc, s + p, ep);
      }
    }
  }
}

void TileAvx512(const ConvGeom& g, const uint64_t* xpk, const uint64_t* wpk, int64_t pix0,
                int64_t npix, int64_t ob0, int64_t nob, int32_t* acc) {
  FusedTileAvx512(g, xpk, wpk, pix0, npix, ob0, nob, acc, Epilogue{});
}

}  // namespace

extern const TileKernel kAvx512Tiles = {"8x24", &TileAvx512, &FusedTileAvx512, kMacroP, kTileQ};

}  // namespace dorefa
