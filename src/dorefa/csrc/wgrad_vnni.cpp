// AVX-512 VNNI weight-gradient block (wgrad.h): 6 output channels x 64 columns (4 blocks of
// 16 lanes), 24 zmm accumulators; per pixel quad, 4 column loads and 6 broadcast gradient
// quads feed 24 VPDPBUSD (u8 gradient codes x s8 shifted activations, int32 sums without
// saturation). One call covers one sample's pixel quads; the driver runs the batch.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu_features.h"
#include "unroll.h"
#include "wgrad.h"
#include "wgrad_finish.h"

namespace dorefa {
namespace {

constexpr int kRows = 6;
constexpr int kBlocks = 4;

template <int R, int NB>
void Block(const WgradSample& s, int64_t o0, int64_t kb0, int32_t* u) {
  const int64_t pq_count = s.g->PQ();
  __m512i acc[R][NB];
  DOREFA_UNROLL for (int r = 0; r < R; ++r) {
    DOREFA_UNROLL for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
  }
  const int8_t* x0 = s.xq + kb0 * pq_count * 64;
  for (int64_t pq = 0; pq < pq_count; ++pq) {
    __m512i xv[NB];
    DOREFA_UNROLL for (int b = 0; b < NB; ++b) xv[b] =
        _mm512_loadu_si512(x0 + (b * pq_count + pq) * 64);
    DOREFA_UNROLL for (int r = 0; r < R; ++r) {
      int32_t v;
      std::memcpy(&v, s.cq + ((o0 + r) * pq_count + pq) * 4, 4);
      const __m512i cv = _mm512_set1_epi32(v);
      DOREFA_UNROLL for (int b = 0; b < NB; ++b) acc[r][b] =
          _mm512_dpbusd_epi32(acc[r][b], cv, xv[b]);
    }
  }
  DOREFA_UNROLL for (int r = 0; r < R; ++r) {
    DOREFA_UNROLL for (int b = 0; b < NB; ++b)
        _mm512_storeu_si512(u + (r * NB + b) * 16, acc[r][b]);
  }
}

using BlockFn = void (*)(const WgradSample&, int64_t, int64_t, int32_t*);
template <int R>
constexpr BlockFn kRow[kBlocks] = {&Block<R, 1>, &Block<R, 2>, &Block<R, 3>, &Block<R, 4>};
constexpr const BlockFn* kTable[kRows] = {kRow<1>, kRow<2>, kRow<3>, kRow<4>, kRow<5>, kRow<6>};

void BlockVnni(const WgradSample& s, int64_t o0, int nr, int64_t kb0, int nb, int32_t* u) {
  kTable[nr - 1][nb - 1](s, o0, kb0, u);
}

// x' = x - z must be s8: z = 0 for A <= 7, 128 for A = 8. VPDPBUSD never saturates.
int32_t ShiftVnni(int, int a_bits) { return a_bits == 8 ? 128 : 0; }

void FinishVnni(const WgradFinish& f) { FinishBlock(f); }

}  // namespace

extern const WgradKernel kWgradVnni = {"wgrad-vnni", kAvx512F | kAvx512Bw | kAvx512Vl | kAvx512Vnni,
                                       &BlockVnni,   &ShiftVnni,
                                       &FinishVnni,  kRows,
                                       kBlocks,      &WeightGradDirectVnni};
#ifdef DOREFA_HAVE_AMX
extern const WgradKernel kWgradAmx = {
    "wgrad-amx", kAvx512F | kAvx512Bw | kAvx512Vl | kAvx512Vnni | kAvx512Vbmi | kAmxTile | kAmxInt8,
    &BlockVnni,  &ShiftVnni,
    &FinishVnni, kRows,
    kBlocks,     &WeightGradDirectAmx};
#endif

}  // namespace dorefa
