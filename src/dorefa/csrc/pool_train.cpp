// Max-pool of integer training (pool_train.h has the rules).
#include "pool_train.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "thread_pool.h"

namespace dorefa {
namespace {

// (m, i) after offering (v, j): torch's rule, v > m or v is NaN.
inline void Offer(float v, uint8_t j, float& m, uint8_t& i) {
  const bool take = v > m || v != v;
  m = take ? v : m;
  i = take ? j : i;
}

void ForwardPlane(const float* x, int64_t h, int64_t w, int64_t k, float* y, uint8_t* pos) {
  const int64_t oh = h / k, ow = w / k;
  for (int64_t oy = 0; oy < oh; ++oy) {
    const float* r0 = x + oy * k * w;
    float* yr = y + oy * ow;
    uint8_t* pr = pos + oy * ow;
    if (k == 2) {  // the common case, in scan order: (0,0) (0,1) (1,0) (1,1)
      const float* r1 = r0 + w;
      for (int64_t ox = 0; ox < ow; ++ox) {
        float m = -std::numeric_limits<float>::infinity();
        uint8_t i = 0;
        Offer(r0[2 * ox], 0, m, i);
        Offer(r0[2 * ox + 1], 1, m, i);
        Offer(r1[2 * ox], 2, m, i);
        Offer(r1[2 * ox + 1], 3, m, i);
        yr[ox] = m;
        pr[ox] = i;
      }
      continue;
    }
    for (int64_t ox = 0; ox < ow; ++ox) {
      float m = -std::numeric_limits<float>::infinity();
      uint8_t i = 0;
      for (int64_t r = 0; r < k; ++r)
        for (int64_t t = 0; t < k; ++t)
          Offer(r0[r * w + ox * k + t], static_cast<uint8_t>(r * k + t), m, i);
      yr[ox] = m;
      pr[ox] = i;
    }
  }
}

// The float of bits b where `keep`, else +0.0.
inline float Keep(uint32_t b, bool keep) {
  const uint32_t bits = b & (0u - static_cast<uint32_t>(keep));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void BackwardPlane(const float* dy, const uint8_t* pos, int64_t h, int64_t w, int64_t k,
                   float* dx) {
  const int64_t oh = h / k, ow = w / k;
  if (k == 2) {  // every input of the pooled rows written once, branch-free
    for (int64_t oy = 0; oy < oh; ++oy) {
      float* r0 = dx + 2 * oy * w;
      float* r1 = r0 + w;
      const float* g = dy + oy * ow;
      const uint8_t* i = pos + oy * ow;
      for (int64_t ox = 0; ox < ow; ++ox) {
        const float v = 0.0f + g[ox];  // as torch's 0 + dy
        uint32_t b;
        std::memcpy(&b, &v, 4);
        r0[2 * ox] = Keep(b, i[ox] == 0);  // bit masks, not branches: the positions are random
        r0[2 * ox + 1] = Keep(b, i[ox] == 1);
        r1[2 * ox] = Keep(b, i[ox] == 2);
        r1[2 * ox + 1] = Keep(b, i[ox] == 3);
      }
      if (w % 2 != 0) r0[w - 1] = r1[w - 1] = 0.0f;
    }
    std::fill(dx + 2 * oh * w, dx + h * w, 0.0f);  // a last odd row
    return;
  }
  std::fill(dx, dx + h * w, 0.0f);
  for (int64_t oy = 0; oy < oh; ++oy) {
    float* base = dx + oy * k * w;
    for (int64_t ox = 0; ox < ow; ++ox) {
      const uint8_t i = pos[oy * ow + ox];
      base[(i / k) * w + ox * k + i % k] += dy[oy * ow + ox];  // 0 + dy, as torch
    }
  }
}

}  // namespace

void MaxPoolTrainForward(const float* x, int64_t planes, int64_t h, int64_t w, int64_t k, float* y,
                         uint8_t* pos, int threads) {
  const int64_t out = (h / k) * (w / k);
  ParallelFor(threads, planes, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p)
      ForwardPlane(x + p * h * w, h, w, k, y + p * out, pos + p * out);
  });
}

void MaxPoolTrainBackward(const float* dy, const uint8_t* pos, int64_t planes, int64_t h, int64_t w,
                          int64_t k, float* dx, int threads) {
  const int64_t out = (h / k) * (w / k);
  ParallelFor(threads, planes, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p)
      BackwardPlane(dy + p * out, pos + p * out, h, w, k, dx + p * h * w);
  });
}

}  // namespace dorefa
