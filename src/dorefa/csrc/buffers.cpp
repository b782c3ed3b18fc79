#include "buffers.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>

namespace dorefa {
namespace {

class BufferPool {
 public:
  static constexpr size_t kPoolBytes = size_t{256} << 20;
  static constexpr size_t kHugeBytes = size_t{2} << 20;

  static BufferPool& Get() {
    static BufferPool* pool = new BufferPool;  // never destroyed: capsules may outlive exit
    return *pool;
  }
  void* Take(size_t bytes, size_t* cap) {
    if (void* p = TakeCached(bytes, cap)) return p;
    // Large buffers on 2 MiB boundaries, advised to use huge pages: an 8 MB output otherwise
    // spans ~2000 4 KiB pages, as many as the second-level TLB holds.
    const size_t align = bytes >= kHugeBytes ? kHugeBytes : 4096;
    *cap = (bytes + align - 1) / align * align;
    void* p = AlignedAlloc(*cap, align);
#ifdef MADV_HUGEPAGE
    if (align == kHugeBytes) madvise(p, *cap, MADV_HUGEPAGE);
#endif
    return p;
  }
  void Give(void* p, size_t cap) {
    std::lock_guard<std::mutex> lock(mu_);
    while (!free_.empty() && cached_ + cap > kPoolBytes) {  // drop the oldest
      cached_ -= free_.front().first;
      std::free(free_.front().second);
      free_.erase(free_.begin());
    }
    if (cap > kPoolBytes) {
      std::free(p);
      return;
    }
    free_.emplace_back(cap, p);
    cached_ += cap;
  }

 private:
  // The smallest cached buffer of between `bytes` and twice that, or null.
  void* TakeCached(size_t bytes, size_t* cap) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i) {
      const size_t c = free_[i].first;
      if (c >= bytes && c / 2 <= bytes && (best == free_.size() || c < free_[best].first)) best = i;
    }
    if (best == free_.size()) return nullptr;
    *cap = free_[best].first;
    void* p = free_[best].second;
    cached_ -= *cap;
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
    return p;
  }

  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;
  size_t cached_ = 0;
};

}  // namespace

void* AlignedAlloc(size_t bytes, size_t align) {
  void* p = std::aligned_alloc(align, std::max(align, (bytes + align - 1) / align * align));
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* PoolTake(size_t bytes, size_t* cap) { return BufferPool::Get().Take(bytes, cap); }

void PoolGive(void* p, size_t cap) { BufferPool::Get().Give(p, cap); }

size_t Elements(const std::vector<int64_t>& shape) {
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  return count;
}

const uint64_t* Aligned64(const uint64_t* p, size_t n) {
  if (reinterpret_cast<uintptr_t>(p) % 64 == 0) return p;
  struct Free {
    void operator()(void* q) const { std::free(q); }
  };
  static thread_local std::unique_ptr<uint64_t, Free> buf;
  static thread_local size_t cap = 0;
  if (cap < n) {
    buf.reset(static_cast<uint64_t*>(AlignedAlloc(n * sizeof(uint64_t), 64)));
    cap = n;
  }
  std::copy(p, p + n, buf.get());
  return buf.get();
}

}  // namespace dorefa
