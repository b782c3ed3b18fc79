#include "lut.h"

#include <algorithm>
#include <cstring>

namespace dorefa {

namespace {

// Bit b of each byte of v (4 codes) as a nibble, code i at bit i.
inline uint8_t PlaneNibble(uint32_t v, int b) {
  const uint64_t bits = (v >> b) & 0x01010101u;
  return static_cast<uint8_t>(((bits * 0x01020408u) >> 24) & 0xF);  // bit 8i -> bit 24 + i
}

}  // namespace

uint8_t PackWeightsLut(const ConvGeom& g, const uint8_t* w, uint64_t* wl, bool dot_lanes) {
  const LutGeom l(g);
  const int64_t cp = Int8Geom(g).cp, taps = g.kh * g.kw;
  auto* bytes = reinterpret_cast<uint8_t*>(wl);
  auto* wsum = reinterpret_cast<int32_t*>(bytes + l.WeightBytes());
  std::memset(wsum, 0, static_cast<size_t>(l.ob * kInt8Lanes * 4));
  if (dot_lanes) {  // every byte entry 0 of its group's table (the empty sum), patterns OR-ed in
    for (int64_t i = 0; i < l.WeightBytes(); ++i) bytes[i] = static_cast<uint8_t>(16 * (i % 4));
  } else {
    std::memset(bytes, 0, static_cast<size_t>(l.WeightBytes()));
    // Groups past a row's span: index 0x80 on every lane (VPSHUFB gives 0).
    for (int64_t row = 0; row < l.ob * g.w_bits * g.kh; ++row)
      for (int64_t j = l.span; j < 4 * l.quads; ++j)
        std::memset(bytes + row * l.quads * 64 + (j / 4) * 64 + (j % 4) * kInt8Lanes, 0x80,
                    kInt8Lanes);
  }
  // Locals: the byte stores below may alias g and l as far as the compiler knows.
  const int64_t kh = g.kh, kwn = g.kw, c = g.c, row_bytes = l.quads * 64, plane = l.plane;
  const int w_bits = g.w_bits;
  uint8_t ors = 0;
  for (int64_t o = 0; o < g.o; ++o) {
    const uint8_t* wo = w + o * c * taps;
    uint32_t sum = 0;
    for (int64_t i = 0; i < c * taps; ++i) {
      ors |= wo[i];
      sum += wo[i];
    }
    wsum[o] = static_cast<int32_t>(sum);  // fits for codes in range (the caller's bound)
    // lut: lane i of a quad at 16 i, channel o at LutByte(o); lutdp: channel o's dword, byte i
    const int64_t at = dot_lanes ? 4 * (o % kInt8Lanes) : LutByte(o % kInt8Lanes);
    const int64_t lane_step = dot_lanes ? 1 : kInt8Lanes;
    uint8_t* block = bytes + (o / kInt8Lanes) * l.block + at;
    for (int64_t r = 0; r < kh; ++r) {
      for (int64_t kw = 0; kw < kwn; ++kw) {
        const uint8_t* src = wo + r * kwn + kw;  // channel ch at src[ch * taps]
        uint8_t* row = block + r * row_bytes;
        for (int64_t c0 = 0; c0 < c; c0 += 4) {
          uint32_t v = 0;  // the group's 4 codes, channels past C are 0
          if (taps == 1 && c0 + 4 <= c) {
            std::memcpy(&v, src + c0, 4);
          } else {
            for (int64_t i = 0; i < 4 && c0 + i < c; ++i)
              v |= uint32_t{src[(c0 + i) * taps]} << (8 * i);
          }
          const auto j = static_cast<uint64_t>(kw * cp + c0) / 4;  // the group within row r
          uint8_t* lane = row + (j / 4) * 64 + (j % 4) * lane_step;
          for (int b = 0; b < w_bits; ++b) lane[b * plane] |= PlaneNibble(v, b);
        }
      }
    }
  }
  return ors;
}

uint8_t PackByteWeights(const Int8Kernel& k, const ConvGeom& g, const uint8_t* w, uint64_t* wq) {
  return k.tables != nullptr ? PackWeightsLut(g, w, wq, k.dot_lanes) : PackWeightsInt8(g, w, wq);
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
