#include "lut.h"

#include <algorithm>
#include <cstring>

namespace dorefa {

uint8_t PackWeightsLut(const ConvGeom& g, const uint8_t* w, uint64_t* wl) {
  const LutGeom l(g);
  const int64_t cp = Int8Geom(g).cp;
  auto* bytes = reinterpret_cast<uint8_t*>(wl);
  auto* wsum = reinterpret_cast<int32_t*>(bytes + l.WeightBytes());
  std::memset(bytes, 0, static_cast<size_t>(l.WeightBytes()));
  std::memset(wsum, 0, static_cast<size_t>(l.ob * kInt8Lanes * 4));
  uint8_t ors = 0;
  for (int64_t o = 0; o < g.o; ++o) {
    uint32_t sum = 0;
    for (int64_t i = 0; i < g.c * g.kh * g.kw; ++i) {
      ors |= w[o * g.c * g.kh * g.kw + i];
      sum += w[o * g.c * g.kh * g.kw + i];
    }
    wsum[o] = static_cast<int32_t>(sum);  // fits for codes in range (the caller's bound)
  }
  for (int64_t ob = 0; ob < l.ob; ++ob) {
    for (int b = 0; b < g.w_bits; ++b) {
      for (int64_t r = 0; r < g.kh; ++r) {
        uint8_t* row = bytes + ob * l.block + b * l.plane + r * l.quads * 64;
        for (int64_t j = 0; j < 4 * l.quads; ++j) {  // group j of the row: lane j % 4
          uint8_t* lane = row + (j / 4) * 64 + (j % 4) * kInt8Lanes;
          if (j >= l.span) {
            std::memset(lane, 0x80, kInt8Lanes);
            continue;
          }
          const int64_t kw = 4 * j / cp, c0 = 4 * j % cp;  // the group's tap and channels
          for (int64_t o = 16 * ob; o < std::min<int64_t>(g.o, 16 * ob + 16); ++o) {
            uint8_t m = 0;
            for (int64_t i = 0; i < 4 && c0 + i < g.c; ++i) {
              const uint8_t v = w[((o * g.c + c0 + i) * g.kh + r) * g.kw + kw];
              m |= static_cast<uint8_t>(((v >> b) & 1) << i);
            }
            lane[LutByte(o - 16 * ob)] = m;
          }
        }
      }
    }
  }
  return ors;
}

void BuildTablesScalar(const uint8_t* xq, int64_t bytes, int x_bits, int64_t slice_bytes,
                       uint8_t* tq) {
  const LutSlices slices(x_bits);
  for (int s = 0; s < slices.count; ++s) {
    const int shift = s * slices.width;
    const auto mask = static_cast<uint8_t>((1 << slices.Bits(s, x_bits)) - 1);
    uint8_t* out = tq + s * slice_bytes;
    for (int64_t k = 0; k < bytes; k += 4) {
      uint8_t x[4];
      for (int i = 0; i < 4; ++i) x[i] = static_cast<uint8_t>((xq[k + i] >> shift) & mask);
      uint8_t* t = out + 4 * k;
      t[0] = 0;
      for (int m = 1; m < 16; ++m) {
        const int low = m & -m;  // the lowest set bit: T[m] = T[m - low] + x[log2 low]
        t[m] = static_cast<uint8_t>(t[m - low] + x[__builtin_ctz(static_cast<unsigned>(m))]);
      }
    }
  }
}

}  // namespace dorefa
