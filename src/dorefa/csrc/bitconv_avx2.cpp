// AVX2 kernel: register tile of 3 output pixels x 8 output channels (two ymm of 4 lanes).
//
// AVX2 has no vector popcount, so bytes are counted with a 16-entry nibble table and VPSHUFB
// (popcount(b) = T[b & 15] + T[b >> 4]). Byte counts are at most 8 per step, so up to
// 31 steps (248 < 256) accumulate in 8-bit lanes before VPSADBW folds each group of 8 bytes,
// i.e. one 64-bit lane = one output channel, into the 64-bit accumulators.
//
// Ceiling (docs/kernels.md): per activation word, pixel and 8 channels (512 binary MACs),
// 2 x (VPAND x&w, VPAND low nibbles, VPSRLW, VPAND, 2 VPSHUFB, VPADDB, VPADDB into the byte
// counts) = 16 vector ops, 4 of them shuffles and 2 shifts; on Zen 2 and Zen 4 (4 vector pipes,
// shuffles and shifts on two of them) that is 4 cycles: 128 binary MAC/cycle, 64 for W1A2.
// Tile: 3 pixels keep the 6 byte counters, 2 weight vectors, the table, the mask, the
// broadcast word and the temporaries in the 16 ymm registers; with 4 pixels GCC spilled in the
// inner loop (Zen 4, AlexNet conv3 batch 32: 30 -> 44 W1A2 MAC/cycle going from 4 to 3).
#include <immintrin.h>

#include <algorithm>

#include "bitconv.h"
#include "bitpack.h"
#include "requant_table.h"

namespace dorefa {
namespace {

constexpr int kTileP = 3;
constexpr int kMaxByteSteps = 31;

inline __m256i PopcountBytes(__m256i v, __m256i table, __m256i low4) {
  const __m256i lo = _mm256_and_si256(v, low4);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
}

// What leaves the registers (Epilogue in bitconv.h), lane by lane: acc, D = 2 acc - nw S, or
// the codes of D (for t < kSearchMinT as one vector: sd = s * D against each lane's t folded
// thresholds, code = #{j : sd > u_j}; else per output from the table).
template <Epilogue::Mode kMode>
inline void Finish(const ConvGeom& g, const __m256i (&total)[2], int64_t s, int64_t out, int64_t ob,
                   int32_t* acc, const Epilogue& ep) {
  const int64_t ohw = g.oh * g.ow;
  const int64_t obase = ob * kLanes;
  const int64_t nlanes = std::min<int64_t>(kLanes, g.o - obase);
  // The 8 counts' low halves in order (each fits int32), then D = 2 acc - nw S modulo 2^32:
  // it fits int32 (bindings check |D| <= INT32_MAX).
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  __m256i dv = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(total[0], even),
                                  _mm256_permutevar8x32_epi32(total[1], even), 0xF0);
  if constexpr (kMode != Epilogue::kAcc) {
    const auto nws = static_cast<int32_t>(((int64_t{1} << g.w_bits) - 1) * s);
    dv = _mm256_sub_epi32(_mm256_add_epi32(dv, dv), _mm256_set1_epi32(nws));
  }
  alignas(32) int32_t d[kLanes];
  _mm256_store_si256(reinterpret_cast<__m256i*>(d), dv);
  if constexpr (kMode != Epilogue::kRequant) {
    for (int64_t l = 0; l < nlanes; ++l) acc[out + (obase + l) * ohw] = d[l];
  } else if (ep.table != nullptr) {
    for (int64_t l = 0; l < nlanes; ++l)
      ep.codes[out + (obase + l) * ohw] = RequantCode(*ep.table, obase + l, d[l]);
  } else {
    const __m256i neg = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.lane_neg + obase));
    const __m256i sd = _mm256_sub_epi32(_mm256_xor_si256(dv, neg), neg);  // -D where s = -1
    const int32_t* u = ep.lane_u + ob * ep.t * kLanes;
    __m256i code = _mm256_setzero_si256();
    for (int64_t j = 0; j < ep.t; ++j)  // cmpgt is -1 where sd > u_j
      code = _mm256_sub_epi32(
          code, _mm256_cmpgt_epi32(
                    sd, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + j * kLanes))));
    alignas(32) int32_t c[kLanes];
    _mm256_store_si256(reinterpret_cast<__m256i*>(c), code);
    for (int64_t l = 0; l < nlanes; ++l)
      ep.codes[out + (obase + l) * ohw] = static_cast<uint8_t>(c[l]);
  }
}

template <int P, Epilogue::Mode kMode>
void Block(const ConvGeom& g, const uint64_t* const* xs, const int64_t* outs, const uint64_t* wpk,
           int64_t ob, int32_t* acc, const int64_t* s, const Epilogue& ep) {
  const int64_t span = g.kw * g.cw;
  const int64_t plane = g.PlaneStride(), row = g.RowStride();
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                         1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  __m256i total[P][2];
  for (int p = 0; p < P; ++p) total[p][0] = total[p][1] = zero;
  for (int m = 0; m < g.x_bits; ++m) {
    for (int k = 0; k < g.w_bits; ++k) {
      // The kh x span steps (kernel rows of span words; the weights are one run) in chunks of
      // at most kMaxByteSteps, each counted in bytes and then folded into the totals, shifted
      // by the plane pair's weight: the 64-bit counts stay out of the step loop (folded inside
      // it, GCC kept moving them through the stack).
      const __m128i shift = _mm_cvtsi32_si128(m + k);
      const uint64_t* w = wpk + (ob * g.w_bits + k) * g.l * kLanes;
      int64_t xoff = m * plane, t = 0;
      for (int64_t left = g.kh * span; left > 0; left -= kMaxByteSteps) {
        __m256i bytes[P][2];
        for (int p = 0; p < P; ++p) bytes[p][0] = bytes[p][1] = zero;
        for (int64_t i = std::min<int64_t>(left, kMaxByteSteps); i > 0; --i) {
          const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
          const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 4));
          for (int p = 0; p < P; ++p) {
            const __m256i xv = _mm256_set1_epi64x(static_cast<long long>(xs[p][xoff]));
            bytes[p][0] =
                _mm256_add_epi8(bytes[p][0], PopcountBytes(_mm256_and_si256(xv, w0), table, low4));
            bytes[p][1] =
                _mm256_add_epi8(bytes[p][1], PopcountBytes(_mm256_and_si256(xv, w1), table, low4));
          }
          w += kLanes;
          ++xoff;
          if (++t == span) {  // the next kernel row
            t = 0;
            xoff += row - span;
          }
        }
        for (int p = 0; p < P; ++p)
          for (int h = 0; h < 2; ++h)
            total[p][h] = _mm256_add_epi64(
                total[p][h], _mm256_sll_epi64(_mm256_sad_epu8(bytes[p][h], zero), shift));
      }
    }
  }
  for (int p = 0; p < P; ++p) Finish<kMode>(g, total[p], s[p], outs[p], ob, acc, ep);
}

using BlockFn = void (*)(const ConvGeom&, const uint64_t* const*, const int64_t*, const uint64_t*,
                         int64_t, int32_t*, const int64_t*, const Epilogue&);
template <Epilogue::Mode kMode>
constexpr BlockFn kBlocks[kTileP] = {&Block<1, kMode>, &Block<2, kMode>, &Block<3, kMode>};
constexpr const BlockFn* kModeBlocks[3] = {kBlocks<Epilogue::kAcc>, kBlocks<Epilogue::kSigned>,
                                           kBlocks<Epilogue::kRequant>};

void FusedTileAvx2(const ConvGeom& g, const uint64_t* xpk, const uint64_t* wpk, int64_t pix0,
                   int64_t npix, int64_t ob0, int64_t nob, int32_t* acc, const Epilogue& ep) {
  const BlockFn* blocks = kModeBlocks[ep.mode];
  if (npix <= 0) return;
  PixelWalker walk(g, xpk, pix0);
  for (int64_t p0 = pix0; p0 < pix0 + npix; p0 += kTileP) {
    const int np = static_cast<int>(std::min<int64_t>(kTileP, pix0 + npix - p0));
    const uint64_t* xs[kTileP];
    int64_t outs[kTileP], s[kTileP] = {0, 0, 0};
    for (int p = 0; p < np; ++p, walk.Next()) {
      const PixelRef& ref = walk.ref();
      xs[p] = ref.x;
      outs[p] = ref.out;
      if (ep.mode != Epilogue::kAcc)
        s[p] = FieldCodeSum(g, ref.x, [](uint64_t v) { return int64_t{_mm_popcnt_u64(v)}; });
    }
    for (int64_t ob = ob0; ob < ob0 + nob; ++ob) blocks[np - 1](g, xs, outs, wpk, ob, acc, s, ep);
  }
}

void TileAvx2(const ConvGeom& g, const uint64_t* xpk, const uint64_t* wpk, int64_t pix0,
              int64_t npix, int64_t ob0, int64_t nob, int32_t* acc) {
  FusedTileAvx2(g, xpk, wpk, pix0, npix, ob0, nob, acc, Epilogue{});
}

}  // namespace

extern const TileKernel kAvx2Tiles = {"3x8", &TileAvx2, &FusedTileAvx2, kTileP, 1, true};

}  // namespace dorefa
