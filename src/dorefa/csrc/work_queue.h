// Work queues of the parallel convolutions (bitconv.cpp, int8conv.cpp): which thread runs
// which item. Which thread runs an item never changes the item's result.
#ifndef DOREFA_CSRC_WORK_QUEUE_H_
#define DOREFA_CSRC_WORK_QUEUE_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace dorefa {

// Hands out [begin, end) chunks of `total` items to whichever thread asks first. Dynamic
// rather than static shares: a thread that starts late (busy machine) finds its share
// already taken instead of holding back the others. Chunks are guided: a share of what is
// left (1 / (2 * threads)), so they start large (few atomics) and shrink to one item at the
// end, where a large chunk would leave the other threads idle while one finishes it. Which
// thread runs an item never changes the item's result.
class WorkQueue {
 public:
  WorkQueue(int64_t total, int nt) : total_(total), div_(2 * static_cast<int64_t>(nt)) {}
  bool Next(int64_t* begin, int64_t* end) {
    int64_t b = next_.load(std::memory_order_relaxed);
    int64_t e;
    do {
      if (b >= total_) return false;
      e = b + std::max<int64_t>(1, (total_ - b) / div_);
    } while (!next_.compare_exchange_weak(b, e, std::memory_order_relaxed));
    *begin = b;
    *end = e;
    return true;
  }

 private:
  const int64_t total_, div_;
  std::atomic<int64_t> next_{0};
};

// Work items split into one contiguous home range per thread: a thread takes items from its
// own range first, then helps the others (from the front of their ranges), so a thread that
// starts late holds nobody back. With the same split every call, a thread keeps working on
// the same output channels and pixels, so their weights and packed activations stay in its
// own core's caches instead of moving between cores on every call. Items come one at a time
// (a convolution item is microseconds of work, a packing item ~0.3 us: far more than one
// atomic add on a line no other thread writes).
class HomeQueue {
 public:
  HomeQueue(int64_t total, int nt) : nt_(nt), ranges_(static_cast<size_t>(nt)) {
    for (int k = 0; k < nt; ++k) {
      ranges_[k].next.store(total * k / nt, std::memory_order_relaxed);
      ranges_[k].end = total * (k + 1) / nt;
    }
  }
  bool Next(int tid, int64_t* item) {
    for (int k = 0; k < nt_; ++k) {
      Range& r = ranges_[(tid + k) % nt_];
      if (r.next.load(std::memory_order_relaxed) >= r.end) continue;
      const int64_t i = r.next.fetch_add(1, std::memory_order_relaxed);
      if (i < r.end) {
        *item = i;
        return true;
      }
    }
    return false;
  }

 private:
  struct alignas(64) Range {  // one cache line each: threads count on their own lines
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  const int nt_;
  std::vector<Range> ranges_;
};

}  // namespace dorefa

#endif  // DOREFA_CSRC_WORK_QUEUE_H_
