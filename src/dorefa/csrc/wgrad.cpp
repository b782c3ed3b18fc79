// Weight-gradient driver (wgrad.h): packing, the portable block kernel, the table of kernels,
// and the two parallel phases (pack every sample; then every block of output channels and
// columns over the whole batch, in batch order).
#include "wgrad.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "cpu_features.h"
#include "thread_pool.h"
#include "wgrad_finish.h"

namespace dorefa {
namespace {

// floor(a / b) for b > 0 (C++ division truncates towards zero).
int64_t FloorDiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// X[p, k] - z of one sample into xq (layout in wgrad.h), through `rows` (K x PQ*4 bytes of
// scratch: the window matrix, one contiguous row per column k, built from runs of input row);
// returns the OR of the codes read and writes xsum[k] = sum_p X[p, k].
uint8_t PackWindows(const WgradGeom& g, const uint8_t* x, int32_t z, int8_t* xq, int32_t* xsum,
                    std::vector<uint8_t>& rows) {
  const int64_t pq_count = g.PQ(), width = pq_count * 4;
  rows.assign(static_cast<size_t>(g.K() * width), 0);
  uint8_t all = 0;
  int64_t k = 0;
  for (int64_t ci = 0; ci < g.c; ++ci) {
    const uint8_t* xc = x + ci * g.h * g.w;
    for (int64_t r = 0; r < g.kh; ++r) {
      for (int64_t t = 0; t < g.kw; ++t, ++k) {
        uint8_t* row = rows.data() + k * width;
        // output columns whose input column t - padding + ox * stride is inside [0, w)
        const int64_t first = std::max<int64_t>(0, -FloorDiv(t - g.padding, g.stride));
        const int64_t last =
            std::min<int64_t>(g.ow, FloorDiv(g.w - 1 + g.padding - t, g.stride) + 1);
        for (int64_t oy = 0; oy < g.oh; ++oy) {
          const int64_t iy = oy * g.stride + r - g.padding;
          if (iy < 0 || iy >= g.h || first >= last) continue;
          const uint8_t* src = xc + iy * g.w + first * g.stride + t - g.padding;
          uint8_t* dst = row + oy * g.ow;
          for (int64_t ox = first; ox < last; ++ox, src += g.stride) dst[ox] = *src;
        }
        int32_t sum = 0;
        uint8_t any = 0;
        for (int64_t p = 0; p < g.P(); ++p) {
          sum += row[p];
          any |= row[p];
          row[p] = static_cast<uint8_t>(row[p] - z);  // x' = x - z, as int8 bits
        }
        xsum[k] = sum;
        all |= any;
      }
    }
  }
  // Transpose in 4-byte words: xq[kb][pq][lane] = rows[16 kb + lane][4 pq .. 4 pq + 3].
  for (int64_t kb = 0; kb < g.KB(); ++kb) {
    const int64_t lanes = std::min<int64_t>(16, g.K() - kb * 16);
    int8_t* dst = xq + kb * pq_count * 64;
    for (int64_t pq = 0; pq < pq_count; ++pq, dst += 64)
      for (int64_t lane = 0; lane < lanes; ++lane)
        std::memcpy(dst + lane * 4, rows.data() + (kb * 16 + lane) * width + pq * 4, 4);
  }
  return all;
}

// c[o, p] of one sample into cq (pixel quads past P zero); csum[o] = sum_p c. Returns the OR.
uint8_t PackGrads(const WgradGeom& g, const uint8_t* c, uint8_t* cq, int32_t* csum) {
  const int64_t quads = g.PQ() * 4;
  uint8_t all = 0;
  for (int64_t o = 0; o < g.o; ++o) {
    const uint8_t* row = c + o * g.P();
    uint8_t* dst = cq + o * quads;
    int32_t sum = 0;
    for (int64_t p = 0; p < g.P(); ++p) {
      all |= row[p];
      sum += row[p];
      dst[p] = row[p];
    }
    std::fill(dst + g.P(), dst + quads, uint8_t{0});
    csum[o] = sum;
  }
  return all;
}

void BlockScalar(const WgradSample& s, int64_t o0, int nr, int64_t kb0, int nb, int32_t* u) {
  const int64_t pq_count = s.g->PQ();
  for (int r = 0; r < nr; ++r) {
    const uint8_t* co = s.cq + (o0 + r) * pq_count * 4;
    for (int j = 0; j < nb * 16; ++j) {
      const int8_t* col = s.xq + (kb0 + j / 16) * pq_count * 64 + (j % 16) * 4;
      uint32_t acc = 0;
      for (int64_t pq = 0; pq < pq_count; ++pq)
        for (int i = 0; i < 4; ++i)
          acc += static_cast<uint32_t>(co[pq * 4 + i] * static_cast<int32_t>(col[pq * 64 + i]));
      u[r * nb * 16 + j] = static_cast<int32_t>(acc);
    }
  }
}

// x' = x - z must be s8 (the packed layout is shared with the SIMD kernels).
int32_t ShiftScalar(int, int a_bits) { return a_bits == 8 ? 128 : 0; }

void FinishScalar(const WgradFinish& f) { FinishBlock(f); }

}  // namespace

const WgradKernel kWgradScalar = {"wgrad-scalar", 0,          &BlockScalar, &ShiftScalar,
                                  &FinishScalar,  /*rows=*/4, /*blocks=*/1};

namespace {

std::vector<const WgradKernel*> Usable() {
  std::vector<const WgradKernel*> out;
#ifdef DOREFA_HAVE_AMX
  if ((CpuFeatures() & kWgradAmx.cpu) == kWgradAmx.cpu) out.push_back(&kWgradAmx);
#endif
#ifdef DOREFA_HAVE_X86_KERNELS
  for (const WgradKernel* k : {&kWgradVnni, &kWgradAvx2})
    if ((CpuFeatures() & k->cpu) == k->cpu) out.push_back(k);
#endif
  out.push_back(&kWgradScalar);
  return out;
}

const std::vector<const WgradKernel*>& Table() {
  static const std::vector<const WgradKernel*> table = Usable();
  return table;
}

// Every sample packed: operands, the channel sums of c and the column sums of x.
struct Packed {
  int64_t cq_size, xq_size;
  std::vector<uint8_t> cq;
  std::vector<int8_t> xq;
  std::vector<int32_t> csum, xsum;
  Packed(const WgradGeom& g)
      : cq_size(g.o * g.PQ() * 4),
        xq_size(g.KB() * g.PQ() * 64),
        cq(static_cast<size_t>(g.n * cq_size)),
        xq(static_cast<size_t>(g.n * xq_size), int8_t{0}),
        csum(static_cast<size_t>(g.n * g.o)),
        xsum(static_cast<size_t>(g.n * g.K())) {}
  WgradSample Sample(const WgradGeom& g, int64_t b) const {
    return {&g, cq.data() + b * cq_size, xq.data() + b * xq_size};
  }
};

// Output channels per tile: its double accumulators (kTileRows x 64) stay in L1 across the
// batch, and each sample's columns are reused by kTileRows / rows block calls.
constexpr int64_t kTileRows = 24;

// The tile of channels [o_begin, o_end) and columns [16 kb0, 16 (kb0 + nb)), over the batch in
// order.
void RunTile(const WgradKernel& k, const WgradGeom& g, const Packed& pk, int32_t z,
             const WgradOutput& out, int64_t o_begin, int64_t o_end, int64_t kb0, int nb,
             std::vector<int32_t>& u, std::vector<double>& acc) {
  const int64_t width = nb * 16, k0 = kb0 * 16;
  const int64_t cols = std::min<int64_t>(width, g.K() - k0);
  std::fill(acc.begin(), acc.end(), 0.0);
  WgradFinish f;
  f.u = u.data(), f.width = width, f.cols = cols, f.z = static_cast<uint32_t>(z);
  f.ng = (1u << g.g_bits) - 1;
  for (int64_t b = 0; b < g.n; ++b) {
    const WgradSample sample = pk.Sample(g, b);
    for (int64_t o0 = o_begin; o0 < o_end; o0 += k.rows) {
      const int nr = static_cast<int>(std::min<int64_t>(k.rows, o_end - o0));
      k.block(sample, o0, nr, kb0, nb, u.data());
      f.nr = nr;
      f.csum = pk.csum.data() + b * g.o + o0;
      f.xsum = pk.xsum.data() + b * g.K() + k0;
      if (out.s != nullptr) {
        f.s = out.s + (b * g.o + o0) * g.K() + k0, f.s_stride = g.K();
      } else {
        f.scale = out.scale[b], f.acc = acc.data() + (o0 - o_begin) * width;
      }
      k.finish(f);
    }
  }
  if (out.s != nullptr) return;
  for (int64_t o = o_begin; o < o_end; ++o)
    out.Write(o * g.K() + k0, acc.data() + (o - o_begin) * width, cols);
}

}  // namespace

bool DirectFits(const WgradKernel& k, const WgradGeom& g) {
  const int64_t ng = (int64_t{1} << g.g_bits) - 1, na = (int64_t{1} << g.a_bits) - 1;
  return k.direct != nullptr && (g.stride == 1 || g.P() == 1) && ng <= 127 &&
         (k.direct_pair_bound == 0 || 2 * ng * na <= k.direct_pair_bound);
}

bool Float32Scales(const WgradGeom& g, const WgradOutput& out) {
  for (int64_t b = 0; b < g.n; ++b)
    if (static_cast<double>(static_cast<float>(out.scale[b])) != out.scale[b]) return false;
  return true;
}

bool WindowIsInput(const WgradGeom& g) { return g.padding == 0 && g.kh == g.h && g.kw == g.w; }

const uint8_t* OnePixelWindow(const WgradGeom& g, const uint8_t* x, int64_t b, uint8_t* row) {
  const uint8_t* xb = x + b * g.c * g.h * g.w;
  if (WindowIsInput(g)) return xb;
  for (int64_t ci = 0, k = 0; ci < g.c; ++ci)
    for (int64_t r = 0; r < g.kh; ++r)
      for (int64_t t = 0; t < g.kw; ++t, ++k) {
        const int64_t iy = r - g.padding, ix = t - g.padding;
        const bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
        row[k] = inside ? xb[(ci * g.h + iy) * g.w + ix] : 0;
      }
  return row;
}

void WgradOutput::Write(int64_t index, const double* v, int64_t n, int64_t step) const {
  for (int64_t j = 0; j < n; ++j) {
    if (dw32 != nullptr) {
      dw32[index + j] = static_cast<float>(v[j * step] / divisor);
    } else {
      dw[index + j] = v[j * step];
    }
  }
}

int WgradKernelCount() { return static_cast<int>(Table().size()); }
const WgradKernel& WgradKernelAt(int i) { return *Table()[static_cast<size_t>(i)]; }

uint32_t RunWeightGrad(const WgradKernel& kernel, const WgradGeom& g, const uint8_t* c,
                       const uint8_t* x, const WgradOutput& out, int threads) {
  if (DirectFits(kernel, g)) return kernel.direct(g, c, x, out, threads);
  int32_t z = kernel.shift(g.g_bits, g.a_bits);
  const WgradKernel& k = z < 0 ? kWgradScalar : kernel;
  if (z < 0) z = kWgradScalar.shift(g.g_bits, g.a_bits);
  Packed pk(g);
  const uint32_t ors = PackSamples<std::vector<uint8_t>>(threads, g.n, [&](int64_t b, auto& rows) {
    const uint32_t cs =
        PackGrads(g, c + b * g.o * g.P(), pk.cq.data() + b * pk.cq_size, pk.csum.data() + b * g.o);
    const uint32_t xs = PackWindows(g, x + b * g.c * g.h * g.w, z, pk.xq.data() + b * pk.xq_size,
                                    pk.xsum.data() + b * g.K(), rows);
    return cs | xs << 8;
  });
  const int64_t tile_rows = std::max<int64_t>(k.rows, kTileRows / k.rows * k.rows);
  const int64_t row_tiles = (g.o + tile_rows - 1) / tile_rows;
  const int64_t col_blocks = (g.KB() + k.blocks - 1) / k.blocks;
  ParallelForOrThrow(threads, row_tiles * col_blocks, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> u(static_cast<size_t>(k.rows * k.blocks * 16));
    std::vector<double> acc(out.s != nullptr ? 0 : static_cast<size_t>(tile_rows * k.blocks * 16));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o_begin = (t % row_tiles) * tile_rows, kb0 = (t / row_tiles) * k.blocks;
      const int nb = static_cast<int>(std::min<int64_t>(k.blocks, g.KB() - kb0));
      RunTile(k, g, pk, z, out, o_begin, std::min(g.o, o_begin + tile_rows), kb0, nb, u, acc);
    }
  });
  return ors;
}

}  // namespace dorefa
