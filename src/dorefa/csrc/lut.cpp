#include "lut.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "byte_transpose.h"

namespace dorefa {

namespace {

// Bit b of each byte of x as the nibbles of its two groups of 4 codes (code i at bit i): bytes
// 0-3 at bits 24-27, bytes 4-7 at bits 56-59. The multiply moves bit 8 i to 24 + i and bit
// 32 + 8 i to 56 + i; its other products land on bits of their own (no carries).
inline uint64_t PairNibbles(uint64_t x, int b) {
  return ((x >> b) & 0x0101010101010101u) * 0x01020408u;
}

}  // namespace

uint8_t PackWeightsLut(const ConvGeom& g, const uint8_t* w, uint64_t* wl, bool dot_lanes) {
  const LutGeom l(g);
  const int64_t cp = Int8Geom(g).cp, taps = g.kh * g.kw;
  auto* bytes = reinterpret_cast<uint8_t*>(wl);
  auto* wsum = reinterpret_cast<int32_t*>(bytes + l.WeightBytes());
  std::memset(wsum, 0, static_cast<size_t>(l.ob * kInt8Lanes * 4));
  if (dot_lanes) {  // every byte entry 0 of its group's table (the empty sum): channels past O
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
  const int64_t kh = g.kh, kwn = g.kw, c = g.c, span = l.span, row_bytes = l.quads * 64;
  const int64_t plane = l.plane, block_bytes = l.block;
  const int w_bits = g.w_bits;
  // One kernel row's codes in table order, (kw, channel) with the channels padded to cp: group
  // j is the 4 bytes at 4 j; zeros up to whole quads. Each byte of the layout is written once.
  std::vector<uint8_t> row(static_cast<size_t>(16 * l.quads), 0);
  std::vector<uint8_t> tap_major(static_cast<size_t>(taps > 1 ? c * taps : 0));
  uint8_t ors = 0;
  for (int64_t o = 0; o < g.o; ++o) {
    const uint8_t* wo = w + o * c * taps;
    uint32_t sum = 0;
    for (int64_t i = 0; i < c * taps; ++i) {
      ors |= wo[i];
      sum += wo[i];
    }
    wsum[o] = static_cast<int32_t>(sum);  // fits for codes in range (the caller's bound)
    uint8_t* block = bytes + (o / kInt8Lanes) * block_bytes;
    const int64_t lane = o % kInt8Lanes;
    const uint8_t* by_tap = TapMajor(wo, c, taps, tap_major.data());  // each tap's C contiguous
    for (int64_t r = 0; r < kh; ++r) {
      for (int64_t kw = 0; kw < kwn; ++kw)
        std::memcpy(row.data() + kw * cp, by_tap + (r * kwn + kw) * c, static_cast<size_t>(c));
      uint8_t* line = block + r * row_bytes;
      for (int64_t j = 0; j < span; j += 4) {
        uint64_t x[2];  // groups j, j + 1 and j + 2, j + 3 (past the span: code 0)
        std::memcpy(x, row.data() + 4 * j, 16);
        uint8_t* quad = line + (j / 4) * 64;
        for (int b = 0; b < w_bits; ++b) {
          const uint64_t lo = PairNibbles(x[0], b), hi = PairNibbles(x[1], b);
          const uint32_t m =
              static_cast<uint32_t>(((lo >> 24) & 0xF) | ((lo >> 48) & 0xF00) |
                                    ((hi >> 8) & 0xF0000) | ((hi >> 32) & 0xF000000));
          if (dot_lanes) {  // lutdp: channel o's dword, byte i = 16 i + m_b(j + i)
            const uint32_t d = 0x30201000u | m;
            std::memcpy(quad + b * plane + 4 * lane, &d, 4);
          } else {  // lut: lane i of the quad at 16 i, channel o at LutByte(o)
            for (int i = 0; i < 4 && j + i < span; ++i)
              quad[b * plane + 16 * i + LutByte(lane)] = static_cast<uint8_t>(m >> (8 * i));
          }
        }
      }
    }
  }
  return ors;
}

uint8_t PackByteWeights(const Int8Kernel& k, const ConvGeom& g, const uint8_t* w, uint64_t* wq) {
  if (k.tables != nullptr) return PackWeightsLut(g, w, wq, k.dot_lanes);
  const uint8_t ors = PackWeightsInt8(g, w, wq);
  if (k.WinogradPacks(g)) {
    k.winograd->transform(g, reinterpret_cast<const uint8_t*>(wq),
                          reinterpret_cast<int16_t*>(wq + Int8Geom(g).WeightWords()));
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
