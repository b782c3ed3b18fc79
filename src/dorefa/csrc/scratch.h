// Per-thread scratch arrays that keep their largest allocation and are never initialised.
#ifndef DOREFA_CSRC_SCRATCH_H_
#define DOREFA_CSRC_SCRATCH_H_

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

namespace dorefa {

// Get(n): >= n elements of T, 64-byte aligned, uninitialised, valid until the next Get. A
// std::vector resized per call instead zeroes every element above the previous call's size:
// a network's layers alternate sizes, so each larger layer paid a fill of its whole buffer
// (up to ~600 KB a call at batch 32 in svhn's int8 layers) that its packer overwrites anyway.
template <class T>
class Scratch {
  static_assert(std::is_trivially_copyable_v<T>, "scratch holds plain values");

 public:
  T* Get(size_t n) {
    if (n > cap_ || p_ == nullptr) {
      const size_t bytes = (std::max<size_t>(n, 1) * sizeof(T) + 63) / 64 * 64;
      void* p = std::aligned_alloc(64, bytes);
      if (p == nullptr) throw std::bad_alloc();
      p_.reset(static_cast<T*>(p));
      cap_ = n;
    }
    return p_.get();
  }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> p_;
  size_t cap_ = 0;
};

}  // namespace dorefa

#endif  // DOREFA_CSRC_SCRATCH_H_
