// Max-pools (pool.h): a separable loop for any window, and faster paths for the windows the
// networks use: 3 x 3 / 2 on SSE2 rows, of codes (AlexNet) and of floats (ResNet's stem; with
// padding 1 on AVX-512 rows in pool_avx512.cpp where the CPU has them);
// 2 x 2 / 2 of codes on SSE2 rows (svhn). Both split their planes over the threads.
#include "pool.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_features.h"
#include "thread_pool.h"

namespace dorefa {
namespace {

// The larger of a and b (no NaN: vectorizes to one max instruction), and the same with NaN
// winning (as numpy's maximum and torch's max-pool), for planes that hold a NaN.
template <class T>
inline T Max(T a, T b) {
  return b > a ? b : a;
}
template <class T>
inline T MaxNan(T a, T b) {
  return (b > a || b != b) ? b : a;
}

// 1 when the float's exponent bits are all set (NaN or inf), as an integer test that
// vectorizes (a float compare per element did not); 0 for integer types.
template <class T>
inline uint32_t Special(T v) {
  if constexpr (std::is_same_v<T, float>) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    return static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
  }
  return 0;
}

// out[ox] = the max of row[ox s + j], j = 0 .. k - 1, tap by tap in order (kS: s as a
// constant, 0 when only known at run time).
template <class T, T (*M)(T, T), int kS>
inline void Across(const T* row, int64_t k, int64_t s_run, int64_t ow, T* out) {
  const int64_t s = kS > 0 ? kS : s_run;
  for (int64_t ox = 0; ox < ow; ++ox) out[ox] = row[ox * s];
  for (int64_t j = 1; j < k; ++j) {
    const T* tap = row + j;
    for (int64_t ox = 0; ox < ow; ++ox) out[ox] = M(out[ox], tap[ox * s]);
  }
}

// One output row of a separable max-pool: the max down its window's rows inside the image,
// rows[0 .. nrows) in order (the first copied, the others max-ed in), into the row buffer
// (w + 2p + k entries, whose padding columns hold `pad`), then per output column the max of its
// k taps of that buffer, tap by tap in order (whole rows, which vectorize with stride 1;
// independent columns otherwise). The same result as a loop over each window's taps with `pad`
// for the padding (M(pad, x) = x). Returns the OR of Special over the rows it read.
template <class T, T (*M)(T, T)>
uint32_t PoolRow(const T* const* rows, int nrows, int64_t w, int64_t k, int64_t s, int64_t p,
                 int64_t ow, T pad, T* buf, T* out) {
  T* rowp = buf + p;
  uint32_t special = 0;
  if (nrows > 0) {
    for (int64_t xx = 0; xx < w; ++xx) {
      rowp[xx] = rows[0][xx];
      special |= Special(rows[0][xx]);
    }
    for (int r = 1; r < nrows; ++r) {
      const T* in = rows[r];
      for (int64_t xx = 0; xx < w; ++xx) {
        rowp[xx] = M(rowp[xx], in[xx]);
        special |= Special(in[xx]);
      }
    }
  } else {
    std::fill(rowp, rowp + w, pad);
  }
  if (s == 2)  // the common stride as a constant: the strided reads vectorize
    Across<T, M, 2>(buf, k, 2, ow, out);
  else
    Across<T, M, 0>(buf, k, s, ow, out);
  return special;
}

// The rows of output row oy's window inside a plane of h rows (at most k of them).
template <class T>
int WindowRows(const T* src, int64_t h, int64_t w, int64_t k, int64_t s, int64_t p, int64_t oy,
               const T** rows) {
  int n = 0;
  for (int64_t y = std::max<int64_t>(0, oy * s - p); y < std::min(h, oy * s - p + k); ++y)
    rows[n++] = src + y * w;
  return n;
}

// A whole plane, row by row (PoolRow); returns the OR of Special over the rows it read.
template <class T, T (*M)(T, T)>
uint32_t PoolPlane(const T* src, int64_t h, int64_t w, int64_t k, int64_t s, int64_t p, int64_t oh,
                   int64_t ow, T pad, std::vector<T>& buf, std::vector<const T*>& rows, T* dst) {
  std::fill(buf.begin(), buf.end(), pad);
  uint32_t special = 0;
  for (int64_t oy = 0; oy < oh; ++oy) {
    const int n = WindowRows(src, h, w, k, s, p, oy, rows.data());
    special |= PoolRow<T, M>(rows.data(), n, w, k, s, p, ow, pad, buf.data(), dst + oy * ow);
  }
  return special;
}

// The max of 3 neighbouring codes with stride 2 along a row: out[i] = max(b[2i], b[2i + 1],
// b[2i + 2]) for i < ow; b readable 32 bytes past b[2 ow]. SSE2: 8 outputs a step, from the
// 16-bit lanes of 16 bytes (a lane's low byte b[2i], its high byte b[2i + 1]); with `spill` the
// last step writes all 8 (up to 7 bytes past out[ow - 1], which the caller writes later).
void Across3Stride2(const uint8_t* b, int64_t ow, bool spill, uint8_t* out) {
  int64_t i = 0;
#if defined(__SSE2__)
  const __m128i low = _mm_set1_epi16(0x00FF);
  for (; i + 8 <= ow || (spill && i < ow); i += 8) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 * i));
    const __m128i next = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 * i + 2));
    const __m128i m = _mm_max_epi16(_mm_max_epi16(_mm_and_si128(v, low), _mm_srli_epi16(v, 8)),
                                    _mm_and_si128(next, low));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(m, m));
  }
#endif
  for (; i < ow; ++i) {
    out[i] = std::max({b[2 * i], b[2 * i + 1], b[2 * i + 2]});
  }
}

// dst[x] = max over the rows of rows[r][x] for x < w (1 to 3 rows, each readable up to `end`);
// dst has 16 bytes of room past w, which may get any bytes.
void DownRows(const uint8_t* const* rows, int nrows, int64_t w, const uint8_t* end, uint8_t* dst) {
  int64_t x = 0;
#if defined(__SSE2__)
  const uint8_t* last = rows[nrows - 1];  // the rows ascend: the last one ends last
  for (; x < w && last + x + 16 <= end; x += 16) {
    __m128i m = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[0] + x));
    for (int r = 1; r < nrows; ++r)
      m = _mm_max_epu8(m, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[r] + x)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + x), m);
  }
#endif
  for (; x < w; ++x) {
    uint8_t m = rows[0][x];
    for (int r = 1; r < nrows; ++r) m = std::max(m, rows[r][x]);
    dst[x] = m;
  }
}

// Windows 3 x 3 with stride 2, padding p <= 1 (code 0 around the plane): per output row the max
// down its valid input rows into a padded row buffer (row: w + 2p + 32 bytes), then along it.
// `end`, `out_end`: the ends of the input and the output arrays. Rows past the plane's may be
// read (never past `end`); a row's last step may write up to 7 bytes past its outputs when that
// many remain before `out_end` (they belong to later rows of the caller's share of planes,
// written after it).
void PoolPlane3x3Stride2(const uint8_t* src, const uint8_t* end, int64_t h, int64_t w, int64_t p,
                         int64_t oh, int64_t ow, uint8_t* row, uint8_t* dst,
                         const uint8_t* out_end) {
  uint8_t* in = row + p;  // row[0, p) is code 0; row[p + w, 2p + w) is restored to it
  for (int64_t oy = 0; oy < oh; ++oy) {
    const uint8_t* rows[3];
    const int nrows = WindowRows(src, h, w, 3, 2, p, oy, rows);
    DownRows(rows, nrows, w, end, in);  // >= 1 row: padding never fills a whole window
    for (int64_t x = w; x < w + p; ++x) in[x] = 0;
    uint8_t* out = dst + oy * ow;
    Across3Stride2(row, ow, out_end - (out + ow) >= 7, out);
  }
}

// A plane's 2 x 2 / 2 pool of codes without padding (svhn): out[oy][ox] = the max of rows 2oy
// and 2oy + 1 at columns 2ox and 2ox + 1. On SSE2 8 outputs a step: the two rows' 16 bytes
// max-ed, then each byte pair (one 16-bit lane) max-ed with its high byte; a row's last step
// is moved back to end at its last output (it rewrites some outputs with the same values), so
// every read stays inside the row's 2 ow <= w bytes. Rows of fewer than 8 outputs: one at a time.
void PoolPlane2x2Stride2(const uint8_t* src, int64_t w, int64_t oh, int64_t ow, uint8_t* dst) {
  for (int64_t oy = 0; oy < oh; ++oy) {
    const uint8_t* r0 = src + 2 * oy * w;
    const uint8_t* r1 = r0 + w;
    uint8_t* out = dst + oy * ow;
    int64_t ox = 0;
#if defined(__SSE2__)
    if (ow >= 8) {
      const __m128i low = _mm_set1_epi16(0x00ff);
      for (int64_t step = 0; step < ow; step += 8) {
        ox = std::min(step, ow - 8);
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r0 + 2 * ox));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1 + 2 * ox));
        const __m128i m = _mm_max_epu8(a, b);
        const __m128i pair = _mm_and_si128(_mm_max_epu8(m, _mm_srli_epi16(m, 8)), low);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + ox), _mm_packus_epi16(pair, pair));
      }
      continue;
    }
#endif
    for (; ox < ow; ++ox) {
      const uint8_t a = std::max(r0[2 * ox], r0[2 * ox + 1]);
      const uint8_t b = std::max(r1[2 * ox], r1[2 * ox + 1]);
      out[ox] = std::max(a, b);
    }
  }
}

// PoolRow<float, Max> for 3 x 3 / 2 windows on SSE2 rows: 4 floats a step down the rows into
// the buffer, 4 outputs a step along it (even and odd columns by shuffles), the same maxima in
// the same order (Max(a, b) = b > a ? b : a is MAXPS with b first). Returns the same flag.
uint32_t PoolRow3x3Stride2(const float* const* rows, int nrows, int64_t w, int64_t p, int64_t ow,
                           float* buf, float* out) {
  float* rowp = buf + p;
  uint32_t special = 0;
  int64_t x = 0;
#if defined(__SSE2__)
  const __m128i exp = _mm_set1_epi32(0x7f800000);
  __m128i sp = _mm_setzero_si128();
  for (; x + 4 <= w; x += 4) {
    __m128 m = _mm_loadu_ps(rows[0] + x);
    sp = _mm_or_si128(sp, _mm_cmpeq_epi32(_mm_and_si128(_mm_castps_si128(m), exp), exp));
    for (int r = 1; r < nrows; ++r) {
      const __m128 v = _mm_loadu_ps(rows[r] + x);
      sp = _mm_or_si128(sp, _mm_cmpeq_epi32(_mm_and_si128(_mm_castps_si128(v), exp), exp));
      m = _mm_max_ps(v, m);
    }
    _mm_storeu_ps(rowp + x, m);
  }
  special = _mm_movemask_epi8(sp) != 0;
#endif
  for (; x < w; ++x) {
    float m = rows[0][x];
    special |= Special(m);
    for (int r = 1; r < nrows; ++r) {
      m = Max(m, rows[r][x]);
      special |= Special(rows[r][x]);
    }
    rowp[x] = m;
  }
  int64_t i = 0;
#if defined(__SSE2__)
  for (; i + 4 <= ow; i += 4) {  // reads buf[2i .. 2i + 9] (< w + 2p + 3 entries)
    const float* b = buf + 2 * i;
    const __m128 v0 = _mm_loadu_ps(b), v1 = _mm_loadu_ps(b + 4);
    const __m128 v2 = _mm_loadu_ps(b + 2), v3 = _mm_loadu_ps(b + 6);
    const __m128 even = _mm_shuffle_ps(v0, v1, _MM_SHUFFLE(2, 0, 2, 0));  // b0 b2 b4 b6
    const __m128 odd = _mm_shuffle_ps(v0, v1, _MM_SHUFFLE(3, 1, 3, 1));   // b1 b3 b5 b7
    const __m128 next = _mm_shuffle_ps(v2, v3, _MM_SHUFFLE(2, 0, 2, 0));  // b2 b4 b6 b8
    _mm_storeu_ps(out + i, _mm_max_ps(next, _mm_max_ps(odd, even)));
  }
#endif
  for (; i < ow; ++i) out[i] = Max(Max(buf[2 * i], buf[2 * i + 1]), buf[2 * i + 2]);
  return special;
}

}  // namespace

void MaxPoolCodes(const uint8_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                  int64_t s, int64_t p, uint8_t* out, int threads) {
  const int64_t oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  const bool three = k == 3 && s == 2 && p <= 1;  // (the caller checks 2p <= k <= H + 2p)
  const uint8_t* end = x + n * c * h * w;
  // Planes split over the threads when there is enough to split (64 KB of input a thread).
  const int64_t most = std::max<int64_t>(1, n * c * h * w / (int64_t{1} << 16));
  ParallelForOrThrow(
      static_cast<int>(std::min<int64_t>(threads, most)), n * c, [&](int64_t first, int64_t last) {
        // one padded row of maxima; 32 bytes past it for the vector paths' reads, code 0
        std::vector<uint8_t> row(static_cast<size_t>(w + 2 * p + k + 32), 0);
        std::vector<const uint8_t*> rows(static_cast<size_t>(k));
        uint8_t* const share_end = out + last * oh * ow;  // a row's spill stays in this share
        for (int64_t nc = first; nc < last; ++nc) {
          const uint8_t* src = x + nc * h * w;
          uint8_t* dst = out + nc * oh * ow;
          if (three) {  // AlexNet's pools: vector rows
            PoolPlane3x3Stride2(src, end, h, w, p, oh, ow, row.data(), dst, share_end);
            continue;
          }
          if (k == 2 && s == 2 && p == 0) {  // svhn's pools
            PoolPlane2x2Stride2(src, w, oh, ow, dst);
            continue;
          }
          PoolPlane<uint8_t, Max<uint8_t>>(src, h, w, k, s, p, oh, ow, 0, row, rows, dst);  // pad 0
        }
      });
}

void MaxPoolFloat(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t s,
                  int64_t p, float* out, int threads) {
  const int64_t oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  ParallelForOrThrow(threads, n * c, [&](int64_t first, int64_t last) {  // allocates (as codes)
    MaxPoolFloatRows pool(w, k, s, p);
    std::vector<const float*> rows(static_cast<size_t>(k));
    for (int64_t nc = first; nc < last; ++nc) {
      const float* src = x + nc * h * w;
      for (int64_t oy = 0; oy < oh; ++oy)
        pool.Row(rows.data(), WindowRows(src, h, w, k, s, p, oy, rows.data()),
                 out + (nc * oh + oy) * ow);
    }
  });
}

MaxPoolFloatRows::MaxPoolFloatRows(int64_t w, int64_t k, int64_t s, int64_t p)
    : w_(w),
      k_(k),
      s_(s),
      p_(p),
      ow_((w + 2 * p - k) / s + 1),
      avx512_(false),
      buf_(static_cast<size_t>(w + 2 * p + k), -std::numeric_limits<float>::infinity()) {
#ifdef DOREFA_HAVE_X86_KERNELS
  avx512_ = p == 1 && (CpuFeatures() & (kAvx512F | kAvx512Dq)) == (kAvx512F | kAvx512Dq);
#endif
}

void MaxPoolFloatRows::Row(const float* const* rows, int nrows, float* out) {
  constexpr float kPad = -std::numeric_limits<float>::infinity();
  // A row whose window holds a NaN (or inf: the same exponent test) again with the NaN-aware max.
  uint32_t special;
  if (k_ == 3 && s_ == 2 && nrows > 0) {
#ifdef DOREFA_HAVE_X86_KERNELS
    special = avx512_ ? PoolRow3x3Stride2Pad1Avx512(rows, nrows, w_, ow_, out)
                      : PoolRow3x3Stride2(rows, nrows, w_, p_, ow_, buf_.data(), out);
#else
    special = PoolRow3x3Stride2(rows, nrows, w_, p_, ow_, buf_.data(), out);
#endif
  } else {
    special = PoolRow<float, Max<float>>(rows, nrows, w_, k_, s_, p_, ow_, kPad, buf_.data(), out);
  }
  if (special != 0)
    PoolRow<float, MaxNan<float>>(rows, nrows, w_, k_, s_, p_, ow_, kPad, buf_.data(), out);
}

}  // namespace dorefa
