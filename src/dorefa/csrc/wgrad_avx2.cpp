// AVX2 weight-gradient block (wgrad.h): 4 output channels x 16 columns (one block: two ymm of
// 8 lanes), 8 ymm accumulators. Per pixel quad: VPMADDUBSW (u8 gradient codes x s8 shifted
// activations -> int16 pair sums), VPMADDWD by ones (-> int32 quad sums), VPADDD.
// VPMADDUBSW saturates its pair sums at int16, so the shift z is chosen to keep
// 2 * n_g * max|x - z| <= 32767; a bit pair where no shift does (G = 8 with A = 8) runs on the
// portable kernel instead (RunWeightGrad).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu_features.h"
#include "wgrad.h"
#include "wgrad_finish.h"

namespace dorefa {
namespace {

constexpr int kRows = 4;

template <int R>
void Block(const WgradSample& s, int64_t o0, int64_t kb, int32_t* u) {
  const int64_t pq_count = s.g->PQ();
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const int8_t* x0 = s.xq + kb * pq_count * 64;
  for (int64_t pq = 0; pq < pq_count; ++pq) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + pq * 64));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + pq * 64 + 32));
    for (int r = 0; r < R; ++r) {
      int32_t v;
      std::memcpy(&v, s.cq + ((o0 + r) * pq_count + pq) * 4, 4);
      const __m256i cv = _mm256_set1_epi32(v);
      acc[r][0] =
          _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(cv, lo), ones));
      acc[r][1] =
          _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(cv, hi), ones));
    }
  }
  for (int r = 0; r < R; ++r) {
    int32_t* dst = u + r * 16;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), acc[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8), acc[r][1]);
  }
}

using BlockFn = void (*)(const WgradSample&, int64_t, int64_t, int32_t*);
constexpr BlockFn kTable[kRows] = {&Block<1>, &Block<2>, &Block<3>, &Block<4>};

void BlockAvx2(const WgradSample& s, int64_t o0, int nr, int64_t kb0, int, int32_t* u) {
  kTable[nr - 1](s, o0, kb0, u);
}

// x' = x - z must be s8 and keep VPMADDUBSW's pair sums 2 n_g max|x'| within int16:
// z = 0 when n_a <= 127 and 2 n_g n_a <= 32767; else z = 2^(A-1) (max|x'| = 2^(A-1)) when
// 2 n_g 2^(A-1) <= 32767; else -1 (G = 8 with A = 8: the portable kernel runs it).
int32_t ShiftAvx2(int g_bits, int a_bits) {
  const int32_t ng = (1 << g_bits) - 1, na = (1 << a_bits) - 1, half = 1 << (a_bits - 1);
  if (na <= 127 && 2 * ng * na <= 32767) return 0;
  if (2 * ng * half <= 32767 && half <= 128) return half;
  return -1;
}

void FinishAvx2(const WgradFinish& f) { FinishBlock(f); }

}  // namespace

// Needs FMA beside AVX2 (the direct finish and the one-pixel tiles use it), as the AVX2
// forward kernels do.
extern const WgradKernel kWgradAvx2 = {"wgrad-avx2",
                                       kAvx2 | kFma,
                                       &BlockAvx2,
                                       &ShiftAvx2,
                                       &FinishAvx2,
                                       kRows,
                                       1,
                                       &WeightGradDirectAvx2,
                                       /*direct_pair_bound=*/32767};

}  // namespace dorefa
