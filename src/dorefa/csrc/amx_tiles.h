// The AMX tile configuration (LDTILECFG's 64-byte operand, palette 1) shared by the AMX kernels
// (int8conv_amx.cpp, wgrad_amx.cpp): tiles 0-7 of 16 rows x 64 bytes, except the A tiles 4 and 5
// (16 rows x 4 kq bytes) and the B tiles 6 and 7 (kq rows x 64 bytes), whose sums then run
// over kq groups of 4 bytes (1 <= kq <= 16).
#ifndef DOREFA_CSRC_AMX_TILES_H_
#define DOREFA_CSRC_AMX_TILES_H_

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

}  // namespace dorefa

#endif  // DOREFA_CSRC_AMX_TILES_H_
