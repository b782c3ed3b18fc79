#include "fields.h"

#include <algorithm>
#include <cstring>

#include "bitpack.h"
#include "thread_pool.h"
#include "work_queue.h"

namespace dorefa {
namespace {

// Appends bit strings to a field, a word at a time from a register (no read-modify-write of
// the memory just written: OR-ing each tap into memory chained every tap behind the previous
// one's store, ~4x slower).
class BitWriter {
 public:
  explicit BitWriter(uint64_t* out) : out_(out) {}
  // The `bits` (1..64) low bits of v; its higher bits are zero.
  void Put(uint64_t v, int bits) {
    acc_ |= v << fill_;
    fill_ += bits;
    if (fill_ < 64) return;
    *out_++ = acc_;
    fill_ -= 64;
    acc_ = fill_ == 0 ? 0 : v >> (bits - fill_);
  }
  void Flush() {
    if (fill_ > 0) *out_++ = acc_;
  }

 private:
  uint64_t* out_;
  uint64_t acc_ = 0;
  int fill_ = 0;
};

}  // namespace

// The dense fields of output row (n, plane m, oy): for each output pixel its L' words, from
// the packed taps of g (bitconv.h layout) in (kh, kw, c) order. With C a multiple of 8 every
// tap starts on a byte: its words are stored whole at its byte offset, the zero high bytes of
// its last word (< 8) overwritten by the next tap's or the next pixel's stores (the field's
// last word is zeroed first, for the bytes past the field). The row's last pixel stores only
// its taps' own bytes: the next row may be another thread's. Other C bit by bit (BitWriter).
void BuildFieldRow(const ConvGeom& g, const ConvGeom& gf, const uint64_t* xpk, int64_t n, int m,
                   int64_t oy, uint64_t* xf) {
  // The geometry in locals: the stores below may alias a ConvGeom's fields, so GCC would
  // reload them after every store.
  const int64_t kh = g.kh, kw = g.kw, cw = g.cw, lw = gf.cw, ow = g.ow, step = g.stride * cw;
  const int64_t row = g.RowStride(), tap_bytes = g.c / 8;
  const int last = static_cast<int>(g.c - 64 * (cw - 1));  // channels in a tap's last word
  const uint64_t* x0 = xpk + (n * g.x_bits + m) * g.PlaneStride() + oy * g.stride * row;
  uint64_t* dst = xf + (n * gf.x_bits + m) * gf.PlaneStride() + oy * ow * lw;
  if (g.c % 8 != 0) {
    for (int64_t ox = 0; ox < ow; ++ox, dst += lw, x0 += step) {
      BitWriter bits(dst);
      for (int64_t r = 0; r < kh; ++r) {
        const uint64_t* tap = x0 + r * row;
        for (int64_t t = 0; t < kw; ++t, tap += cw) {
          for (int64_t j = 0; j + 1 < cw; ++j) bits.Put(tap[j], 64);
          bits.Put(tap[cw - 1], last);
        }
      }
      bits.Flush();
    }
    return;
  }
  for (int64_t ox = 0; ox < ow; ++ox, dst += lw, x0 += step) {
    auto* out = reinterpret_cast<unsigned char*>(dst);
    dst[lw - 1] = 0;
    const bool edge = ox + 1 == ow;
    for (int64_t r = 0; r < kh; ++r) {
      const uint64_t* tap = x0 + r * row;
      for (int64_t t = 0; t < kw; ++t, tap += cw, out += tap_bytes) {
        if (edge) {
          std::memcpy(out, tap, static_cast<size_t>(tap_bytes));
        } else if (cw == 1) {
          std::memcpy(out, tap, 8);
        } else {
          for (int64_t j = 0; j < cw; ++j) std::memcpy(out + 8 * j, tap + j, 8);
        }
      }
    }
  }
}

ConvGeom FieldGeom(const ConvGeom& g) {
  ConvGeom f;
  f.n = g.n;
  f.c = g.kh * g.kw * g.c;
  f.h = g.oh;
  f.w = g.ow;
  f.o = g.o;
  f.kh = f.kw = 1;
  f.stride = 1;
  f.pad = 0;
  f.x_bits = g.x_bits;
  f.w_bits = g.w_bits;
  f.Finalize();
  return f;
}

uint8_t PackFields(PackFn pack, FieldRowFn row, const ConvGeom& g, const uint8_t* x, uint64_t* xpk,
                   uint64_t* xf, int threads) {
  const ConvGeom gf = FieldGeom(g);
  ZeroPaddingBorder(g, xpk);
  const int64_t pack_items = PackItems(g), rows = g.n * g.x_bits * g.oh;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, rows)));
  HomeQueue pack_q(pack_items, nt);
  HomeQueue row_q(rows, nt);
  return ParallelOr(nt, [&](int tid, auto&& barrier) -> uint8_t {
    uint8_t ors = 0;
    int64_t item;
    while (pack_q.Next(tid, &item)) ors |= pack(g, x, xpk, item, item + 1);
    barrier();  // a field row reads taps packed by any thread
    while (row_q.Next(tid, &item)) {
      const int64_t oy = item % g.oh, nm = item / g.oh;
      row(g, gf, xpk, nm / g.x_bits, static_cast<int>(nm % g.x_bits), oy, xf);
    }
    return ors;
  });
}

}  // namespace dorefa
