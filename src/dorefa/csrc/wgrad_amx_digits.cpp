// `wgrad-amx` on small maps by the scales' digits (wgrad_digits.h's plan over N P terms): the
// batch and the map are one sum, e = b P + p, so no sample pads a tile step of its own (the
// per-sample route, wgrad_amx.cpp, pads each sample's map to whole steps of 64 bytes).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "amx_tiles.h"
#include "avx512_transpose.h"
#include "byte_transpose.h"
#include "wgrad.h"
#include "wgrad_amx.h"
#include "wgrad_digits.h"
#include "wgrad_direct.h"
#include "wgrad_direct_avx512.h"

namespace dorefa {
namespace {

constexpr int64_t kGatherSlack = 128;  // bytes read past the digits' strips (DigitGather)
constexpr int64_t kStripChannels = 4;  // channels per pass of the small maps' strip packer

// Small maps by the scales' digits (wgrad_digits.h's plan over N P terms): the batch and the
// map are one sum, e = b P + p, so no sample pads a tile step of its own:
//
//   dW[o, k] = sum_j beta^j T_j[o, k],   T_j[o, k] = sum_e g[o, e] (d_{b(e) j} X[e, k]),
//
// A_j (16 columns k x 64 e per tile row block): the strips' runs of each sample, one after the
// other, times the sample's digit j (<= 255: u8); B: g = 2c - n_g as [e quad][16 channels][4]
// (0 past E = N P). Work item: 32 columns k (A_j of every digit built once, in L2), then per
// pair of channel vectors, 4 C tiles over all E for each digit, and the D digits' sums combined
// in float64 (WriteDigitSums). A sample costs D P / 64 tile steps instead of ceil(PQ / 16)
// steps, their tile stores and the per-sample finish.
//
// svhn's conv5 (128 x 128 x 3 x 3 on a 7 x 7 map, batch 128, A = 2: D = 4) spends ~60% of a
// call in the tile steps (~23 TSC cycles a TDPBUSD: A and B stream from L2), ~25% packing A_j,
// and the rest packing the strips and B (docs/training.md).
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
      const int64_t e1 = std::min(e0 + 64, op.e_count);
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t b = e / p_count;
        idx.data()[e] = static_cast<uint8_t>(b * op.plane + (e - b * p_count) - off[v]);
        slot.data()[e] = static_cast<uint8_t>((b - b0) * codes);
      }
      for (int64_t b = b0; b <= (e1 - 1) / p_count; ++b)
        for (int j = 0; j < digits; ++j)
          for (int64_t x = 0; x < codes; ++x)
            table.data()[j * op.width + e0 + (b - b0) * codes + x] =
                static_cast<uint8_t>(x * digit[j * g.n + b]);  // <= 255 for codes <= n_a
    }
  }
};

// A_j of columns [k0, k0 + 32) for every digit, in tile order: a[j][step][i][64 bytes of e]
// (one 2 KB block per step: the two A tiles of a step are 1 KB each, rows 64 bytes apart), 0
// past E and for columns past K. Per 64 bytes of e and column: the 128 bytes of the
// interleaved strips that hold the runs of the samples they span, one VPERMI2B to the lanes,
// the slot added, and per digit one VPERMB from its table and an aligned store. (Merging each
// sample's run by masked loads and multiplying by the digits took 3x longer: instructions;
// reading each sample's own strip buffer, 13 KB apart, cost more again. Rows of `width` bytes,
// the order before this one, packed and ran 1.1x slower.)
void PackDigitColumns(const WgradGeom& g, const DigitOperands& op, const DigitGather& gt,
                      int digits, int64_t k0, uint8_t* a) {
  constexpr int kRows = 2 * kLanes;
  const int64_t plane_bytes = kRows * op.width;
  const int live = static_cast<int>(std::min<int64_t>(kRows, g.K() - k0));
  const uint8_t* runs[kRows];
  for (int i = 0; i < live; ++i) runs[i] = op.xs.data() + op.col[k0 + i];
  for (int64_t v = 0; v < op.steps; ++v) {
    const __m512i idx = _mm512_load_si512(gt.idx.data() + v * 64);
    const __m512i slot = _mm512_load_si512(gt.slot.data() + v * 64);
    const __mmask64 inside = gt.inside[v];
    const int64_t off = gt.off[v];
    __m512i table[kMaxDigits];
    for (int j = 0; j < digits; ++j)
      table[j] = _mm512_load_si512(gt.table.data() + j * op.width + v * 64);
    uint8_t* step = a + v * kRows * 64;
    for (int i = 0; i < kRows; ++i) {
      if (i >= live) {
        for (int j = 0; j < digits; ++j)
          _mm512_store_si512(step + j * plane_bytes + i * 64, _mm512_setzero_si512());
        continue;
      }
      const uint8_t* w = runs[i] + off;
      const __m512i x = _mm512_maskz_permutex2var_epi8(inside, _mm512_loadu_si512(w), idx,
                                                       _mm512_loadu_si512(w + 64));
      const __m512i id = _mm512_add_epi8(x, slot);
      for (int j = 0; j < digits; ++j)
        _mm512_store_si512(step + j * plane_bytes + i * 64, _mm512_permutexvar_epi8(id, table[j]));
    }
  }
}

// dW[o0 + o, k0 + k] (o < no, k < nk) from the digits' tile sums t[j] (j < D; rows k of 32
// int32, one per o; na A tiles x nb B tiles of them written), by Horner's rule over the digits
// in float64,
//
//   v = (...(T_{D-1} beta + T_{D-2}) beta + ...) beta + T_0,
//
// exact: every partial is an integer below the plan's 2^53 bound. Float32 outputs: v / divisor
// (VDIVPD, the IEEE quotient as WgradOutput::Write's), rounded to float32, and 16 x 16
// transposes to dW's rows; float64 outputs go through Write.
void WriteDigitSums(const WgradGeom& g, const WgradOutput& out, const int32_t* t, int digits,
                    double base, int na, int nb, int64_t o0, int no, int64_t k0, int nk) {
  constexpr int kRows = 2 * kLanes;
  constexpr int64_t kSums = kRows * kRows;  // one digit's sums
  const __m512d beta = _mm512_set1_pd(base), divisor = _mm512_set1_pd(out.divisor);
  alignas(64) double v[kRows][kRows];
  for (int r = 0; r < na * kLanes; ++r)
    for (int h = 0; h < 2 * nb; ++h) {
      const auto* src = reinterpret_cast<const __m256i*>(t + r * kRows + 8 * h);
      __m512d s = _mm512_cvtepi32_pd(_mm256_load_si256(src + (digits - 1) * kSums / 8));
      for (int j = digits - 2; j >= 0; --j)
        s = _mm512_fmadd_pd(s, beta, _mm512_cvtepi32_pd(_mm256_load_si256(src + j * kSums / 8)));
      _mm512_store_pd(v[r] + 8 * h, out.dw32 != nullptr ? _mm512_div_pd(s, divisor) : s);
    }
  if (out.dw32 == nullptr) {
    for (int o = 0; o < no; ++o) out.Write((o0 + o) * g.K() + k0, &v[0][o], nk, kRows);
    return;
  }
  for (int kb = 0; kb < nk; kb += kLanes)
    for (int ob = 0; ob < no; ob += kLanes) {
      __m512i rows[kLanes];
      for (int r = 0; r < kLanes; ++r)
        rows[r] = _mm512_castps_si512(_mm512_insertf32x8(
            _mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_load_pd(v[kb + r] + ob))),
            _mm512_cvtpd_ps(_mm512_load_pd(v[kb + r] + ob + 8)), 1));
      Transpose16Dwords(rows);
      const auto keep = static_cast<__mmask16>((1u << std::min(kLanes, nk - kb)) - 1);
      for (int c = 0; c < std::min(kLanes, no - ob); ++c)
        _mm512_mask_storeu_epi32(out.dw32 + (o0 + ob + c) * g.K() + k0 + kb, keep, rows[c]);
    }
}

uint32_t RunDigits(const WgradGeom& g, const DigitPlan& plan, const uint8_t* c, const uint8_t* x,
                   const WgradOutput& out, int threads) {
  const DirectLayout l(g, kLanes);
  DigitOperands op(g, l);
  const SmallStrips small(g);
  const int64_t stride = g.n * op.plane;  // samples interleaved: reads in address order
  struct None {};
  const uint32_t ors = PackSamples<None>(threads, g.n, [&](int64_t b, None&) {
    const uint8_t* xb = x + b * g.c * g.h * g.w;
    if (!small.fits)
      PackDirectInput<Avx512DirectPack>(g, l, xb, op.xs.data() + b * op.plane, stride);
    return uint32_t{OrBytes(c + b * g.o * g.P(), g.o * g.P())} |
           uint32_t{OrBytes(xb, g.c * g.h * g.w)} << 8;
  });
  if (small.fits) {  // a few channels of every sample at a time: the strips fill in order
    const int64_t groups = (g.c + kStripChannels - 1) / kStripChannels;
    ParallelForOrThrow(threads, groups, [&](int64_t begin, int64_t end) {
      const int64_t c0 = begin * kStripChannels, c1 = std::min(g.c, end * kStripChannels);
      for (int64_t b = 0; b < g.n; ++b)
        small.Pack(g, stride, x + b * g.c * g.h * g.w, op.xs.data() + b * op.plane, c0, c1);
    });
  }
  ParallelForOrThrow(threads, op.vectors, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) PackDigitGrads(g, c, v, op);
  });
  const std::vector<uint8_t> digit = ScaleDigits(g, plan, out);
  const DigitGather gather(g, op, plan.digits, digit);
  const int64_t pairs = (g.K() + 2 * kLanes - 1) / (2 * kLanes);
  const int64_t plane_bytes = 2 * kLanes * op.width;
  const AmxTileConfig cfg(16);
  ParallelForOrThrow(threads, pairs, [&](int64_t begin, int64_t end) {
    PoolScratch<uint8_t> a(static_cast<size_t>(plan.digits * plane_bytes));
    PoolScratch<int32_t> sums(static_cast<size_t>(plan.digits * 4 * kLanes * kLanes));
    _tile_loadconfig(&cfg);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t k0 = pair * 2 * kLanes, nk = std::min<int64_t>(2 * kLanes, g.K() - k0);
      PackDigitColumns(g, op, gather, plan.digits, k0, a.data());
      const int na = nk > kLanes ? 2 : 1;
      for (int64_t v = 0; v < op.vectors; v += 2) {
        const int nb = static_cast<int>(std::min<int64_t>(2, op.vectors - v));
        const TileStepsFn step = kTileSteps<true>[na - 1][nb - 1];
        for (int j = 0; j < plan.digits; ++j)
          step(a.data() + j * plane_bytes, kLanes * 64, 64, 2 * kLanes * 64,
               op.g.data() + v * op.width * kLanes, op.width * kLanes, op.steps, 16,
               sums.data() + j * 4 * kLanes * kLanes, 2 * kLanes);
        WriteDigitSums(g, out, sums.data(), plan.digits, static_cast<double>(plan.base), na, nb,
                       v * kLanes,
                       static_cast<int>(std::min<int64_t>(nb * kLanes, g.o - v * kLanes)), k0,
                       static_cast<int>(nk));
      }
    }
    _tile_release();
  });
  return ors;
}

}  // namespace

bool DigitsAmxFits(const WgradGeom& g, const WgradOutput& out) {
  const DigitPlan plan = PlanScaleDigits(g, out, g.n * g.P());
  const int64_t steps = (g.PQ() + 15) / 16;  // the per-sample route's tile steps a sample
  return plan.digits > 0 && plan.digits * g.P() < 64 * (steps + 1) && DigitGatherFits(g);
}

uint32_t WeightGradDigitsAmx(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                             const WgradOutput& out, int threads) {
  return RunDigits(g, PlanScaleDigits(g, out, g.n * g.P()), c, x, out, threads);
}

}  // namespace dorefa
