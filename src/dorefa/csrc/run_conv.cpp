#include "run_conv.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "fields.h"
#include "int8conv.h"
#include "output_transform.h"
#include "requant_table.h"
#include "scratch.h"

namespace dorefa {
namespace {

// The epilogue in the tile kernel: no int32 round trip through memory.
uint8_t RunFused(const KernelEntry& kernel, PackFn pack, const ConvGeom& g, const uint8_t* x,
                 uint64_t* xpk, const uint64_t* wpk, const ConvOutput& out, int threads) {
  Epilogue ep;
  ep.mode = out.mode;
  std::vector<int32_t> u, rows, lane_u, lane_neg;
  std::vector<uint16_t> neg;
  if (out.mode == Epilogue::kRequant && out.t >= kSearchMinT) {
    ep.table = &TableOf(out.table, g.o, out.thresholds, out.t, out.direction);
    ep.t = out.t;
    ep.codes = out.codes;
  } else if (out.mode == Epilogue::kRequant && kernel.tiles->lane_thresholds) {
    lane_u.resize(static_cast<size_t>(g.ob * out.t * kLanes));
    lane_neg.resize(static_cast<size_t>(g.ob * kLanes));
    LaneThresholds(g, out.thresholds, out.t, out.direction, lane_u.data(), lane_neg.data());
    ep.lane_u = lane_u.data();
    ep.lane_neg = lane_neg.data();
    ep.t = out.t;
    ep.codes = out.codes;
  } else if (out.mode == Epilogue::kRequant) {
    neg.resize(static_cast<size_t>(g.ob * (kLanes / 2)));
    const bool search = out.t >= kSearchRowsMinT && out.t < kSearchRow;
    u.resize(static_cast<size_t>(ExpandedThresholdsSize(g, search ? 0 : out.t)));
    ExpandThresholds(g, out.thresholds, search ? 0 : out.t, out.direction, u.data(), neg.data());
    if (search) {
      rows.resize(static_cast<size_t>(SearchRowsSize(g)));
      SearchRows(g, out.thresholds, out.t, out.direction, rows.data());
      ep.rows = rows.data();
    }
    ep.u = u.data();
    ep.neg = neg.data();
    ep.t = out.t;
    ep.codes = out.codes;
  }
  return RunBitConvFused(*kernel.tiles, pack, g, x, xpk, wpk, out.acc, ep, threads);
}

// Accumulators first (kSigned: transformed in the same parallel region), then for kRequant
// the thresholds in a second pass over an int32 buffer (kept per thread: a fresh one was a
// fresh mapping to page-fault and zero on every call, 2.6 MB for svhn 48->64 at batch 32).
uint8_t RunTwoPass(const KernelEntry& kernel, PackFn pack, const ConvGeom& g, const uint8_t* x,
                   uint64_t* xpk, const uint64_t* wpk, const ConvOutput& out, int threads) {
  static thread_local Scratch<int32_t> tmp;
  int32_t* acc = out.acc;
  if (out.mode == Epilogue::kRequant) acc = tmp.Get(static_cast<size_t>(g.n * g.o * g.oh * g.ow));
  const uint8_t all_or =
      RunBitConv(*kernel.tiles, pack, g, x, xpk, wpk, acc, out.mode != Epilogue::kAcc, threads);
  if (out.mode == Epilogue::kRequant)
    Requantize(g, acc, out.thresholds, out.t, out.direction, out.table, out.codes, threads);
  return all_or;
}

// The calling thread's packed activations (bitconv.h layout), kept between calls.
thread_local Scratch<uint64_t> packed;

// The tile kernel with the epilogue fused in where it has the mode, else two passes; `pack`
// nullptr when xpk is already packed.
uint8_t RunTiles(const KernelEntry& kernel, PackFn pack, const ConvGeom& g, const uint8_t* x,
                 uint64_t* xpk, const uint64_t* wpk, const ConvOutput& out, int threads) {
  if (kernel.fused_modes & ModeBit(out.mode))
    return RunFused(kernel, pack, g, x, xpk, wpk, out, threads);
  return RunTwoPass(kernel, pack, g, x, xpk, wpk, out, threads);
}

// The dense fields take about KH * KW times the packed activations' memory (fields.h): a batch
// whose fields would pass this many bytes runs in chunks of images, each packed and convolved
// in turn (outputs are image-major), so the per-thread buffer stays bounded whatever the batch
// (AlexNet conv1's groups: 0.9 MB an image, 36 images a chunk).
std::atomic<int64_t> field_bytes{int64_t{32} << 20};

uint8_t RunFields(const KernelEntry& kernel, const ConvGeom& g, const uint8_t* x,
                  const uint64_t* wpk, const ConvOutput& out, int threads) {
  static thread_local Scratch<uint64_t> field_scratch;
  if (g.n == 0) return 0;
  ConvGeom one = g;
  one.n = 1;
  const int64_t image_bytes = FieldGeom(one).XpkSize() * int64_t{8};
  const int64_t chunk = std::clamp<int64_t>(field_bytes.load() / image_bytes, 1, g.n);
  uint8_t all_or = 0;
  for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
    ConvGeom gc = g;
    gc.n = std::min(chunk, g.n - n0);
    ConvOutput oc = out;
    const int64_t skip = n0 * g.o * g.oh * g.ow;  // outputs of the images before the chunk
    if (oc.acc != nullptr) oc.acc += skip;
    if (oc.codes != nullptr) oc.codes += skip;
    const ConvGeom gf = FieldGeom(gc);
    uint64_t* xpk = packed.Get(static_cast<size_t>(gc.XpkSize()));
    uint64_t* xf = field_scratch.Get(static_cast<size_t>(gf.XpkSize()));
    all_or |= PackFields(kernel.packer.fn, kernel.packer.fields, gc, x + n0 * g.c * g.h * g.w, xpk,
                         xf, threads);
    RunTiles(kernel, nullptr, gf, nullptr, xf, wpk, oc, threads);
  }
  return all_or;
}

}  // namespace

int64_t FieldBufferBytes(int64_t bytes) {
  return bytes > 0 ? field_bytes.exchange(bytes) : field_bytes.load();
}

uint8_t RunConv(const KernelEntry& kernel, const ConvGeom& g, const uint8_t* x, const uint64_t* wpk,
                const ConvOutput& out, int threads, bool fields) {
  if (g.n == 0) return 0;  // no image: nothing to read or write (the kernels' splits assume one)
  if (kernel.int8 != nullptr) return RunInt8Conv(*kernel.int8, g, x, wpk, out, threads);
  if (fields) return RunFields(kernel, g, x, wpk, out, threads);
  uint64_t* xpk = packed.Get(static_cast<size_t>(g.XpkSize()));
  return RunTiles(kernel, kernel.packer.fn, g, x, xpk, wpk, out, threads);
}

}  // namespace dorefa
