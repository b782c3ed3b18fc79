// Work split shared by all kernels: output pixel tiles x output channel chunks.
#include <algorithm>

#include "bitconv.h"

namespace dorefa {

void BitConvAcc(const KernelInfo& kernel, const ConvGeom& g, const uint64_t* xpk,
                const uint64_t* wpk, int32_t* acc, int threads) {
  const int64_t npix = g.OutPixels();
  const int64_t ptile = kernel.pix_tile;
  const int64_t ntiles = (npix + ptile - 1) / ptile;
  // With few pixel tiles (batch 1, tiny feature maps) also split the output channels so that
  // every thread has work; otherwise one call covers all channels of its pixel tile, which
  // keeps that tile's activation words hot in L1 while the weights stream from L2.
  int64_t ochunks = 1;
  if (threads > 1 && ntiles < 4 * threads) {
    ochunks = std::min<int64_t>(g.ob, (4 * threads + ntiles - 1) / ntiles);
  }
  const int64_t ob_per_chunk = (g.ob + ochunks - 1) / ochunks;
  ochunks = (g.ob + ob_per_chunk - 1) / ob_per_chunk;
  const int64_t items = ntiles * ochunks;
#ifdef DOREFA_HAVE_OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && items > 1)
#endif
  for (int64_t it = 0; it < items; ++it) {
    const int64_t t = it / ochunks, oc = it % ochunks;
    const int64_t pix0 = t * ptile;
    const int64_t ob0 = oc * ob_per_chunk;
    kernel.tile(g, xpk, wpk, pix0, std::min(ptile, npix - pix0), ob0,
                std::min(ob_per_chunk, g.ob - ob0), acc);
  }
  (void)threads;
}

}  // namespace dorefa
