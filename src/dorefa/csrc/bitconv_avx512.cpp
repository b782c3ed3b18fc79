// AVX-512 kernel (F + BW + VPOPCNTDQ): register tile of 8 output pixels x 16 output channels.
//
// Inner step, per 64-bit activation word j of pixel p and plane m: broadcast it to all 8
// lanes, AND with word j of 8 output channels' plane k (one zmm of the lane-interleaved
// weights), VPOPCNTQ, add to that (p, channel-block) accumulator. Each weight load is reused
// by 8 pixels and each broadcast by 2 channel blocks; the loop body is 16 x (AND, POPCNT,
// ADD), which is what ports 0 and 5 can retire: ~1.5 cycles per 512 bit-MACs.
// Planes combine after the word loop: total += cnt << (m + k).
//
// Results leave the registers with one lane per output channel, but the output is
// (N, O, OH, OW): a channel's pixels are contiguous. With 8 consecutive pixels of one image,
// an 8x8 transpose of the (int32-narrowed) tile turns 64 scattered scalar stores into
// 8 vector stores; this matters for thin layers, where the word loop is short.
#include <immintrin.h>

#include <algorithm>

#include "bitconv.h"
#include "bitpack.h"

namespace dorefa {
namespace {

constexpr int kTileP = 8;  // output pixels per register tile
constexpr int kTileQ = 2;  // 8-channel blocks per register tile

// In place 8x8 transpose of int32: afterwards v[c][p] is the old v[p][c].
inline void Transpose8x8(__m256i v[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3, then 4-7
    u[4 * h + 0] = _mm256_unpacklo_epi64(t[4 * h + 0], t[4 * h + 2]);
    u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h + 0], t[4 * h + 2]);
    u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
    u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_permute2x128_si256(u[i], u[4 + i], 0x20);
    v[4 + i] = _mm256_permute2x128_si256(u[i], u[4 + i], 0x31);
  }
}

// The epilogue (Epilogue in bitconv.h) on one register tile: total[p][q] holds acc of pixel
// p, channels (ob + q) * 8 + lane; s[p] is S of pixel p (kSigned / kRequant only).
template <int P, int Q>
inline void Finish(const ConvGeom& g, __m512i (&total)[P][Q], const int64_t* s, const int64_t* outs,
                   int64_t ob, int32_t* acc, const Epilogue& ep) {
  const int64_t ohw = g.oh * g.ow;
  if (ep.mode != Epilogue::kAcc) {
    const __m512i nw = _mm512_set1_epi64((int64_t{1} << g.w_bits) - 1);
    for (int p = 0; p < P; ++p) {
      const __m512i ns = _mm512_mullo_epi64(nw, _mm512_set1_epi64(s[p]));
      for (int q = 0; q < Q; ++q)
        total[p][q] = _mm512_sub_epi64(_mm512_add_epi64(total[p][q], total[p][q]), ns);
    }
  }
  if (ep.mode == Epilogue::kRequant) {
    const __m512i one = _mm512_set1_epi64(1), zero = _mm512_setzero_si512();
    for (int q = 0; q < Q; ++q) {
      const __mmask8 neg = ep.neg[ob + q];
      const int64_t* th = ep.th + (ob + q) * ep.t * kLanes;
      __m512i code[P];
      for (int p = 0; p < P; ++p) {
        total[p][q] = _mm512_mask_sub_epi64(total[p][q], neg, zero, total[p][q]);
        code[p] = zero;
      }
      for (int64_t j = 0; j < ep.t; ++j) {
        const __m512i tj = _mm512_loadu_si512(th + j * kLanes);
        for (int p = 0; p < P; ++p) {
          const __mmask8 ge = _mm512_cmpge_epi64_mask(total[p][q], tj);
          code[p] = _mm512_mask_add_epi64(code[p], ge, code[p], one);
        }
      }
      const int64_t obase = (ob + q) * kLanes;
      const int64_t nlanes = std::min<int64_t>(kLanes, g.o - obase);
      if constexpr (P == 8) {
        if (outs[P - 1] == outs[0] + P - 1) {  // 8 consecutive pixels: one 8-byte store each
          __m256i v[8];
          for (int p = 0; p < P; ++p) v[p] = _mm512_cvtepi64_epi32(code[p]);
          Transpose8x8(v);
          for (int64_t lane = 0; lane < nlanes; ++lane) {
            _mm_storel_epi64(reinterpret_cast<__m128i*>(ep.codes + outs[0] + (obase + lane) * ohw),
                             _mm256_cvtepi32_epi8(v[lane]));
          }
          continue;
        }
      }
      for (int p = 0; p < P; ++p) {
        alignas(64) int64_t lanes[kLanes];
        _mm512_store_si512(reinterpret_cast<__m512i*>(lanes), code[p]);
        for (int64_t lane = 0; lane < nlanes; ++lane)
          ep.codes[outs[p] + (obase + lane) * ohw] = static_cast<uint8_t>(lanes[lane]);
      }
    }
    return;
  }
  if constexpr (P == 8) {
    if (outs[P - 1] == outs[0] + P - 1) {  // 8 consecutive pixels of one image
      for (int q = 0; q < Q; ++q) {
        __m256i v[8];
        for (int p = 0; p < P; ++p) v[p] = _mm512_cvtepi64_epi32(total[p][q]);
        Transpose8x8(v);
        const int64_t obase = (ob + q) * kLanes;
        const int64_t nlanes = std::min<int64_t>(kLanes, g.o - obase);
        for (int64_t lane = 0; lane < nlanes; ++lane) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + outs[0] + (obase + lane) * ohw),
                              v[lane]);
        }
      }
      return;
    }
  }
  for (int p = 0; p < P; ++p) {
    for (int q = 0; q < Q; ++q) {
      alignas(64) int64_t lanes[kLanes];
      _mm512_store_si512(reinterpret_cast<__m512i*>(lanes), total[p][q]);
      const int64_t obase = (ob + q) * kLanes;
      const int64_t nlanes = std::min<int64_t>(kLanes, g.o - obase);
      for (int64_t lane = 0; lane < nlanes; ++lane) {
        acc[outs[p] + (obase + lane) * ohw] = static_cast<int32_t>(lanes[lane]);
      }
    }
  }
}

template <int P, int Q>
void Block(const ConvGeom& g, const uint64_t* const* xs, const int64_t* outs, const uint64_t* wpk,
           int64_t ob, int32_t* acc, const int64_t* s, const Epilogue& ep) {
  const int64_t span = g.kw * g.cw;
  const int64_t plane = g.PlaneStride(), row = g.RowStride();
  const int64_t wob = g.w_bits * g.l * kLanes;  // distance between weight blocks
  __m512i total[P][Q];
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < Q; ++q) total[p][q] = _mm512_setzero_si512();
  for (int m = 0; m < g.x_bits; ++m) {
    for (int k = 0; k < g.w_bits; ++k) {
      __m512i cnt[P][Q];
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q) cnt[p][q] = _mm512_setzero_si512();
      const uint64_t* wk = wpk + (ob * g.w_bits + k) * g.l * kLanes;
      for (int64_t r = 0; r < g.kh; ++r) {
        const int64_t xoff = m * plane + r * row;
        const uint64_t* wr = wk + r * span * kLanes;
        for (int64_t t = 0; t < span; ++t) {
          __m512i wv[Q];
          for (int q = 0; q < Q; ++q) wv[q] = _mm512_loadu_si512(wr + q * wob + t * kLanes);
          for (int p = 0; p < P; ++p) {
            const __m512i xv = _mm512_set1_epi64(static_cast<long long>(xs[p][xoff + t]));
            for (int q = 0; q < Q; ++q) {
              cnt[p][q] =
                  _mm512_add_epi64(cnt[p][q], _mm512_popcnt_epi64(_mm512_and_si512(xv, wv[q])));
            }
          }
        }
      }
      const __m128i shift = _mm_cvtsi32_si128(m + k);
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q)
          total[p][q] = _mm512_add_epi64(total[p][q], _mm512_sll_epi64(cnt[p][q], shift));
    }
  }
  Finish<P, Q>(g, total, s, outs, ob, acc, ep);
}

using BlockFn = void (*)(const ConvGeom&, const uint64_t* const*, const int64_t*, const uint64_t*,
                         int64_t, int32_t*, const int64_t*, const Epilogue&);

// kBlocks[p - 1][q - 1] = Block<p, q>: pixel and channel tails use smaller register tiles.
constexpr BlockFn kBlocks[kTileP][kTileQ] = {
    {&Block<1, 1>, &Block<1, 2>}, {&Block<2, 1>, &Block<2, 2>}, {&Block<3, 1>, &Block<3, 2>},
    {&Block<4, 1>, &Block<4, 2>}, {&Block<5, 1>, &Block<5, 2>}, {&Block<6, 1>, &Block<6, 2>},
    {&Block<7, 1>, &Block<7, 2>}, {&Block<8, 1>, &Block<8, 2>}};

void FusedTileAvx512(const ConvGeom& g, const uint64_t* xpk, const uint64_t* wpk, int64_t pix0,
                     int64_t npix, int64_t ob0, int64_t nob, int32_t* acc, const Epilogue& ep) {
  const int64_t span = g.kw * g.cw;
  for (int64_t p0 = pix0; p0 < pix0 + npix; p0 += kTileP) {
    const int np = static_cast<int>(std::min<int64_t>(kTileP, pix0 + npix - p0));
    const uint64_t* xs[kTileP];
    int64_t outs[kTileP], s[kTileP] = {0};
    for (int p = 0; p < np; ++p) {
      const PixelRef ref = LocatePixel(g, xpk, p0 + p);
      xs[p] = ref.x;
      outs[p] = ref.out;
      if (ep.mode == Epilogue::kAcc) continue;
      for (int m = 0; m < g.x_bits; ++m) {  // S = sum_m 2^m popcount(plane m of the field)
        int64_t ones = 0;
        for (int64_t r = 0; r < g.kh; ++r) {
          const uint64_t* xr = ref.x + m * g.PlaneStride() + r * g.RowStride();
          for (int64_t t = 0; t < span; ++t) ones += _mm_popcnt_u64(xr[t]);
        }
        s[p] += ones << m;
      }
    }
    for (int64_t ob = ob0; ob < ob0 + nob; ob += kTileQ) {
      const int nq = static_cast<int>(std::min<int64_t>(kTileQ, ob0 + nob - ob));
      kBlocks[np - 1][nq - 1](g, xs, outs, wpk, ob, acc, s, ep);
    }
  }
}

void TileAvx512(const ConvGeom& g, const uint64_t* xpk, const uint64_t* wpk, int64_t pix0,
                int64_t npix, int64_t ob0, int64_t nob, int32_t* acc) {
  FusedTileAvx512(g, xpk, wpk, pix0, npix, ob0, nob, acc, Epilogue{});
}

}  // namespace

const KernelInfo& Avx512Kernel() {
  static const KernelInfo info{"avx512", "bitconv_avx512_8x16",  &TileAvx512,
                               kTileP,   &PackActivationsAvx512, &FusedTileAvx512};
  return info;
}

}  // namespace dorefa
