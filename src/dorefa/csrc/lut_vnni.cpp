// The lut-vnni kernel (lut.h, "lutdp" weights): per vector step and pixel, one 64-entry lookup
// (VPERMB) of the 4 tables side by side by each block's index bytes, then one VPDPBUSD against
// ones adding each channel's 4 bytes (4 groups) to its int32 sum:
//
//   acc[p][k] += dpbusd(VPERMB(index[k], tables[p]), 1)       (16 channels, 256 MACs a W1 plane)
//
// no byte counters to widen and no flush: 2 zmm instructions per 256 MACs against the byte
// counters' 2.5-2.75 (lut_tile.h); on Zen 4 their pipe pairs share one pipe, so a pair takes
// 4/3 cycles: 192 MAC/cycle (docs/kernels.md, measured by benchmarks/port_rates.py). Register tile
// 4 pixels x 64 channels (16 sums), sums << (b + width s) added to the call's m at the end of a run
// of rows, or stored there when the call is one pass (TileLut). The tables and the store are
// lut-avx512's. AVX-512 F/BW/VL/DQ + VBMI + VNNI.
#include <immintrin.h>

#include "dpbusd.h"
#include "int8conv_store_avx512.h"
#include "lut_tile.h"

namespace dorefa {
namespace {

// The sums of kernel rows [r0, r1) of slice s and weight plane b for P pixels (tp) and NB
// blocks from ob, added to m[p * ms + 16 k + o] << (b + width s) (LutBlock's contract); with
// kStore, stored there instead (the call's only pass: TileLut skips zeroing m).
template <int P, int NB, bool kStore = false>
void DotBlock(const Int8Conv& c, const LutGeom& l, const uint8_t* const* tp, int64_t ob, int s,
              int b, int64_t r0, int64_t r1, uint32_t* m, int64_t ms) {
  const LutSlices slices(c.g->x_bits);
  const __m128i shift = _mm_cvtsi32_si128(b + s * slices.width);
  const int64_t row_t = 4 * c.q.row;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc[P][NB];
  DOREFA_UNROLL for (int p = 0; p < P; ++p) {
    DOREFA_UNROLL for (int k = 0; k < NB; ++k) acc[p][k] = _mm512_setzero_si512();
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = c.wq + ob * l.block + b * l.plane + r * l.quads * 64;
    const uint8_t* tr[P];
    DOREFA_UNROLL for (int p = 0; p < P; ++p) tr[p] = tp[p] + s * c.tslice + r * row_t;
    for (int64_t q = 0; q < l.quads; ++q) {
      __m512i wv[NB];
      DOREFA_UNROLL for (int k = 0; k < NB; ++k) wv[k] =
          _mm512_loadu_si512(wr + k * l.block + q * 64);
      DOREFA_UNROLL for (int p = 0; p < P; ++p) {
        const __m512i t = _mm512_loadu_si512(tr[p] + q * 64);
        DOREFA_UNROLL for (int k = 0; k < NB; ++k) {
          const __m512i v = _mm512_permutexvar_epi8(wv[k], t);
          DpbusdInPlace(acc[p][k], v, ones);
        }
      }
    }
  }
  DOREFA_UNROLL for (int p = 0; p < P; ++p) {
    DOREFA_UNROLL for (int k = 0; k < NB; ++k) {
      uint32_t* dst = m + p * ms + kInt8Lanes * k;
      const __m512i sum = _mm512_sll_epi32(acc[p][k], shift);
      _mm512_store_si512(dst, kStore ? sum : _mm512_add_epi32(_mm512_load_si512(dst), sum));
    }
  }
}

// TileLut's table of register tiles: the same functions for every slice width; kStoreTable
// for a call's only pass.
template <int P, int NB, bool kStore, int... Bs>
constexpr std::array<std::array<LutBlockFn<void>, sizeof...(Bs)>, 2> DotBlocksK(
    std::integer_sequence<int, Bs...>) {
  return {{{&DotBlock<1, Bs + 1, kStore>...}, {&DotBlock<P, Bs + 1, kStore>...}}};
}
template <int P, int NB>
struct DotLanes {
  using Table = std::array<std::array<std::array<LutBlockFn<void>, NB>, 2>, 6>;
  static constexpr auto kRow = DotBlocksK<P, NB, false>(std::make_integer_sequence<int, NB>{});
  static constexpr auto kStoreRow = DotBlocksK<P, NB, true>(std::make_integer_sequence<int, NB>{});
  static constexpr Table kTable = {kRow, kRow, kRow, kRow, kRow, kRow};
  static constexpr Table kStoreTable = {kStoreRow, kStoreRow, kStoreRow,
                                        kStoreRow, kStoreRow, kStoreRow};
};

}  // namespace

extern const Int8Kernel kLutVnni = {"4x64",    &TileLut<void, VnniStore, 4, 4, DotLanes<4, 4>>,
                                    &LutShift, kMaxLutPixels,
                                    4,         &LutTablesAvx512,
                                    true};

}  // namespace dorefa
