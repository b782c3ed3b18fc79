// Weight gradient of a DoReFa convolution, per sample, as exact integer sums (integer training,
// dorefa/kernels/training.py; the spec is dorefa/kernels/reference_grad.py):
//
//   S_b[o, k] = sum_p (2 c_b[o, p] - n_g) * X_b[p, k],   k = (ci, kh, kw), p = (oy, ox),
//   X_b[p, k] = x_b[ci, oy * stride + kh - padding, ox * stride + kw - padding] (0 outside),
//
// with c the gradient codes (G bits) and x the activation codes (A bits). Computed as
//   U = sum_p c * X  (unsigned codes: the int8 dot-product instructions),
//   S = 2 U - n_g * Xsum[k],   Xsum[k] = sum_p X[p, k].
//
// Per sample the operands are packed into quads of 4 pixels (the 4 bytes VPDPBUSD sums):
//   cq[o][pq][i]        = c[o, 4 pq + i]                   (uint8, 0 for p >= P)
//   xq[kb][pq][lane][i] = X[4 pq + i, 16 kb + lane] - z    (int8; 0 for p >= P: c is 0 there)
// where z is the kernel's activation shift (x' = x - z must fit its signed operand without
// saturating): sum c * x = sum c * x' + z * Csum[o], Csum[o] = sum_p c[o, p]. Padding pixels
// (p >= P) hold c = 0, so their x' never counts; padding columns (k >= K) are never stored.
#ifndef DOREFA_CSRC_WGRAD_H_
#define DOREFA_CSRC_WGRAD_H_

#include <atomic>
#include <cstdint>

#include "thread_pool.h"

namespace dorefa {

struct WgradGeom {
  int64_t n = 0, o = 0, c = 0, h = 0, w = 0;  // gradient codes (N, O, OH, OW), x (N, C, H, W)
  int64_t kh = 0, kw = 0, stride = 1, padding = 0, oh = 0, ow = 0;
  int g_bits = 1, a_bits = 1;
  int64_t P() const { return oh * ow; }
  int64_t PQ() const { return (P() + 3) / 4; }
  int64_t K() const { return c * kh * kw; }
  int64_t KB() const { return (K() + 15) / 16; }
};

// One sample's packed operands (see the layout above).
struct WgradSample {
  const WgradGeom* g = nullptr;
  const uint8_t* cq = nullptr;  // [O][PQ][4]
  const int8_t* xq = nullptr;   // [KB][PQ][16][4]
};

// A block kernel: u[r][j] = sum_p c * x' (mod 2^32) for channels o0 .. o0 + nr - 1 and columns
// 16 kb0 .. 16 (kb0 + nb) - 1 of one sample (nr <= rows, nb <= blocks of its kernel), u with
// row stride nb * 16.
using WgradBlockFn = void (*)(const WgradSample& s, int64_t o0, int nr, int64_t kb0, int nb,
                              int32_t* u);
// z for (g_bits, a_bits), or -1 when the kernel's products cannot hold the codes exactly.
using WgradShiftFn = int32_t (*)(int g_bits, int a_bits);
struct WgradFinish;
using WgradFinishFn = void (*)(const WgradFinish& f);  // wgrad_finish.h, in the kernel's ISA
struct WgradOutput;
// A whole stride-1 weight gradient that reads the activations in place (no window matrix):
// same results as the packed path; returns the OR of the codes as RunWeightGrad does.
using WgradDirectFn = uint32_t (*)(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                                   const WgradOutput& out, int threads);

struct WgradKernel {
  const char* name;  // "wgrad-vnni", "wgrad-avx2", "wgrad-scalar"
  uint32_t cpu;      // CpuFeature bits it needs
  WgradBlockFn block;
  WgradShiftFn shift;
  WgradFinishFn finish;
  int rows;                        // output channels per block call
  int blocks;                      // 16-column blocks per block call
  WgradDirectFn direct = nullptr;  // stride 1 or P = 1, when set (wgrad_direct.h)
  // The direct kernel's bound on 2 n_g n_a (its pair sums' range; 0: none), beside n_g <= 127.
  int64_t direct_pair_bound = 0;
};

// True when `k`'s direct kernel computes this layer: stride 1 (or one output pixel), the
// gradient factor 2c - n_g an int8 (n_g <= 127), and the kernel's pair sums in range.
// (This and the other helpers used by several ISA files are out of line in wgrad.cpp: an inline
// copy compiled with one ISA file's flags could be the one the linker keeps for all.)
bool DirectFits(const WgradKernel& k, const WgradGeom& g);

// Kernels usable on this CPU, fastest first (the scalar one always).
int WgradKernelCount();
const WgradKernel& WgradKernelAt(int i);

// Where the results go: per-sample sums S (N, O, K) int32 when `s` is set, else
// dw[o, k] = sum_b scale[b] * double(S_b[o, k]), summed from 0 in batch order (double
// multiply, then add: the spec's float steps), into dw (O, K); or, with dw32 set,
// dw32[o, k] = float(dw[o, k] / divisor) (the training entry point's last two steps).
struct WgradOutput {
  int32_t* s = nullptr;
  const double* scale = nullptr;
  double* dw = nullptr;
  float* dw32 = nullptr;
  double divisor = 1.0;
  // Writes the outputs index .. index + n - 1 from the batch sums v[0], v[step], ... (out of
  // line, as DirectFits).
  void Write(int64_t index, const double* v, int64_t n, int64_t step = 1) const;
};

// True when every scale is a float32 value (24 significant bits): then scale_b times an integer
// below 2^29 is exact in double, and a kernel may add it with one FMA (wgrad_outer.h,
// wgrad_direct.h).
bool Float32Scales(const WgradGeom& g, const WgradOutput& out);

// A layer with one output pixel (P = 1): sample b's window X_b[k], k = (ci, r, t), the input
// pixel (r - padding, t - padding) or 0. Returns x_b itself when the window is the whole
// unpadded input (WindowIsInput: a conv over its map, a linear layer), else row (K bytes)
// filled with it.
bool WindowIsInput(const WgradGeom& g);
const uint8_t* OnePixelWindow(const WgradGeom& g, const uint8_t* x, int64_t b, uint8_t* row);

// The weight gradient from gradient codes c (N, O, OH, OW) and activation codes x
// (N, C, H, W) on `kernel` (the scalar kernel for bit pairs its shift refuses): the samples
// are packed in parallel, then the (channel, column) blocks are split over up to `threads`
// threads, each running the whole batch in order (results do not depend on the thread count).
// Returns the OR of all codes of c (low byte) and of x (second byte).
uint32_t RunWeightGrad(const WgradKernel& kernel, const WgradGeom& g, const uint8_t* c,
                       const uint8_t* x, const WgradOutput& out, int threads);

// Runs pack(b, scratch) for every sample b, samples split over threads (one Scratch per
// thread), and returns the OR of its results (the codes' OR: c low byte, x second byte).
template <class Scratch, class PackOne>
uint32_t PackSamples(int threads, int64_t n, PackOne&& pack) {
  std::atomic<uint32_t> ors{0};
  ParallelForOrThrow(threads, n, [&](int64_t begin, int64_t end) {
    Scratch scratch;
    uint32_t mine = 0;
    for (int64_t b = begin; b < end; ++b) mine |= pack(b, scratch);
    ors.fetch_or(mine);
  });
  return ors.load();
}

#ifdef DOREFA_HAVE_X86_KERNELS
extern const WgradKernel kWgradAvx2;
extern const WgradKernel kWgradVnni;
// The kernels' `direct` (wgrad_vnni_direct.cpp, wgrad_avx2_direct.cpp on wgrad_direct.h):
// stride 1, or one output pixel at any stride; P = 1 in dW mode goes to the scales' digits
// (wgrad_digits.h, VNNI, integer scales) or else, with float32-valued scales, to the float64
// outer-product sum (wgrad_outer.h).
uint32_t WeightGradDirectVnni(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                              const WgradOutput& out, int threads);
uint32_t WeightGradDirectAvx2(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                              const WgradOutput& out, int threads);
#endif
#ifdef DOREFA_HAVE_AMX
// `wgrad-amx`: wgrad-vnni with the direct route's per-sample sums on AMX tiles
// (wgrad_amx.cpp; one output pixel and the smallest maps stay on the VNNI code).
extern const WgradKernel kWgradAmx;
uint32_t WeightGradDirectAmx(const WgradGeom& g, const uint8_t* c, const uint8_t* x,
                             const WgradOutput& out, int threads);
#endif
extern const WgradKernel kWgradScalar;

}  // namespace dorefa

#endif  // DOREFA_CSRC_WGRAD_H_
