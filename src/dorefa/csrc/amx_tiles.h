// What the AMX kernels (int8conv_amx.cpp, wgrad_amx.cpp, igrad_amx.cpp) share: the tile
// configuration (LDTILECFG's 64-byte operand, palette 1: tiles 0-7 of 16 rows x 64 bytes, except
// the A tiles 4 and 5, 16 rows x 4 kq bytes, and the B tiles 6 and 7, kq rows x 64 bytes, whose
// sums then run over kq groups of 4 bytes, 1 <= kq <= 16), and the 2 x 2 TDPBUSD step of the
// weight and input gradients (u8 A x s8 B).
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
// b + b2; kq rows of 64 bytes) over `steps` steps of kq quads: C tile (i, j) into
// buf + (16 i) 32 + 16 j (int32, rows of 32). Compiler barriers: GCC's tile intrinsics have
// no memory operand.
template <int NA, int NB>
void TilesBusd(const uint8_t* a, int64_t a2, int64_t stride, const int8_t* b, int64_t b2,
               int64_t steps, int64_t kq, int32_t* buf) {
  asm volatile("" ::: "memory");
  _tile_zero(0);
  if constexpr (NB == 2) _tile_zero(1);
  if constexpr (NA == 2) _tile_zero(2);
  if constexpr (NA == 2 && NB == 2) _tile_zero(3);
  for (int64_t k = 0; k < steps; ++k) {
    _tile_loadd(4, a + k * 4 * kq, stride);
    if constexpr (NA == 2) _tile_loadd(5, a + a2 + k * 4 * kq, stride);
    _tile_loadd(6, b + k * kq * 64, 64);
    if constexpr (NB == 2) _tile_loadd(7, b + b2 + k * kq * 64, 64);
    _tile_dpbusd(0, 4, 6);
    if constexpr (NB == 2) _tile_dpbusd(1, 4, 7);
    if constexpr (NA == 2) _tile_dpbusd(2, 5, 6);
    if constexpr (NA == 2 && NB == 2) _tile_dpbusd(3, 5, 7);
  }
  constexpr int64_t kRow = 2 * 16 * 4;
  _tile_stored(0, buf, kRow);
  if constexpr (NB == 2) _tile_stored(1, buf + 16, kRow);
  if constexpr (NA == 2) _tile_stored(2, buf + 16 * 2 * 16, kRow);
  if constexpr (NA == 2 && NB == 2) _tile_stored(3, buf + 16 * 2 * 16 + 16, kRow);
  asm volatile("" ::: "memory");
}

using TilesBusdFn = void (*)(const uint8_t*, int64_t, int64_t, const int8_t*, int64_t, int64_t,
                             int64_t, int32_t*);
constexpr TilesBusdFn kTilesBusd[2][2] = {{&TilesBusd<1, 1>, &TilesBusd<1, 2>},
                                          {&TilesBusd<2, 1>, &TilesBusd<2, 2>}};

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_AMX_TILES_H_
