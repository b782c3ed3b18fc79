// `wgrad-amx` on small maps by the scales' digits (wgrad_digits.h's plan over N P terms): the
// batch and the map are one sum, e = b P + p, so no sample pads a tile step of its own (the
// per-sample route, wgrad_amx.cpp, pads each sample's map to whole steps of 64 bytes).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "amx_tiles.h"
#include "byte_transpose.h"
#include "wgrad.h"
#include "wgrad_amx.h"
#include "wgrad_digits.h"
#include "wgrad_direct.h"
#include "wgrad_direct_avx512.h"

namespace dorefa {
namespace {

constexpr int64_t kGatherSlack = 128;  // bytes read past the digits' strips (DigitGather)

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

uint32_t RunDigits(const WgradGeom& g, const DigitPlan& plan, const uint8_t* c, const uint8_t* x,
                   const WgradOutput& out, int threads) {
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
