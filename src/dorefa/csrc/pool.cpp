// Max-pools (pool.h): a separable loop for any window, and faster paths for the windows the
// networks use on codes (3 x 3 / 2: AlexNet, on SSE2 rows; 2 x 2 / 2: svhn).
#include "pool.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

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

// Separable max-pool of one plane: per output row, the max of its k input rows (valid rows
// only: the first copied, the others max-ed in) into a row buffer whose padding columns hold
// `pad`, then per output column the max of its k taps of that buffer, tap by tap in order
// (whole rows, which vectorize with stride 1; independent columns otherwise). The same result
// as a loop over each window's taps with `pad` for the padding (M(pad, x) = x). Returns the OR
// of Special over the input rows it read (every input a window covers).
template <class T, T (*M)(T, T)>
uint32_t PoolPlane(const T* src, int64_t h, int64_t w, int64_t k, int64_t s, int64_t p, int64_t oh,
                   int64_t ow, T pad, std::vector<T>& row, T* dst) {
  std::fill(row.begin(), row.end(), pad);
  T* rowp = row.data() + p;
  uint32_t special = 0;
  for (int64_t oy = 0; oy < oh; ++oy) {
    const int64_t y0 = std::max<int64_t>(0, oy * s - p), y1 = std::min(h, oy * s - p + k);
    if (y0 < y1) {
      const T* r0 = src + y0 * w;
      for (int64_t xx = 0; xx < w; ++xx) {
        rowp[xx] = r0[xx];
        special |= Special(r0[xx]);
      }
      for (int64_t y = y0 + 1; y < y1; ++y) {
        const T* r = src + y * w;
        for (int64_t xx = 0; xx < w; ++xx) {
          rowp[xx] = M(rowp[xx], r[xx]);
          special |= Special(r[xx]);
        }
      }
    } else {
      std::fill(rowp, rowp + w, pad);
    }
    if (s == 2)  // the common stride as a constant: the strided reads vectorize
      Across<T, M, 2>(row.data(), k, 2, ow, dst + oy * ow);
    else
      Across<T, M, 0>(row.data(), k, s, ow, dst + oy * ow);
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
// many remain before `out_end` (they belong to later rows, written after it).
void PoolPlane3x3Stride2(const uint8_t* src, const uint8_t* end, int64_t h, int64_t w, int64_t p,
                         int64_t oh, int64_t ow, uint8_t* row, uint8_t* dst,
                         const uint8_t* out_end) {
  uint8_t* in = row + p;  // row[0, p) is code 0; row[p + w, 2p + w) is restored to it
  for (int64_t oy = 0; oy < oh; ++oy) {
    const uint8_t* rows[3];
    int nrows = 0;
    for (int64_t y = 2 * oy - p; y < 2 * oy - p + 3; ++y)
      if (y >= 0 && y < h) rows[nrows++] = src + y * w;
    DownRows(rows, nrows, w, end, in);  // >= 1 row: padding never fills a whole window
    for (int64_t x = w; x < w + p; ++x) in[x] = 0;
    uint8_t* out = dst + oy * ow;
    Across3Stride2(row, ow, out_end - (out + ow) >= 7, out);
  }
}

}  // namespace

void MaxPoolCodes(const uint8_t* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                  int64_t s, int64_t p, uint8_t* out) {
  const int64_t oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  // one padded row of maxima; 32 bytes past it for the vector paths' reads, code 0
  std::vector<uint8_t> row(static_cast<size_t>(w + 2 * p + k + 32), 0);
  const bool three = k == 3 && s == 2 && p <= 1;  // (the caller checks 2p <= k <= H + 2p)
  const uint8_t* end = x + n * c * h * w;
  for (int64_t nc = 0; nc < n * c; ++nc) {
    const uint8_t* src = x + nc * h * w;
    uint8_t* dst = out + nc * oh * ow;
    if (three) {  // AlexNet's pools: vector rows
      PoolPlane3x3Stride2(src, end, h, w, p, oh, ow, row.data(), dst, out + n * c * oh * ow);
      continue;
    }
    if (k == 2 && s == 2 && p == 0) {  // svhn's pools: branch-free, vectorized by the compiler
      for (int64_t oy = 0; oy < oh; ++oy) {
        const uint8_t* r0 = src + 2 * oy * w;
        const uint8_t* r1 = r0 + w;
        for (int64_t ox = 0; ox < ow; ++ox) {
          const uint8_t a = std::max(r0[2 * ox], r0[2 * ox + 1]);
          const uint8_t b = std::max(r1[2 * ox], r1[2 * ox + 1]);
          dst[oy * ow + ox] = std::max(a, b);
        }
      }
      continue;
    }
    PoolPlane<uint8_t, Max<uint8_t>>(src, h, w, k, s, p, oh, ow, 0, row, dst);  // pad: 0
  }
}

void MaxPoolFloat(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t s,
                  int64_t p, float* out, int threads) {
  const int64_t oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  ParallelFor(threads, n * c, [&](int64_t first, int64_t last) {
    std::vector<float> row(static_cast<size_t>(w + 2 * p + k));
    constexpr float kPad = -std::numeric_limits<float>::infinity();
    for (int64_t nc = first; nc < last; ++nc) {
      const float* src = x + nc * h * w;
      float* dst = out + nc * oh * ow;
      // A plane that holds a NaN (or inf: the same exponent test) again with the NaN-aware max.
      if (PoolPlane<float, Max<float>>(src, h, w, k, s, p, oh, ow, kPad, row, dst) != 0)
        PoolPlane<float, MaxNan<float>>(src, h, w, k, s, p, oh, ow, kPad, row, dst);
    }
  });
}

}  // namespace dorefa
