#include "conv_float.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "conv_float_winograd.h"
#include "pool.h"
#include "thread_pool.h"

namespace dorefa {
namespace {

// The spec's sums of k <= kChains outputs: output i's window starts at src[i] (image, row and
// column of its first tap) and its channel's weights are w[i] (taps in order). Each in double,
// from 0.0, one rounding a step (a float converts exactly, a product of two is exact, so a fused
// multiply-add rounds the same); the k chains run in lockstep, independent of one another.
constexpr int kChains = 8;
inline void SpecSums(const FloatConvPlan& p, const float* const* src, const float* const* w, int k,
                     double* out) {
  double a[kChains] = {};
  const float* s[kChains];
  const float* ws[kChains];
  for (int i = 0; i < kChains; ++i) {  // unused chains repeat the first
    s[i] = src[i < k ? i : 0];
    ws[i] = w[i < k ? i : 0];
  }
  for (int64_t t = 0; t < p.taps; ++t) {
    const int64_t off = p.offs[t];
    for (int i = 0; i < kChains; ++i)
      a[i] += static_cast<double>(ws[i][t]) * static_cast<double>(s[i][off]);
  }
  for (int i = 0; i < k; ++i) out[i] = a[i];
}

// The first tap of conv output (oy, ox) of image n in the padded input.
inline const float* Window(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t oy,
                           int64_t ox) {
  return p.xf + ((n * g.c * p.hp) + oy * g.stride) * p.wp + ox * g.stride;
}

// The code from a pooled pixel's window sums (pool x pool, row by row): each rounded to float32,
// their max (a NaN stays, as numpy's max), then Q.
inline uint8_t CodeOfWindow(const FloatConvGeom& g, const FloatConvPlan& p, int64_t o,
                            const double* sums) {
  float mx = 0.0f;
  for (int64_t i = 0; i < g.pool * g.pool; ++i) {
    const float y = static_cast<float>(sums[i]);
    if (i == 0 || y > mx || y != y) mx = y;
  }
  return QuantizeCode(mx, p.bias[o], static_cast<float>((1 << g.bits) - 1));
}

// E of the header comment for channel o: 2 (taps + 1) 2^-24 ||w_o||_1 max|x| (>= gamma_n of
// float32 plus gamma_n of double, times S) + FLT_MIN (float32 underflow, <= 2^-150 a step),
// rounded up; max|x| to *xmax_out. eps2[o]: the same factor times ||w_o||_2, times 1 + 2^-20
// (the norm's double rounding, and the float32 product eps2 N_p the store rounds to nearest),
// rounded up. False (no bound: the float paths recompute every code) when an input is not
// finite or |x|, ||w_o||_1 exceed 1e15 (so no sum can overflow).
bool SumErrorBounds(const FloatConvGeom& g, const float* x, const float* w, int64_t taps,
                    float* eps, float* eps2, double* xmax_out) {
  const uint32_t bits = MaxAbsBits(x, g.n * g.c * g.h * g.w, 0);  // max|x|, exact
  float xmaxf;
  std::memcpy(&xmaxf, &bits, sizeof xmaxf);
  const double xmax = xmaxf;
  if (!(xmax <= 1e15) || taps >= (int64_t{1} << 20)) return false;  // also NaN
  *xmax_out = xmax;
  const double unit = 2.0 * static_cast<double>(taps + 1) * std::ldexp(1.0, -24);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (int64_t o = 0; o < g.o; ++o) {
    double l1 = 0.0, l2 = 0.0;
    for (int64_t t = 0; t < taps; ++t) {
      const double v = w[o * taps + t];
      l1 += std::fabs(v);
      l2 += v * v;  // exact products, nonnegative terms: relative error <= taps 2^-53
    }
    if (!(l1 <= 1e15)) return false;
    const float e = static_cast<float>(unit * l1 * xmax + std::numeric_limits<float>::min());
    eps[o] = std::nextafter(e, kInf);
    const double e2 = unit * std::sqrt(l2) * (1.0 + std::ldexp(1.0, -20));
    eps2[o] = std::nextafter(static_cast<float>(e2), kInf);
  }
  return true;
}

// The calling thread's scratch, kept between calls (fresh buffers cost a page fault per 4 KB,
// as much as the convolution itself on AlexNet's first layer).
struct Scratch {
  std::vector<float> padded, wt, bias, eps, eps2;
  std::vector<int64_t> offs;
};
// A padded input above this many floats (16 MB: a large batch of large images) is freed after
// its call instead of kept.
constexpr size_t kKeepFloats = size_t{4} << 20;

// The calling thread's scratch for one call: trimmed when the call ends.
class CallScratch {
 public:
  CallScratch() : s_(Get()) {}
  ~CallScratch() {
    if (s_.padded.capacity() > kKeepFloats) std::vector<float>().swap(s_.padded);
  }
  CallScratch(const CallScratch&) = delete;
  CallScratch& operator=(const CallScratch&) = delete;
  Scratch& operator*() { return s_; }

 private:
  static Scratch& Get() {
    static thread_local Scratch s;
    return s;
  }
  Scratch& s_;
};

// x (N, C, H, W) zero padded to (N, C, HP, WP): x itself without padding, else a copy in buf.
const float* PaddedInput(const FloatConvGeom& g, const float* x, std::vector<float>& buf) {
  if (g.pad == 0) return x;
  const int64_t hp = g.h + 2 * g.pad, wp = g.w + 2 * g.pad;
  buf.assign(static_cast<size_t>(g.n * g.c * hp * wp), 0.0f);
  for (int64_t nc = 0; nc < g.n * g.c; ++nc)
    for (int64_t y = 0; y < g.h; ++y)
      std::copy(x + (nc * g.h + y) * g.w, x + (nc * g.h + y + 1) * g.w,
                buf.begin() + (nc * hp + y + g.pad) * wp + g.pad);
  return buf.data();
}

// A path's operands (FloatConvPlan) in the calling thread's scratch: the channel stride O
// rounded up to 16 (whole ymm and zmm), the weights in the one layout the path reads, bias
// padded with zeros, tap offsets.
FloatConvPlan MakePlan(const FloatConvGeom& g, const float* x, const float* weight,
                       const float* bias, FloatWeights layout, Scratch& s) {
  FloatConvPlan p;
  p.hp = g.h + 2 * g.pad;
  p.wp = g.w + 2 * g.pad;
  p.taps = g.c * g.kh * g.kw;
  p.ostride = (g.o + 15) / 16 * 16;
  p.xf = PaddedInput(g, x, s.padded);
  p.w = weight;
  s.bias.assign(static_cast<size_t>(p.ostride), 0.0f);
  std::copy(bias, bias + g.o, s.bias.begin());
  s.offs.clear();
  for (int64_t ci = 0; ci < g.c; ++ci)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) s.offs.push_back((ci * p.hp + i) * p.wp + j);
  if (layout == FloatWeights::kTapMajor) {  // (taps, ostride)
    s.wt.assign(static_cast<size_t>(p.taps * p.ostride), 0.0f);
    for (int64_t o = 0; o < g.o; ++o)
      for (int64_t t = 0; t < p.taps; ++t) s.wt[t * p.ostride + o] = weight[o * p.taps + t];
    p.wtf = s.wt.data();
  } else if (layout == FloatWeights::kBlocked) {  // (blocks, taps, kBlock)
    s.wt.assign(static_cast<size_t>((g.o + kBlock - 1) / kBlock * p.taps * kBlock), 0.0f);
    for (int64_t o = 0; o < g.o; ++o)
      for (int64_t t = 0; t < p.taps; ++t)
        s.wt[(o / kBlock * p.taps + t) * kBlock + o % kBlock] = weight[o * p.taps + t];
    p.wtb = s.wt.data();
  }
  p.bias = s.bias.data();
  p.offs = s.offs.data();
  return p;
}

// Run `it` of `images` images of rows x cols pixels, a run being up to kPixelRun pixels of a row:
// image n, its row, first column, pixel count.
struct Run {
  int64_t n, row, col, count;
};
inline int64_t RunsPerRow(int64_t cols) { return (cols + kPixelRun - 1) / kPixelRun; }
inline Run RunAt(int64_t it, int64_t rows, int64_t cols) {
  const int64_t runs = RunsPerRow(cols), r = it % (rows * runs), col = r % runs * kPixelRun;
  return {it / (rows * runs), r / runs, col, std::min(kPixelRun, cols - col)};
}

// Bands of rows per image a call splits into: one on one thread (no row computed twice), else
// about two per thread.
int64_t Bands(int64_t rows, int64_t n, int threads) {
  // (an empty batch has no rows to split: n = 0 had divided by zero)
  return threads > 1 && n > 0 ? std::min(rows, (2 * threads + n - 1) / n) : 1;
}

// ConvFloatOutMaxPool on Winograd rows: per band of pooled rows, the tile rows its windows
// need, each into a ring of k + 2 conv rows (a tile row writes two rows, one of them possibly
// past the window: rows [lo, hi + 1] live at once), every pooled row pooled as soon as the
// last row of its window is there.
void PoolWinogradRows(const FloatConvGeom& g, const FloatConvPlan& pl, const WinogradPlan& w,
                      FloatWinogradFn winograd, int64_t k, int64_t s, int64_t p, int64_t bands,
                      float* out, int threads) {
  const int64_t ph = (g.oh + 2 * p - k) / s + 1, pw = (g.ow + 2 * p - k) / s + 1;
  const int64_t ring_rows = k + 2;
  ParallelForOrThrow(threads, g.n * bands, [&](int64_t first, int64_t last) {
    std::vector<float> ring(static_cast<size_t>(g.o * ring_rows * g.ow));
    std::vector<const float*> rows(static_cast<size_t>(k));
    MaxPoolFloatRows pool(g.ow, k, s, p);
    const ConvRows dst{ring.data(), ring_rows * g.ow, g.ow, ring_rows};
    for (int64_t item = first; item < last; ++item) {
      const int64_t n = item / bands, band = item % bands;
      const int64_t py0 = band * ph / bands, py1 = (band + 1) * ph / bands;
      auto lo = [&](int64_t py) { return std::max<int64_t>(0, py * s - p); };
      auto hi = [&](int64_t py) { return std::min(g.oh, py * s - p + k); };
      int64_t py = py0;
      const TileRowDone done = [&](int64_t ty) {
        const int64_t ready = std::min(g.oh, 2 * ty + 2);  // conv rows [.., ready) are there
        for (; py < py1 && hi(py) <= ready; ++py) {
          for (int64_t o = 0; o < g.o; ++o) {
            for (int64_t r = lo(py); r < hi(py); ++r)
              rows[static_cast<size_t>(r - lo(py))] = dst.Row(o, r);
            pool.Row(rows.data(), static_cast<int>(hi(py) - lo(py)),
                     out + ((n * g.o + o) * ph + py) * pw);
          }
        }
      };
      winograd(g, pl, w, n, lo(py0) / 2, (hi(py1 - 1) + 1) / 2, dst, &done);
    }
  });
}

// The Winograd plan of a call (bias nullptr: none): the calling thread's last one when the
// geometry, the weights and the bias are the same bits (a model calls its first layer with the
// same weights every time; U took ~0.1 ms of AlexNet's ~2.5 ms first layer), else made afresh.
const WinogradPlan& CachedWinogradPlan(const FloatConvGeom& g, const float* weight,
                                       const float* bias) {
  struct Entry {
    int64_t key[8] = {};
    std::vector<float> weight, bias;
    WinogradPlan plan;
  };
  static thread_local Entry last;
  const int64_t key[8] = {g.c, g.o, g.kh, g.kw, g.stride, g.oh, g.ow, bias != nullptr};
  const size_t nw = static_cast<size_t>(g.o * g.c * g.kh * g.kw);
  const size_t nb = bias != nullptr ? static_cast<size_t>(g.o) : 0;
  if (std::memcmp(key, last.key, sizeof key) == 0 && last.weight.size() == nw &&
      std::memcmp(weight, last.weight.data(), nw * sizeof(float)) == 0 &&
      (nb == 0 || std::memcmp(bias, last.bias.data(), nb * sizeof(float)) == 0))
    return last.plan;
  last.weight.clear();  // no entry while the new one is made (an allocation may throw)
  MakeWinogradPlan(g, weight, bias, &last.plan);
  last.bias.assign(bias, bias + nb);
  last.weight.assign(weight, weight + nw);
  std::memcpy(last.key, key, sizeof key);
  return last.plan;
}

// ConvFloatQuantize's Winograd codes (no pool): bands of tile rows per image as ConvFloatOut,
// each thread's unproved codes computed at the end of its share.
void WinogradCodes(const FloatConvGeom& g, const FloatConvPlan& pv, const WinogradPlan& w,
                   uint8_t* out, FloatWinogradCodesFn winograd, int threads) {
  const int64_t bands = Bands(w.th, g.n, threads);
  ParallelForOrThrow(threads, g.n * bands, [&](int64_t first, int64_t last) {
    PendingCodes pending;
    FloatConvPlan mine = pv;
    mine.pending = &pending;
    for (int64_t item = first; item < last; ++item) {
      const int64_t n = item / bands, band = item % bands;
      winograd(g, mine, w, n, band * w.th / bands, (band + 1) * w.th / bands,
               out + n * g.o * g.oh * g.ow);
    }
    pending.Flush(g, mine);
  });
}

}  // namespace

float WindowNorm(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t py,
                 int64_t px) {
  double best = 0.0;
  for (int64_t r = 0; r < g.pool; ++r)
    for (int64_t s = 0; s < g.pool; ++s) {
      const float* src = Window(g, p, n, py * g.pool + r, px * g.pool + s);
      // exact squares, nonnegative terms (in 4 chains: any order has relative error <= taps
      // 2^-53)
      double sum[4] = {};
      int64_t t = 0;
      for (; t + 4 <= p.taps; t += 4)
        for (int i = 0; i < 4; ++i) {
          const double v = src[p.offs[t + i]];
          sum[i] += v * v;
        }
      for (; t < p.taps; ++t) {
        const double v = src[p.offs[t]];
        sum[0] += v * v;
      }
      best = std::max(best, (sum[0] + sum[1]) + (sum[2] + sum[3]));
    }
  // times 1 + 2^-30 (the sum's and the root's roundings, taps < 2^20), then rounded up
  const float f = static_cast<float>(std::sqrt(best) * (1.0 + std::ldexp(1.0, -30)));
  return std::nextafter(f, std::numeric_limits<float>::infinity());
}

void PendingCodes::Flush(const FloatConvGeom& g, const FloatConvPlan& p) {
  const int64_t win = g.pool * g.pool, total = static_cast<int64_t>(items_.size()) * win;
  sums_.resize(static_cast<size_t>(total));
  const float* src[kChains];
  const float* w[kChains];
  for (int64_t j0 = 0; j0 < total; j0 += kChains) {  // j = item * win + window position
    const int k = static_cast<int>(std::min<int64_t>(kChains, total - j0));
    for (int i = 0; i < k; ++i) {
      const Item& it = items_[static_cast<size_t>((j0 + i) / win)];
      const int64_t r = (j0 + i) % win / g.pool, s = (j0 + i) % g.pool;
      src[i] = Window(g, p, it.n, it.py * g.pool + r, it.px * g.pool + s);
      w[i] = p.w + it.o * p.taps;
    }
    SpecSums(p, src, w, k, sums_.data() + j0);
  }
  for (size_t i = 0; i < items_.size(); ++i)
    *items_[i].dst = CodeOfWindow(g, p, items_[i].o, sums_.data() + i * win);
  items_.clear();
}

void ConvFloatQuantize(const FloatConvGeom& g, const float* x, const float* weight,
                       const float* bias, uint8_t* out, FloatConvPixelFn pixel,
                       FloatWeights weights, FloatWinogradCodesFn winograd, int threads) {
  CallScratch scratch;
  Scratch& s = *scratch;
  const int64_t plane = g.ph * g.pw;
  // A layer for the Winograd codes needs no weight layout (its plan has U; the spec's sums read
  // the weights as given), unless its input has no error bound (below: then made again).
  const bool wino =
      winograd != nullptr && pixel != nullptr && g.pool == 1 && WinogradFits(g) && g.c <= 1024;
  FloatConvPlan p = MakePlan(g, x, weight, bias, wino ? FloatWeights::kNone : weights, s);
  if (pixel == nullptr) {  // scalar rows: every code from the spec's sums
    ParallelForOrThrow(threads, g.n * g.o, [&](int64_t first, int64_t last) {
      PendingCodes codes;
      for (int64_t it = first; it < last; ++it) {  // it = (n, o)
        for (int64_t py = 0; py < g.ph; ++py)
          for (int64_t px = 0; px < g.pw; ++px)
            codes.Add(it / g.o, it % g.o, py, px, out + it * plane + py * g.pw + px);
        codes.Flush(g, p);
      }
    });
    return;
  }
  s.eps.assign(static_cast<size_t>(p.ostride), 0.0f);
  s.eps2.assign(static_cast<size_t>(p.ostride), 0.0f);
  FloatConvPlan pv = p;
  double xmax = 0.0;
  const bool bound = SumErrorBounds(g, x, weight, p.taps, s.eps.data(), s.eps2.data(), &xmax);
  pv.eps = bound ? s.eps.data() : nullptr;
  if (wino && pv.eps != nullptr) {
    const WinogradPlan& w = CachedWinogradPlan(g, weight, nullptr);
    WinogradErrorBounds(g, w, xmax, s.eps.data());
    WinogradCodes(g, pv, w, out, winograd, threads);
    return;
  }
  if (wino) {  // no bound: the vector path (which recomputes every code) with its layout
    p = MakePlan(g, x, weight, bias, weights, s);
    pv = p;
  }
  if (pv.eps != nullptr) pv.eps2 = s.eps2.data();  // the per-window bound (header comment)
  // Each thread's share of the runs; the codes it could not prove (PendingCodes) computed a
  // batch at a time.
  ParallelForOrThrow(threads, g.n * g.ph * RunsPerRow(g.pw), [&](int64_t first, int64_t last) {
    PendingCodes pending;
    FloatConvPlan mine = pv;
    mine.pending = &pending;
    for (int64_t it = first; it < last; ++it) {
      const Run r = RunAt(it, g.ph, g.pw);
      pixel(g, mine, r.n, r.row, r.col, r.count, out + r.n * g.o * plane);
      if (pending.size() >= 8 * kChains) pending.Flush(g, mine);  // their inputs still in cache
    }
    pending.Flush(g, mine);
  });
}

void ConvFloatOut(const FloatConvGeom& g, const float* x, const float* weight, const float* bias,
                  float* out, FloatConvOutFn fn, FloatWeights weights, FloatWinogradFn winograd,
                  int threads) {
  CallScratch scratch;
  Scratch& s = *scratch;
  const int64_t plane = g.oh * g.ow;
  const FloatConvPlan p = MakePlan(g, x, weight, bias, weights, s);
  if (winograd != nullptr && WinogradFits(g)) {
    const WinogradPlan& w = CachedWinogradPlan(g, weight, bias);
    const int64_t bands = Bands(w.th, g.n, threads);
    ParallelForOrThrow(threads, g.n * bands, [&](int64_t first, int64_t last) {
      for (int64_t item = first; item < last; ++item) {
        const int64_t n = item / bands, band = item % bands;
        const ConvRows rows{out + n * g.o * plane, plane, g.ow, 0};
        winograd(g, p, w, n, band * w.th / bands, (band + 1) * w.th / bands, rows, nullptr);
      }
    });
    return;
  }
  if (fn == nullptr) {  // scalar rows: double sums, rounded once, + bias
    ParallelFor(threads, g.n * g.o, [&](int64_t first, int64_t last) {
      for (int64_t it = first; it < last; ++it) {  // it = (n, o)
        const int64_t n = it / g.o, o = it % g.o;
        const float* w[kChains];
        std::fill(w, w + kChains, weight + o * p.taps);
        for (int64_t j0 = 0; j0 < plane; j0 += kChains) {  // j = oy OW + ox
          const int k = static_cast<int>(std::min<int64_t>(kChains, plane - j0));
          const float* src[kChains];
          double sums[kChains];
          for (int i = 0; i < k; ++i) src[i] = Window(g, p, n, (j0 + i) / g.ow, (j0 + i) % g.ow);
          SpecSums(p, src, w, k, sums);
          for (int i = 0; i < k; ++i)
            out[it * plane + j0 + i] = static_cast<float>(sums[i]) + bias[o];
        }
      }
    });
    return;
  }
  ParallelFor(threads, g.n * g.oh * RunsPerRow(g.ow), [&](int64_t first, int64_t last) {
    for (int64_t it = first; it < last; ++it) {
      const Run r = RunAt(it, g.oh, g.ow);
      fn(g, p, r.n, r.row, r.col, r.count, out + r.n * g.o * plane);
    }
  });
}

void ConvFloatOutMaxPool(const FloatConvGeom& g, const float* x, const float* weight,
                         const float* bias, int64_t k, int64_t s, int64_t p, float* out,
                         FloatConvOutFn fn, FloatWeights weights, FloatWinogradFn winograd,
                         int threads) {
  const int64_t ph = (g.oh + 2 * p - k) / s + 1, pw = (g.ow + 2 * p - k) / s + 1;
  if (fn == nullptr) {  // the scalar rows: the whole conv, then the pool
    std::vector<float> conv(static_cast<size_t>(g.n * g.o * g.oh * g.ow));
    ConvFloatOut(g, x, weight, bias, conv.data(), nullptr, weights, nullptr, threads);
    MaxPoolFloat(conv.data(), g.n, g.o, g.oh, g.ow, k, s, p, out, threads);
    return;
  }
  CallScratch scratch;
  const FloatConvPlan pl = MakePlan(g, x, weight, bias, weights, *scratch);
  // One band of pooled rows per image on one thread (no conv row computed twice); with more
  // threads about two bands per thread (a band's first rows may repeat the previous band's last).
  const int64_t bands = Bands(ph, g.n, threads);
  if (winograd != nullptr && WinogradFits(g)) {
    const WinogradPlan& w = CachedWinogradPlan(g, weight, bias);
    PoolWinogradRows(g, pl, w, winograd, k, s, p, bands, out, threads);
    return;
  }
  FloatConvGeom ring_g = g;
  ring_g.oh = k;  // the ring's planes: k rows of OW
  ParallelForOrThrow(threads, g.n * bands, [&](int64_t first, int64_t last) {
    std::vector<float> ring(static_cast<size_t>(g.o * k * g.ow));
    std::vector<const float*> rows(static_cast<size_t>(k));
    MaxPoolFloatRows pool(g.ow, k, s, p);
    for (int64_t item = first; item < last; ++item) {
      const int64_t n = item / bands, band = item % bands;
      const int64_t py0 = band * ph / bands, py1 = (band + 1) * ph / bands;
      int64_t next = 0;  // the first conv row not in the ring yet
      for (int64_t py = py0; py < py1; ++py) {
        const int64_t lo = std::max<int64_t>(0, py * s - p), hi = std::min(g.oh, py * s - p + k);
        for (next = std::max(next, lo); next < hi; ++next) {  // conv row `next` into its slot
          const int64_t slot = next % k;
          FloatConvPlan shifted = pl;  // input rows as if the conv row were row `slot`
          shifted.xf = pl.xf + (next - slot) * g.stride * pl.wp;
          for (int64_t ox = 0; ox < g.ow; ox += kPixelRun)
            fn(ring_g, shifted, n, slot, ox, std::min(kPixelRun, g.ow - ox), ring.data());
        }
        for (int64_t o = 0; o < g.o; ++o) {
          for (int64_t r = lo; r < hi; ++r)
            rows[static_cast<size_t>(r - lo)] = ring.data() + (o * k + r % k) * g.ow;
          pool.Row(rows.data(), static_cast<int>(hi - lo), out + ((n * g.o + o) * ph + py) * pw);
        }
      }
    }
  });
}

}  // namespace dorefa
