// Memory of the kernels' arrays: numpy outputs from a pool of reused buffers, 64-byte aligned
// arrays, and aligned copies of misaligned inputs. Call the array functions with the GIL held.
#ifndef DOREFA_CSRC_BUFFERS_H_
#define DOREFA_CSRC_BUFFERS_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace dorefa {

// std::aligned_alloc with the size rounded up to a multiple of `align` (as it requires);
// throws std::bad_alloc instead of returning null. Free with std::free.
void* AlignedAlloc(size_t bytes, size_t align);

// The buffer pool. Output arrays of kPoolMinBytes or more come from a small pool of reused
// buffers. A fresh large numpy array is a fresh mmap: the kernel then page-faults and zeroes
// every page at the first store, which cost ~285 us per call for an 8 MB output (AlexNet conv3
// at batch 32, int32), 3% of that convolution. A buffer goes back to the pool when numpy frees
// the array; the pool keeps at most 256 MiB and hands out a buffer only to a request of
// between half and all of its size.
constexpr size_t kPoolMinBytes = size_t{64} << 10;
// A buffer of >= bytes, aligned to 4 KiB (2 MiB, advised to use huge pages, when large);
// *cap receives its size, to give back with PoolGive. Thread-safe.
void* PoolTake(size_t bytes, size_t* cap);
void PoolGive(void* p, size_t cap);

// Uninitialised scratch of >= n elements of T from the pool (so a kernel's large packing
// buffers are not mapped and page-faulted afresh every call), given back when destroyed.
template <class T>
class PoolScratch {
 public:
  explicit PoolScratch(size_t n)
      : p_(static_cast<T*>(PoolTake(std::max<size_t>(n, 1) * sizeof(T), &cap_))) {}
  ~PoolScratch() { PoolGive(p_, cap_); }
  PoolScratch(const PoolScratch&) = delete;
  PoolScratch& operator=(const PoolScratch&) = delete;
  T* data() const { return p_; }

 private:
  size_t cap_ = 0;
  T* p_;
};

size_t Elements(const std::vector<int64_t>& shape);

// A C-contiguous numpy array for a kernel's output (pooled when large).
template <class T>
pybind11::array_t<T> OutputArray(const std::vector<int64_t>& shape) {
  const size_t bytes = Elements(shape) * sizeof(T);
  if (bytes < kPoolMinBytes) return pybind11::array_t<T>(shape);
  struct Owned {
    void* p;
    size_t cap;
  };
  auto owned = std::make_unique<Owned>();
  owned->p = PoolTake(bytes, &owned->cap);
  T* data = static_cast<T*>(owned->p);
  // From here the capsule owns the buffer (and gives it back to the pool when freed).
  pybind11::capsule base(owned.get(), [](void* o) {
    auto* ow = static_cast<Owned*>(o);
    PoolGive(ow->p, ow->cap);
    delete ow;
  });
  owned.release();
  return pybind11::array_t<T>(shape, data, base);
}

// A 64-byte aligned array (capsule-owned). Packed weights are read as whole 64-byte vectors;
// numpy only aligns to 16 bytes, and cache-line-split weight loads cost ~8% of a large layer.
template <class T>
pybind11::array_t<T> AlignedArray(const std::vector<int64_t>& shape) {
  void* p = AlignedAlloc(Elements(shape) * sizeof(T), 64);
  pybind11::capsule base(p, [](void* q) { std::free(q); });
  return pybind11::array_t<T>(shape, static_cast<T*>(p), base);
}

// The n words at p, 64-byte aligned: p itself when it is (as pack_weights makes them), else a
// copy in a per-thread buffer (valid until the thread's next call).
const uint64_t* Aligned64(const uint64_t* p, size_t n);

}  // namespace dorefa

#endif  // DOREFA_CSRC_BUFFERS_H_
