// The float first layer of a network, fused: conv (no bias) -> max-pool k x k / k ->
// + bias -> f_a quantization to `bits`-bit codes, for float32 input (N, C, H, W).
//
// Exactness. The codes are those of one spec (conv_float_quantize in
// dorefa/kernels/reference.py): each conv output accumulated in double, sequentially over
// (c, kh, kw) from 0.0 (a product of two floats is exact in double, 24 + 24 bits < 53, so every
// step is one rounding, fused (FMA) or not), rounded to float32, pooled (max; rounding is
// monotone, so pooling before or after it is the same), and, in float32 as torch/numpy do it:
//   z = pooled + bias;  code = Q(pooled) = rint(clip(z, 0, 1) * (2^bits - 1))  (rint: half even).
// The scalar rows and the AVX-512 path compute exactly that. The AVX2 path sums in float32
// (twice the lanes) and proves each code instead: a float32 FMA dot product of n taps is within
// gamma_n * S of the exact sum (gamma_n = n u / (1 - n u), u = 2^-24, S = sum |w x| <=
// ||w_o||_1 * max|x|), the double sum within gamma_n(2^-53) * S, so with E >= both together
// (FloatConvPlan::eps) the spec's pooled value lies in [M - E, M + E] (M = the float32 pooled
// sum; max is 1-Lipschitz, rounding to float32 monotone). Q is monotone, so when
// Q(M - E) == Q(M + E) that is the code; otherwise (a value within E of a step) the code is
// recomputed by the spec's double sums (PendingCodes). Inputs for which the bound is not finite
// (NaN, Inf, |x| or ||w_o||_1 > 1e15) have every code recomputed so.
// S has a second bound, per window (Cauchy-Schwarz): S <= ||w_o||_2 ||x_win||_2. A direct path
// that cannot prove a code of pooled pixel p with E = eps[o] tries again with
// E = min(eps[o], eps2[o] N_p + 2 FLT_MIN), N_p the largest norm of p's windows (WindowNorm,
// computed only for such pixels, once per channel group of the path: up to 96 channels on zmm,
// 24 on ymm), and queues what is still not proved. On svhn's 8-bit first layer with random normal
// input that leaves 0.36% of the codes to the double sums instead of 1.45%.
#ifndef DOREFA_CSRC_CONV_FLOAT_H_
#define DOREFA_CSRC_CONV_FLOAT_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

namespace dorefa {

struct FloatConvGeom {
  int64_t n = 0, c = 0, h = 0, w = 0, o = 0, kh = 0, kw = 0;
  int64_t stride = 1, pad = 0, pool = 1;
  int64_t oh = 0, ow = 0;  // conv output size (before pooling)
  int64_t ph = 0, pw = 0;  // pooled output size: floor(oh / pool), floor(ow / pool)
  int bits = 1;
};

// Codes a vector path could not prove (header comment), queued by the thread that found them
// and computed when its share of the pixels is done (ConvFloatQuantize): the spec's double sums
// of kChains outputs in lockstep over the taps, independent chains, instead of one chain a code
// whose every add waits for the one before (a code took ~4 cycles a tap; 10-12% of AlexNet's
// and svhn's first layers with 2- and 8-bit codes on Zen 4).
struct FloatConvPlan;
class PendingCodes {
 public:
  void Add(int64_t n, int64_t o, int64_t py, int64_t px, uint8_t* dst) {
    items_.push_back({n, o, py, px, dst});
  }
  size_t size() const { return items_.size(); }
  // Writes every queued code (the spec's, from double sums) to its place; empties the queue.
  void Flush(const FloatConvGeom& g, const FloatConvPlan& p);

 private:
  struct Item {
    int64_t n, o, py, px;
    uint8_t* dst;
  };
  std::vector<Item> items_;
  std::vector<double> sums_;
};

// The operands of every path, prepared once per call by ConvFloatQuantize and ConvFloatOut in
// the calling thread's scratch. Inputs are zero padded (N, C, HP, WP); "tap-major" weights are
// (taps, ostride) with ostride = O rounded up to 16 and the extra channels zero.
struct FloatConvPlan {
  int64_t hp = 0, wp = 0, taps = 0, ostride = 0;
  const float* xf = nullptr;        // input, zero padded (the caller's array without padding)
  const float* w = nullptr;         // weights, (O, taps) as given
  const float* wtf = nullptr;       // weights tap-major (FloatWeights::kTapMajor plans only)
  const float* wtb = nullptr;       // (ceil(O / kBlock), taps, kBlock) (kBlocked plans only)
  const float* bias = nullptr;      // (ostride), zero filled
  const float* eps = nullptr;       // (ostride): E of channel o (header comment), float paths only
  const float* eps2 = nullptr;      // (ostride): E per unit of window norm (header comment)
  const int64_t* offs = nullptr;    // (taps): tap (c, i, j)'s offset in an image, (c HP + i) WP + j
  PendingCodes* pending = nullptr;  // the calling thread's queue (codes paths with a bound)
};

// N_p of the header comment: the largest ||x_win||_2 over the windows of pooled pixel (py, px)
// of image n (all channels and taps), rounded up.
float WindowNorm(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t py, int64_t px);

// Pooled output pixels (py, px .. px + count - 1) of image n (count in 1..kPixelRun), all
// channels, codes to dst (O, PH, PW) of that image. The vector paths below; the kernel table
// (kernel_table.h) says which one a kernel uses.
using FloatConvPixelFn = void (*)(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n,
                                  int64_t py, int64_t px, int64_t count, uint8_t* dst);
// The AVX2 path's channel group: its weights one contiguous stream a group (tap-major rows of
// all O channels put 2-3 cache lines a tap between a group's loads; AlexNet's 12x12 x 3 taps
// then overflow the L1).
constexpr int64_t kBlock = 24;

// The weight layout a path reads from its FloatConvPlan; the plan holds only that one: tap-major
// `wtf` (zmm, AVX-512 double), blocked `wtb` (ymm), neither (the scalar rows read `w`).
enum class FloatWeights : uint8_t { kNone, kTapMajor, kBlocked };
constexpr int64_t kPixelRun = 4;  // pixels of one row per call (4 FMA chains without a pool)

// The Winograd codes of the layers it fits without a pool (conv_float_winograd.h).
struct WinogradPlan;
using FloatWinogradCodesFn = void (*)(const FloatConvGeom& g, const FloatConvPlan& p,
                                      const WinogradPlan& w, int64_t n, int64_t ty0, int64_t ty1,
                                      uint8_t* out);

// out (N, O, PH, PW) uint8 codes. `pixel` is the vector path (the caller checks CPU support),
// nullptr the portable scalar rows; `winograd` (nullptr: none) the path's Winograd codes, for
// the layers they fit. threads > 1 splits pooled pixels or bands of tile rows (vector paths) or
// (image, channel) pairs (scalar rows).
void ConvFloatQuantize(const FloatConvGeom& g, const float* x, const float* weight,
                       const float* bias, uint8_t* out, FloatConvPixelFn pixel,
                       FloatWeights weights, FloatWinogradCodesFn winograd, int threads);

// The float-output form (a first layer whose output stays float: ResNet's 7x7/2 stem feeding a
// max-pool with padding and a residual stream): out (N, O, OH, OW) = conv + bias in float32.
// Not a spec to the bit (the runtime's float stream is compared within rounding): the vector
// path sums the taps in order with float32 FMAs, the scalar rows in double, rounded once.
// Output pixels (oy, ox .. ox + count - 1) of image n (count in 1..kPixelRun), all channels,
// to dst (O, OH, OW) of that image:
using FloatConvOutFn = void (*)(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n,
                                int64_t oy, int64_t ox, int64_t count, float* dst);
// `winograd` (nullptr: none): the path's Winograd rows, for the layers they fit
// (conv_float_winograd.h), instead of fn.
struct ConvRows;
using TileRowDone = std::function<void(int64_t ty)>;
using FloatWinogradFn = void (*)(const FloatConvGeom& g, const FloatConvPlan& p,
                                 const WinogradPlan& w, int64_t n, int64_t ty0, int64_t ty1,
                                 const ConvRows& dst, const TileRowDone* done);
void ConvFloatOut(const FloatConvGeom& g, const float* x, const float* weight, const float* bias,
                  float* out, FloatConvOutFn fn, FloatWeights weights, FloatWinogradFn winograd,
                  int threads);

// ConvFloatOut followed by a k x k / s max-pool with padding p (MaxPoolFloat's values: padding
// -inf, NaN propagating): out (N, O, PH, PW), the conv's output never whole in memory. Each
// thread takes bands of pooled rows of an image and computes the conv rows they need, each once
// within its band, into a ring of k rows (O x k x OW floats), pooling each output row as soon
// as its window's rows are there (ResNet's stem and its 3 x 3 / 2 pool: 3.2 MB of conv output
// neither written nor read back). The same bits as ConvFloatOut then MaxPoolFloat: the same
// sums, and a max is exact.
void ConvFloatOutMaxPool(const FloatConvGeom& g, const float* x, const float* weight,
                         const float* bias, int64_t k, int64_t s, int64_t p, float* out,
                         FloatConvOutFn fn, FloatWeights weights, FloatWinogradFn winograd,
                         int threads);

// max(start, the bits of |p[i]|) over p[0 .. n): max|p| in float32 as an integer max over the
// bits without the sign (the same order as the floats for finite values and inf; NaN's bits
// are larger still), so it vectorizes. Static: every ISA's file keeps its own copy.
static inline uint32_t MaxAbsBits(const float* p, int64_t n, uint32_t start) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, p + i, sizeof u);
    start = std::max(start, u & 0x7fffffffu);
  }
  return start;
}

// Q(pooled) of the header comment, in float32: z = pooled + b; clip to [0, 1] (NaN -> 0);
// times levels = 2^bits - 1; round half to even (adding and removing 2^23 does that on [0, 255]).
inline uint8_t QuantizeCode(float pooled, float b, float levels) {
  float z = pooled + b;
  z = z > 0.0f ? (z < 1.0f ? z : 1.0f) : 0.0f;
  z *= levels;
  const float r = (z + 8388608.0f) - 8388608.0f;
  return static_cast<uint8_t>(r);
}

#ifdef DOREFA_HAVE_X86_KERNELS
// AVX-512F: double sums, 8 per zmm, 48 channels per group.
void ConvPoolQuantizeAvx512(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t py,
                            int64_t px, int64_t count, uint8_t* dst);
// AVX2 + FMA: float32 sums, 8 per ymm, 24 channels per group, each code proved or recomputed.
void ConvPoolQuantizeAvx2(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t py,
                          int64_t px, int64_t count, uint8_t* dst);
// AVX-512F + FMA, codes: the float32 sums of ConvFloatOutAvx512 (4 pixels, of a row or of a
// pooling window, x up to 96 channels on zmm), each code proved or recomputed as on AVX2.
void ConvPoolQuantizeZmm(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t py,
                         int64_t px, int64_t count, uint8_t* dst);
// AVX2 + FMA, float output: the same float32 sums (4 pixels x 24 channels), + bias, stored.
void ConvFloatOutAvx2(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t oy,
                      int64_t ox, int64_t count, float* dst);
// AVX-512F, float output: the same float32 sums on zmm (4 pixels x up to 96 channels), the same
// bits.
void ConvFloatOutAvx512(const FloatConvGeom& g, const FloatConvPlan& p, int64_t n, int64_t oy,
                        int64_t ox, int64_t count, float* dst);
#endif

}  // namespace dorefa

#endif  // DOREFA_CSRC_CONV_FLOAT_H_
