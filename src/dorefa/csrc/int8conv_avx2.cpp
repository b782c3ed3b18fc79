// AVX2 int8 kernel: register tile of 4 output pixels x 16 output channels (two ymm of 8 lanes,
// one packed weight block; W8A8: 4 pixels x 8 channels, the block's halves in turn).
//
// VPMADDUBSW t, w, x: per 16-bit lane, t = u8(w_a) * s8(x_a) + u8(w_b) * s8(x_b), SATURATED
// to int16; VPMADDWD t, ones then sums lane pairs into int32 (exact), giving per 32-bit lane
// (one output channel) the 4 products of a group. Weights (<= 255) are the unsigned operand;
// activations are the signed one, stored as x' = x - z (int8conv.h) with
//   z = 0 for x_bits <= 6 (x' in [0, 63]), z = 2^(x_bits - 1) for x_bits = 7, 8
//   (x' in [-z, z - 1]); so |x'| <= a with a = 63, 64, 128 for x_bits <= 6, 7, 8.
// A pair sum is exact while 2 * wmax * a <= 32767 (wmax = 2^w_bits - 1):
//   x_bits <= 6: 2 * 255 * 63 = 32130, x_bits = 7: 2 * 255 * 64 = 32640: every w_bits;
//   x_bits = 8: 2 * 127 * 128 = 32512 for w_bits <= 7; 2 * 255 * 128 = 65280 for W8A8: no.
// W8A8 splits the weights into nibbles, w = 16 * h + l (h, l <= 15: 2 * 15 * 128 = 3840), each
// summed in int16 for 8 groups and folded as VPMADDWD(t_l, 1) + VPMADDWD(t_h, 16) (NibbleBlock).
// Low bit counts add several VPMADDUBSW results in int16 before one VPMADDWD: m of them stay
// exact while m * 2 * wmax * a <= 32767 (W1A2: m = 5461), so most groups cost one multiply
// and one add per ymm instead of two multiplies and an add.
//
// Ceilings (Zen 4, measured with independent register-only chains, 32 MACs per ymm step):
// VPMADDUBSW + VPADDW 0.64 cycle -> 50 MAC/cycle (int16 accumulation); VPMADDUBSW + VPMADDWD
// + VPADDD 1.03 cycles -> 31 MAC/cycle. W8A8 (derived): per 4 pixels x 8 channels x 4 bytes
// (128 MACs) 8 VPMADDUBSW + 8 VPADDW, the split's 3 ops and the fold's 16 every 8 groups (2):
// 21 ops, 7 cycles on Golden Cove's 3 ports (18.3 MAC/cycle); on Zen the 4 broadcasts take pipe
// slots too, 25 ops on 4 pipes (20.5), and a Zen 2's one multiply pipe runs the 9 multiplies
// (8 VPMADDUBSW, the fold's 1) in 9 cycles (14.2). It was 7 ops per 32 MACs, folding every
// group (13.7 / ~15).
//
// The padding's taps are left out as on int8-vnni (TileClasses, int8conv_store.h): W8A8 4-5%
// faster on svhn's 18x18 layers, 14-16% on 128->128 at 7x7 (Zen 4, batch 1 and 32).
//
// Two kernels of the table use these tiles: int8-avx2, and int8-winograd-avx2, which runs the
// 3x3 stride-1 layers of the kMadd32 and nibble paths on Winograd instead (WinogradRuns, at
// the end; int8conv_winograd_avx2.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "int8conv.h"
#include "int8conv_store.h"
#include "int8conv_store_avx2.h"
#include "scratch.h"

namespace dorefa {
namespace {

constexpr int kTileP = 4;
enum Path { kMadd32, kMadd16, kNibble };

int32_t Shift(int x_bits) { return x_bits >= 7 ? 1 << (x_bits - 1) : 0; }

// Largest |pair sum| of VPMADDUBSW for this bit pair (see above).
int64_t PairBound(int x_bits, int w_bits) {
  const int64_t a = x_bits <= 6 ? (1 << x_bits) - 1 : Shift(x_bits);
  return 2 * ((int64_t{1} << w_bits) - 1) * a;
}

// kMadd16's groups between folds for this bit pair: m = 32767 / PairBound (0 or 1: no two
// products fit int16).
int64_t GroupsPerFold(const ConvGeom& g) { return 32767 / PairBound(g.x_bits, g.w_bits); }

// The tiles' path for this bit pair: kMadd16 while two products fit int16 (m >= 2; m = 1 would
// fold after every group: kMadd32 does that in registers), the nibbles at W8A8, else kMadd32.
Path TilePath(const ConvGeom& g) {
  if (g.x_bits == 8 && g.w_bits == 8) return kNibble;
  return GroupsPerFold(g) >= 2 ? kMadd16 : kMadd32;
}

inline __m256i Bcast(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Where block ob reads its field in the int8 layout: per kernel row r the weight groups
// [j0, j1) of the taps t keeps, at w0 + (r span + j) 64.
struct BlockField {
  int64_t span, j0, j1;
  const uint8_t* w0;
  BlockField(const Int8Conv& c, const FieldTaps& t, int64_t ob)
      : span(c.g->kw * c.q.cp / 4),
        j0(t.k0 * c.q.cp / 4),
        j1(t.k1 * c.q.cp / 4),
        w0(c.wq + ob * c.q.gstride * 64) {}
};

// W8A8's nibble sums stay exact in int16 for this many groups (pair sums within
// 2 * 15 * 128 = 3840: 8 of them 30720).
constexpr int kNibbleFold = 32767 / (2 * 15 * 128);  // 8

// A nibble block's int16 sums (of the low and high nibbles) as int32: lo + 16 hi, pairs added.
inline __m256i FoldNibbles(__m256i lo16, __m256i hi16) {
  return _mm256_add_epi32(_mm256_madd_epi16(lo16, _mm256_set1_epi16(1)),
                          _mm256_madd_epi16(hi16, _mm256_set1_epi16(16)));
}

// The sums of P pixels (fields xs) of block ob over taps t (int8conv.h), started at init, to
// out[p]; m: kMadd16's groups between folds.
template <int P, Path kPath>
void Block(const Int8Conv& c, const FieldTaps& t, const int8_t* const* xs, int64_t ob, int64_t m,
           const int32_t* init, int32_t* const* out) {
  const BlockField f(c, t, ob);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[P][2], acc16[P][2];
  for (int p = 0; p < P; ++p) {
    for (int h = 0; h < 2; ++h) {
      acc[p][h] = _mm256_load_si256(reinterpret_cast<const __m256i*>(init + 8 * h));
      acc16[p][h] = _mm256_setzero_si256();
    }
  }
  int64_t left = m;  // kMadd16: groups until the int16 sums must be folded into int32
  for (int64_t r = t.r0; r < t.r1; ++r) {
    const int8_t* xr[P];
    for (int p = 0; p < P; ++p) xr[p] = xs[p] + r * c.q.row;
    const uint8_t* wr = f.w0 + r * f.span * 64;
    for (int64_t j = f.j0; j < f.j1; ++j) {
      __m256i w[2];
      for (int h = 0; h < 2; ++h)
        w[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + j * 64 + 32 * h));
      if constexpr (kPath == kMadd32) {
        for (int p = 0; p < P; ++p) {
          const __m256i xv = Bcast(xr[p] + 4 * j);
          for (int h = 0; h < 2; ++h) {
            const __m256i t = _mm256_madd_epi16(_mm256_maddubs_epi16(w[h], xv), ones);
            acc[p][h] = _mm256_add_epi32(acc[p][h], t);
          }
        }
      } else {
        for (int p = 0; p < P; ++p) {
          const __m256i xv = Bcast(xr[p] + 4 * j);
          for (int h = 0; h < 2; ++h)
            acc16[p][h] = _mm256_add_epi16(acc16[p][h], _mm256_maddubs_epi16(w[h], xv));
        }
        if (--left == 0) {
          for (int p = 0; p < P; ++p) {
            for (int h = 0; h < 2; ++h) {
              acc[p][h] = _mm256_add_epi32(acc[p][h], _mm256_madd_epi16(acc16[p][h], ones));
              acc16[p][h] = _mm256_setzero_si256();
            }
          }
          left = m;
        }
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    for (int h = 0; h < 2; ++h) {
      if constexpr (kPath == kMadd16)
        acc[p][h] = _mm256_add_epi32(acc[p][h], _mm256_madd_epi16(acc16[p][h], ones));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[p] + 8 * h), acc[p][h]);
    }
  }
}

// W8A8 (kNibble): the sums of P pixels of block ob as Block's, the block's two halves of 8
// channels one after the other, each over every tap: per group the half's weights split into
// nibbles (l = w & 15, h = w >> 4), then per pixel VPMADDUBSW(l, x) and VPMADDUBSW(h, x) into
// int16 sums (pair sums within 2 * 15 * 128 = 3840, so 8 groups stay exact: 30720), folded
// into the int32 sums (in L1) every 8 groups as VPMADDWD(., 1) + VPMADDWD(., 16). 2 P int16
// sums, the two nibble vectors, a broadcast, a product and the mask in 16 ymm: P = 4 (at 5
// GCC spilled two sums). Against the earlier 3 x 16 tile that folded every group (2 x
// VPMADDWD and 3 adds per 32 MACs), on the Sapphire Rapids class's AVX2, batch 1 / 32: conv3
// 1.25x / 1.27x, svhn's 64->128 valid 1.14x / 1.30x, 128->128 7x7 1.11x / 1.11x, 48->64 0.98x /
// 1.09x.
template <int P>
void NibbleBlock(const Int8Conv& c, const FieldTaps& t, const int8_t* const* xs, int64_t ob,
                 int64_t /*m*/, const int32_t* init, int32_t* const* out) {
  const BlockField f(c, t, ob);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  for (int h = 0; h < 2; ++h) {
    alignas(32) int32_t acc[P][8];
    __m256i lo16[P], hi16[P];
    for (int p = 0; p < P; ++p) {
      std::memcpy(acc[p], init + 8 * h, sizeof(acc[p]));
      lo16[p] = hi16[p] = _mm256_setzero_si256();
    }
    auto fold = [&] {
      for (int p = 0; p < P; ++p) {
        auto* a = reinterpret_cast<__m256i*>(acc[p]);
        _mm256_store_si256(a,
                           _mm256_add_epi32(_mm256_load_si256(a), FoldNibbles(lo16[p], hi16[p])));
        lo16[p] = hi16[p] = _mm256_setzero_si256();
      }
    };
    int left = kNibbleFold;
    for (int64_t r = t.r0; r < t.r1; ++r) {
      const int8_t* xr[P];
      for (int p = 0; p < P; ++p) xr[p] = xs[p] + r * c.q.row;
      const uint8_t* wr = f.w0 + r * f.span * 64 + 32 * h;
      for (int64_t j = f.j0; j < f.j1; ++j) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + j * 64));
        const __m256i lo = _mm256_and_si256(w, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
        for (int p = 0; p < P; ++p) {
          const __m256i xv = Bcast(xr[p] + 4 * j);
          lo16[p] = _mm256_add_epi16(lo16[p], _mm256_maddubs_epi16(lo, xv));
          hi16[p] = _mm256_add_epi16(hi16[p], _mm256_maddubs_epi16(hi, xv));
        }
        if (--left == 0) fold(), left = kNibbleFold;
      }
    }
    fold();
    for (int p = 0; p < P; ++p) std::memcpy(out[p] + 8 * h, acc[p], sizeof(acc[p]));
  }
}

// W8A8 on one pixel (a one-pixel output such as svhn's conv6, or a class's last pixel), nb
// blocks: the activations split into nibbles instead of the weights, x' = 16 xh + xl (xl in
// 0..15, xh in -8..7), once for all nb blocks (Int8 call groups of kNibbleGroup blocks), so a
// weight vector is used as it is loaded: per group two broadcasts and per half VPMADDUBSW(w, xl)
// and VPMADDUBSW(w, xh) into int16 sums, the pair sums within 2 * 255 * 15 = 7650 and
// 2 * 255 * 8 = 4080, so 4 groups stay exact (30600), folded as VPMADDWD(., 1) + VPMADDWD(., 16)
// into the int32 sums in registers. Against the weights' split, the 3 operations a weight vector
// of its nibbles are gone (each weight is used once on one pixel).
constexpr int kNibbleGroup = 4;                               // blocks a call group (TileClasses)
constexpr int kSplitFold = 32767 / (2 * 255 * 15);            // 4
static_assert(kSplitFold * 2 * 255 * 8 <= 32767, "xh sums");  // (|xh| <= 8)

// The field rows' bytes of taps t split: xl[k], xh[k] for byte k of row r - t.r0 at k = (r -
// t.r0) seg + 4 (j - j0).
void SplitField(const Int8Conv& c, const FieldTaps& t, const BlockField& f, const int8_t* x,
                int64_t seg, int8_t* xl, int8_t* xh) {
  const __m256i low4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
  const int64_t bytes = 4 * (f.j1 - f.j0);
  for (int64_t r = t.r0; r < t.r1; ++r) {
    const int8_t* xr = x + r * c.q.row + 4 * f.j0;
    int8_t* l = xl + (r - t.r0) * seg;
    int8_t* h = xh + (r - t.r0) * seg;
    int64_t k = 0;
    for (; k + 32 <= bytes; k += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + k));
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);  // 0..15
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(l + k), _mm256_and_si256(v, low4));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + k),
                          _mm256_sub_epi8(_mm256_xor_si256(hi, eight), eight));  // -8..7
    }
    for (; k < bytes; ++k) {
      l[k] = static_cast<int8_t>(xr[k] & 15);
      h[k] = static_cast<int8_t>(xr[k] >> 4);  // arithmetic: x' = 16 (x' >> 4) + (x' & 15)
    }
  }
}

void NibbleBlockOne(const Int8Conv& c, const FieldTaps& t, const int8_t* x, int64_t ob, int nb,
                    const int32_t* init, int32_t* out) {
  static thread_local Scratch<int8_t> split;
  const BlockField f0(c, t, ob);
  const int64_t seg = 4 * (f0.j1 - f0.j0), rows = t.r1 - t.r0;
  int8_t* xl = split.Get(static_cast<size_t>(2 * rows * seg));
  int8_t* xh = xl + rows * seg;
  SplitField(c, t, f0, x, seg, xl, xh);
  // Two blocks side by side: two weight streams in flight (1.17x on svhn conv6 at batch 1, its
  // 1.6 MB coming from L3; three would not fit the 16 ymm). A template on the pair's size ran
  // 0.92x as fast (cause not found).
  constexpr int kPair = 2;
  const int64_t bstride = c.q.gstride * 64;  // weight bytes a block
  for (int b0 = 0; b0 < nb; b0 += kPair) {
    const int bn = std::min(kPair, nb - b0);
    const BlockField f(c, t, ob + b0);
    __m256i acc[kPair][2], lo16[kPair][2], hi16[kPair][2];
    for (int b = 0; b < kPair; ++b) {
      for (int h = 0; h < 2; ++h) {
        acc[b][h] =
            b < bn
                ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(init + 16 * (b0 + b) + 8 * h))
                : _mm256_setzero_si256();
        lo16[b][h] = hi16[b][h] = _mm256_setzero_si256();
      }
    }
    int left = kSplitFold;
    for (int64_t r = t.r0; r < t.r1; ++r) {
      const int8_t* l = xl + (r - t.r0) * seg;  // group j at 4 (j - j0)
      const int8_t* u = xh + (r - t.r0) * seg;
      const uint8_t* wr = f.w0 + r * f.span * 64;
      for (int64_t j = f.j0; j < f.j1; ++j) {
        const __m256i xlv = Bcast(l + 4 * (j - f.j0)), xhv = Bcast(u + 4 * (j - f.j0));
        for (int b = 0; b < kPair; ++b) {
          if (b >= bn) break;
          for (int h = 0; h < 2; ++h) {
            const __m256i w = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(wr + b * bstride + j * 64 + 32 * h));
            lo16[b][h] = _mm256_add_epi16(lo16[b][h], _mm256_maddubs_epi16(w, xlv));
            hi16[b][h] = _mm256_add_epi16(hi16[b][h], _mm256_maddubs_epi16(w, xhv));
          }
        }
        if (--left == 0) {
          for (int b = 0; b < kPair; ++b) {
            for (int h = 0; h < 2; ++h) {
              acc[b][h] = _mm256_add_epi32(acc[b][h], FoldNibbles(lo16[b][h], hi16[b][h]));
              lo16[b][h] = hi16[b][h] = _mm256_setzero_si256();
            }
          }
          left = kSplitFold;
        }
      }
    }
    for (int b = 0; b < bn; ++b) {
      for (int h = 0; h < 2; ++h) {
        acc[b][h] = _mm256_add_epi32(acc[b][h], FoldNibbles(lo16[b][h], hi16[b][h]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * (b0 + b) + 8 * h), acc[b][h]);
      }
    }
  }
}

using BlockFn = void (*)(const Int8Conv&, const FieldTaps&, const int8_t* const*, int64_t, int64_t,
                         const int32_t*, int32_t* const*);

template <Path kPath>
constexpr BlockFn kBlocks[kTileP] = {&Block<1, kPath>, &Block<2, kPath>, &Block<3, kPath>,
                                     &Block<4, kPath>};
constexpr int kNibbleP = 4;
constexpr BlockFn kNibbleBlocks[kNibbleP] = {&NibbleBlock<1>, &NibbleBlock<2>, &NibbleBlock<3>,
                                             &NibbleBlock<4>};

void TileAvx2(const Int8Conv& c, int64_t pix0, int64_t npix, int64_t ob0, int64_t nob) {
  const int64_t m = GroupsPerFold(*c.g);
  const Path path = TilePath(*c.g);
  if (path == kNibble) {  // call groups of kNibbleGroup blocks: one pixel's split serves them
    TileClasses<Avx2Store>(c, pix0, npix, ob0, nob, kNibbleP, kNibbleGroup,
                           [&](const FieldTaps& t, int np, int nb, const int8_t* const* xs,
                               int64_t ob, const int32_t* init, int32_t* const* out) {
                             if (np == 1) return NibbleBlockOne(c, t, xs[0], ob, nb, init, out[0]);
                             for (int b = 0; b < nb; ++b) {
                               int32_t* o[kNibbleP];
                               for (int p = 0; p < np; ++p) o[p] = out[p] + 16 * b;
                               kNibbleBlocks[np - 1](c, t, xs, ob + b, m, init + 16 * b, o);
                             }
                           });
    return;
  }
  const BlockFn* blocks = path == kMadd16 ? kBlocks<kMadd16> : kBlocks<kMadd32>;
  TileClasses<Avx2Store>(
      c, pix0, npix, ob0, nob, kTileP, 1,
      [&](const FieldTaps& t, int np, int, const int8_t* const* xs, int64_t ob, const int32_t* init,
          int32_t* const* out) { blocks[np - 1](c, t, xs, ob, m, init, out); });
}

}  // namespace

static_assert(8 * kTileP <= kMaxCallPixels, "a call's pixels fit its field terms");
extern const Int8Kernel kInt8Avx2 = {"4x16", &TileAvx2, &Shift, 8 * kTileP, 1};
// The same tiles, and Winograd F(2x2, 3x3) or F(2x4, 3x3) (int8conv_winograd_avx2.cpp) on the
// 3x3, stride-1 layers whose tiles cannot sum two products in int16 (the kMadd32 and nibble
// paths: x_bits 8 with w_bits >= 7, x_bits 6-7 with w_bits 8). Zen 4, AVX2, one thread, svhn's
// 3x3 layers at batch 32: W8A8 1.7-2.2x the nibble tiles (on F(2x2, 3x3)); W4A4 on Winograd
// 0.7-1.0x the kMadd16 tiles.
static bool WinogradRuns(const ConvGeom& g) {
  return TilePath(g) != kMadd16 && g.stride == 1 && kWinogradAvx2.packs(g);
}

extern const Int8Kernel kInt8WinogradAvx2 = {"4x16",  &TileAvx2,      &Shift,       8 * kTileP,
                                             1,       nullptr,        false,        nullptr,
                                             nullptr, &kWinogradAvx2, &WinogradRuns};

}  // namespace dorefa
