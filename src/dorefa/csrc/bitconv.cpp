// Work split shared by all kernels, and the parallel region that runs a convolution.
#include "bitconv.h"

#include <algorithm>
#include <vector>

#include "bitpack.h"
#include "output_transform.h"
#include "scratch.h"
#include "thread_pool.h"
#include "work_queue.h"

namespace dorefa {
namespace {

// Work below which one more thread does not pay (bit-plane MACs, ~3 us at ~1.5 T bit-MAC/s).
// It was 16 M: in a network at 2 threads, a layer left on one thread reads what both cores
// wrote before and pays for the lines moving across (svhn (1,2,6) at batch 1 on 2 threads 0.174
// -> 0.158 ms, ResNet-18 4-5% faster, AlexNet and batch 32 the same, Zen 4, 2026-12-05).
constexpr int64_t kMinBitMacsPerThread = int64_t{4} << 20;

// ep == nullptr: tiles.acc, then (signed_output) SignedFromAcc; else tiles.fused with *ep.
uint8_t Run(const TileKernel& tiles, PackFn pack, const ConvGeom& g, const uint8_t* x,
            uint64_t* xpk, const uint64_t* wpk, int32_t* acc, bool signed_output, int threads,
            const Epilogue* ep) {
  if (ep != nullptr) signed_output = false;
  // Small convolutions run on one thread: handing work to the others costs more than it saves
  // (a job and its barriers cost microseconds even when the pool's threads are spinning, and
  // waking a sleeping one took 50-80 us on the 2-core VM this was tuned on, against 10-30 us
  // for a whole 4-12 MMAC layer). About 3 us of single-thread work per extra thread (below).
  const int64_t bit_macs = g.OutPixels() * g.o * g.c * g.kh * g.kw * g.x_bits * g.w_bits;
  threads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(threads, bit_macs / kMinBitMacsPerThread)));
  if (pack != nullptr) ZeroPaddingBorder(g, xpk);
  const int64_t pack_items = pack != nullptr ? PackItems(g) : 0;
  const int64_t npix = g.OutPixels();
  const int64_t ptile = tiles.pix_tile;
  const int64_t ntiles = (npix + ptile - 1) / ptile;
  // With few pixel tiles (batch 1, tiny feature maps) also split the output channels so that
  // every thread has work, in whole register tiles of channel blocks (tiles.ob_tile), about
  // two items per thread: each call sets up its pixels (addresses, image boundaries) once,
  // and with AlexNet conv3 at batch 1 on 2 threads, 16 items per thread (finer load balance)
  // were 5% slower than two, 4 were 1.5% slower. Otherwise one call covers all channels of its
  // pixel tile, which keeps that tile's activation words hot in L1 while the weights stream from
  // L2.
  int64_t ochunks = 1;
  const int64_t ob_units = (g.ob + tiles.ob_tile - 1) / tiles.ob_tile;
  if (threads > 1 && ntiles < 4 * threads) {
    ochunks = std::min<int64_t>(ob_units, (2 * threads + ntiles - 1) / ntiles);
  }
  const int64_t ob_per_chunk =
      std::max<int64_t>(1, (ob_units + ochunks - 1) / ochunks) * tiles.ob_tile;
  ochunks = (g.ob + ob_per_chunk - 1) / ob_per_chunk;
  const int64_t conv_items = ntiles * ochunks;
  const int nt = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(threads, std::max(pack_items, conv_items))));

  // When the channels are split (small inputs), every thread packs the whole input into its
  // own buffer instead of sharing the packing: a few microseconds of duplicate work against a
  // barrier and packed words that would move between the cores' caches on every call.
  const bool private_pack = pack != nullptr && nt > 1 && ochunks > 1;
  // The copies of threads 1.. are allocated here, on the calling thread, where an allocation
  // failure is an exception for Python rather than std::terminate in a worker; kept between
  // calls (per calling thread), like xpk itself.
  // (A thread_local named inside the worker lambda would be the worker thread's own: the
  // lambda captures this reference to the caller's instead.)
  static thread_local std::vector<Scratch<uint64_t>> caller_copies;
  std::vector<uint64_t*> copies;
  if (private_pack) {
    if (caller_copies.size() < static_cast<size_t>(nt - 1))
      caller_copies.resize(static_cast<size_t>(nt - 1));
    for (int k = 0; k < nt - 1; ++k)
      copies.push_back(caller_copies[k].Get(static_cast<size_t>(g.XpkSize())));
  }
  // Packing from home ranges too: thread k packs about the images whose pixels its
  // convolution home range covers, so most packed words are read on the core that wrote them.
  WorkQueue sign_q(npix, nt);
  HomeQueue pack_q(pack_items, nt);
  HomeQueue conv_q(conv_items, nt);
  // Every thread runs this; `barrier` separates the phases (conv reads all of xpk, the
  // signed transform rewrites acc entries written by any thread).
  auto worker = [&](int tid, auto&& barrier) -> uint8_t {
    uint8_t ors = 0;
    int64_t b, e;
    const uint64_t* xs = xpk;
    if (private_pack) {
      uint64_t* mine = xpk;
      if (tid > 0) {
        mine = copies[tid - 1];
        ZeroPaddingBorder(g, mine);
      }
      ors = pack(g, x, mine, 0, pack_items);
      xs = mine;
    } else {
      int64_t item;
      while (pack_q.Next(tid, &item)) ors |= pack(g, x, xpk, item, item + 1);
      if (pack != nullptr) barrier();
    }
    int64_t it;
    while (conv_q.Next(tid, &it)) {
      // Channel chunk major: a home range is a set of whole channel chunks when channels
      // are split.
      const int64_t oc = it / ntiles, t = it % ntiles;
      const int64_t pix0 = t * ptile, ob0 = oc * ob_per_chunk;
      if (ep != nullptr) {
        tiles.fused(g, xs, wpk, pix0, std::min(ptile, npix - pix0), ob0,
                    std::min(ob_per_chunk, g.ob - ob0), acc, *ep);
      } else {
        tiles.acc(g, xs, wpk, pix0, std::min(ptile, npix - pix0), ob0,
                  std::min(ob_per_chunk, g.ob - ob0), acc);
      }
    }
    if (signed_output) {
      barrier();
      while (sign_q.Next(&b, &e)) SignedFromAcc(g, xpk, acc, b, e);
    }
    return ors;
  };

  return ParallelOr(nt, worker);
}

}  // namespace

uint8_t RunBitConv(const TileKernel& tiles, PackFn pack, const ConvGeom& g, const uint8_t* x,
                   uint64_t* xpk, const uint64_t* wpk, int32_t* acc, bool signed_output,
                   int threads) {
  return Run(tiles, pack, g, x, xpk, wpk, acc, signed_output, threads, nullptr);
}

uint8_t RunBitConvFused(const TileKernel& tiles, PackFn pack, const ConvGeom& g, const uint8_t* x,
                        uint64_t* xpk, const uint64_t* wpk, int32_t* acc, const Epilogue& ep,
                        int threads) {
  return Run(tiles, pack, g, x, xpk, wpk, acc, false, threads, &ep);
}

}  // namespace dorefa
