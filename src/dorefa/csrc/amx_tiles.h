// What the AMX kernels (int8conv_amx.cpp, wgrad_amx.cpp, igrad_amx.cpp) share: the tile
// configuration (LDTILECFG's 64-byte operand, palette 1: tiles 0-7 of 16 rows x 64 bytes, except
// the A tiles 4 and 5, 16 rows x 4 kq bytes, and the B tiles 6 and 7, kq rows x 64 bytes, whose
// sums then run over kq groups of 4 bytes, 1 <= kq <= 16), and their 2 x 2 tile step.
#ifndef DOREFA_CSRC_AMX_TILES_H_
#define DOREFA_CSRC_AMX_TILES_H_

#include <immintrin.h>

#include <cstdint>

namespace dorefa {

struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  explicit AmxTileConfig(int64_t kq = 16) {
    for (int t = 0; t < 8; ++t) colsb[t] = 64, rows[t] = 16;
    colsb[4] = colsb[5] = static_cast<uint16_t>(4 * kq);
    rows[6] = rows[7] = static_cast<uint8_t>(kq);
  }
};

namespace {  // NOLINT(build/namespaces): the AMX files' own copies (compiled with AMX flags)

// NA A tiles (at a, a + a2; rows `stride` bytes apart, 4 kq bytes each) x NB B tiles (at b,
// b + b2; kq rows of 64 bytes) over `rows` x `steps` steps of kq quads: step (r, k)'s A tiles at
// a + r row + k a_step, its B tiles the next ones after the step before's. C tile (i, j) into
// out + 16 i ostride + 16 j (int32, rows ostride apart). kSignedB: TDPBUSD (u8 A x s8 B, the
// gradients' signed factors), else TDPBUUD (u8 x u8, int8-amx's codes). Compiler barriers:
// GCC's tile intrinsics are asm statements without a memory operand; the barriers keep the
// operands' stores before the tile loads and the tile stores before the reads of `out`.
template <bool kSignedB, int NA, int NB>
void TileRowSteps(const uint8_t* a, int64_t a2, int64_t stride, int64_t a_step, int64_t rows,
                  int64_t row, const void* bv, int64_t b2, int64_t steps, int64_t kq, int32_t* out,
                  int64_t ostride) {
  const auto* b = static_cast<const uint8_t*>(bv);
  asm volatile("" ::: "memory");
  _tile_zero(0);
  if constexpr (NB == 2) _tile_zero(1);
  if constexpr (NA == 2) _tile_zero(2);
  if constexpr (NA == 2 && NB == 2) _tile_zero(3);
  for (int64_t r = 0; r < rows; ++r, a += row) {
    for (int64_t k = 0; k < steps; ++k, b += kq * 64) {
      _tile_loadd(4, a + k * a_step, stride);
      if constexpr (NA == 2) _tile_loadd(5, a + a2 + k * a_step, stride);
      _tile_loadd(6, b, 64);
      if constexpr (NB == 2) _tile_loadd(7, b + b2, 64);
      if constexpr (kSignedB) {
        _tile_dpbusd(0, 4, 6);
        if constexpr (NB == 2) _tile_dpbusd(1, 4, 7);
        if constexpr (NA == 2) _tile_dpbusd(2, 5, 6);
        if constexpr (NA == 2 && NB == 2) _tile_dpbusd(3, 5, 7);
      } else {
        _tile_dpbuud(0, 4, 6);
        if constexpr (NB == 2) _tile_dpbuud(1, 4, 7);
        if constexpr (NA == 2) _tile_dpbuud(2, 5, 6);
        if constexpr (NA == 2 && NB == 2) _tile_dpbuud(3, 5, 7);
      }
    }
  }
  const int64_t bytes = ostride * 4;
  _tile_stored(0, out, bytes);
  if constexpr (NB == 2) _tile_stored(1, out + 16, bytes);
  if constexpr (NA == 2) _tile_stored(2, out + 16 * ostride, bytes);
  if constexpr (NA == 2 && NB == 2) _tile_stored(3, out + 16 * ostride + 16, bytes);
  asm volatile("" ::: "memory");
}

// One row of `steps` steps (TileRowSteps): step k's A tiles at a + k a_step.
template <bool kSignedB, int NA, int NB>
void TileSteps(const uint8_t* a, int64_t a2, int64_t stride, int64_t a_step, const void* bv,
               int64_t b2, int64_t steps, int64_t kq, int32_t* out, int64_t ostride) {
  TileRowSteps<kSignedB, NA, NB>(a, a2, stride, a_step, 1, 0, bv, b2, steps, kq, out, ostride);
}

using TileStepsFn = void (*)(const uint8_t*, int64_t, int64_t, int64_t, const void*, int64_t,
                             int64_t, int64_t, int32_t*, int64_t);
// kTileSteps<kSignedB>[NA - 1][NB - 1]
template <bool kSignedB>
constexpr TileStepsFn kTileSteps[2][2] = {{&TileSteps<kSignedB, 1, 1>, &TileSteps<kSignedB, 1, 2>},
                                          {&TileSteps<kSignedB, 2, 1>, &TileSteps<kSignedB, 2, 2>}};
using TileRowStepsFn = void (*)(const uint8_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                const void*, int64_t, int64_t, int64_t, int32_t*, int64_t);
// kTileRowSteps<kSignedB>[NA - 1][NB - 1]
template <bool kSignedB>
constexpr TileRowStepsFn kTileRowSteps[2][2] = {
    {&TileRowSteps<kSignedB, 1, 1>, &TileRowSteps<kSignedB, 1, 2>},
    {&TileRowSteps<kSignedB, 2, 1>, &TileRowSteps<kSignedB, 2, 2>}};

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_AMX_TILES_H_
