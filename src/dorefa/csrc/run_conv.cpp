#include "run_conv.h"

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
  std::vector<int32_t> u, rows;
  std::vector<uint16_t> neg;
  if (out.mode == Epilogue::kRequant && out.t >= kSearchMinT) {
    ep.table = &TableOf(out.table, g.o, out.thresholds, out.t, out.direction);
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

}  // namespace

uint8_t RunConv(const KernelEntry& kernel, const ConvGeom& g, const uint8_t* x, const uint64_t* wpk,
                const ConvOutput& out, int threads, bool fields) {
  if (kernel.int8 != nullptr) return RunInt8Conv(*kernel.int8, g, x, wpk, out, threads);
  static thread_local Scratch<uint64_t> scratch, field_scratch;
  uint64_t* xpk = scratch.Get(static_cast<size_t>(g.XpkSize()));
  const bool fused = (kernel.fused_modes & ModeBit(out.mode)) != 0;
  if (fields) {  // packed first, then the 1 x 1 convolution over the dense fields (fields.h)
    const ConvGeom gf = FieldGeom(g);
    uint64_t* xf = field_scratch.Get(static_cast<size_t>(gf.XpkSize()));
    const uint8_t all_or =
        PackFields(kernel.packer.fn, kernel.packer.fields, g, x, xpk, xf, threads);
    if (fused)
      RunFused(kernel, nullptr, gf, nullptr, xf, wpk, out, threads);
    else
      RunTwoPass(kernel, nullptr, gf, nullptr, xf, wpk, out, threads);
    return all_or;
  }
  if (fused) return RunFused(kernel, kernel.packer.fn, g, x, xpk, wpk, out, threads);
  return RunTwoPass(kernel, kernel.packer.fn, g, x, xpk, wpk, out, threads);
}

}  // namespace dorefa
