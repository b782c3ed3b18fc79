// pybind11 glue: validation, buffers, GIL release. The Python face is dorefa/kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bitconv.h"
#include "bitpack.h"
#include "conv_float.h"
#include "dispatch.h"
#include "output_transform.h"

namespace py = pybind11;

namespace dorefa {
namespace {

using CodeArray = py::array_t<uint8_t, py::array::c_style>;
using WordArray = py::array_t<uint64_t, py::array::c_style>;

void Require(bool ok, const char* msg) {
  if (!ok) throw py::value_error(msg);
}

// Require with a message built only on failure (these checks run on every kernel call).
template <class Message>
void RequireOr(bool ok, Message&& message) {
  if (!ok) throw py::value_error(message());
}

void CheckBits(const char* name, int bits) {
  RequireOr(bits >= 1 && bits <= 8, [&] {
    return std::string(name) + " must be an int in 1..8, got " + std::to_string(bits);
  });
}

// Reports the largest code when a packer's OR says some code needs more than `bits` bits.
void CheckCodes(const char* name, const CodeArray& a, uint8_t all_or, int bits) {
  if ((all_or >> bits) == 0) return;
  const uint8_t* p = a.data();
  const uint8_t mx = *std::max_element(p, p + a.size());
  throw py::value_error(std::string(name) + " holds code " + std::to_string(mx) + " >= 2**" +
                        std::to_string(bits) + " = " + std::to_string(1 << bits) +
                        "; codes must be unsigned ints below 2**bits");
}

// std::aligned_alloc with the size rounded up to a multiple of `align` (as it requires);
// throws std::bad_alloc instead of returning null.
void* AlignedAlloc(size_t bytes, size_t align) {
  void* p = std::aligned_alloc(align, std::max(align, (bytes + align - 1) / align * align));
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

size_t Elements(const std::vector<int64_t>& shape) {
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  return count;
}

// Output arrays of 64 KiB or more come from a small pool of reused buffers. A fresh large
// numpy array is a fresh mmap: the kernel then page-faults and zeroes every page at the first
// store, which cost ~285 us per call for an 8 MB output (AlexNet conv3 at batch 32, int32),
// 3% of that convolution. A buffer goes back to the pool when numpy frees the array (capsule
// destructor, GIL held); the pool keeps at most kPoolBytes and hands out a buffer only to a
// request of between half and all of its size.
class BufferPool {
 public:
  static constexpr size_t kMinBytes = size_t{64} << 10;
  static constexpr size_t kPoolBytes = size_t{256} << 20;
  static constexpr size_t kHugeBytes = size_t{2} << 20;

  static BufferPool& Get() {
    static BufferPool* pool = new BufferPool;  // never destroyed: capsules may outlive exit
    return *pool;
  }
  // Returns a buffer of >= bytes, aligned to 4 KiB (2 MiB when large); *cap receives its size.
  void* Take(size_t bytes, size_t* cap) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = free_.size();
      for (size_t i = 0; i < free_.size(); ++i) {
        const size_t c = free_[i].first;
        if (c >= bytes && c / 2 <= bytes && (best == free_.size() || c < free_[best].first))
          best = i;
      }
      if (best != free_.size()) {
        *cap = free_[best].first;
        void* p = free_[best].second;
        cached_ -= *cap;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
        return p;
      }
    }
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
  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;
  size_t cached_ = 0;
};

template <class T>
py::array_t<T> NewArray(const std::vector<int64_t>& shape) {
  const size_t bytes = Elements(shape) * sizeof(T);
  if (bytes < BufferPool::kMinBytes) return py::array_t<T>(shape);
  struct Owned {
    void* p;
    size_t cap;
  };
  auto owned = std::make_unique<Owned>();
  owned->p = BufferPool::Get().Take(bytes, &owned->cap);
  T* data = static_cast<T*>(owned->p);
  // From here the capsule owns the buffer (and gives it back to the pool when freed).
  py::capsule base(owned.get(), [](void* o) {
    auto* ow = static_cast<Owned*>(o);
    BufferPool::Get().Give(ow->p, ow->cap);
    delete ow;
  });
  owned.release();
  return py::array_t<T>(shape, data, base);
}

// A 64-byte aligned array (capsule-owned). Packed weights are read as whole 64-byte vectors;
// numpy only aligns to 16 bytes, and cache-line-split weight loads cost ~8% of a large layer.
template <class T>
py::array_t<T> AlignedArray(const std::vector<int64_t>& shape) {
  void* p = AlignedAlloc(Elements(shape) * sizeof(T), 64);
  py::capsule base(p, [](void* q) { std::free(q); });
  return py::array_t<T>(shape, static_cast<T*>(p), base);
}

// The packed weights as the kernels want them: `words` itself when 64-byte aligned (as
// pack_weights makes them), else a copy in a per-thread aligned buffer.
const uint64_t* AlignedWeights(const WordArray& words) {
  const uint64_t* p = words.data();
  if (reinterpret_cast<uintptr_t>(p) % 64 == 0) return p;
  struct Free {
    void operator()(void* q) const { std::free(q); }
  };
  static thread_local std::unique_ptr<uint64_t, Free> buf;
  static thread_local size_t cap = 0;
  const size_t n = static_cast<size_t>(words.size());
  if (cap < n) {
    buf.reset(static_cast<uint64_t*>(AlignedAlloc(n * sizeof(uint64_t), 64)));
    cap = n;
  }
  std::copy(p, p + n, buf.get());
  return buf.get();
}

// Weight geometry from (O, C, KH, KW) and bits.
ConvGeom WeightGeom(int64_t o, int64_t c, int64_t kh, int64_t kw, int w_bits) {
  ConvGeom g;
  g.n = 0;
  g.c = c;
  g.h = kh;
  g.w = kw;
  g.o = o;
  g.kh = kh;
  g.kw = kw;
  g.w_bits = w_bits;
  g.Finalize();
  return g;
}

WordArray PackWeightsPy(const CodeArray& w, int w_bits) {
  CheckBits("w_bits", w_bits);
  Require(w.ndim() == 4, "w_codes must be 4-D (O, C, KH, KW)");
  Require(w.shape(0) >= 1 && w.shape(1) >= 1 && w.shape(2) >= 1 && w.shape(3) >= 1,
          "w_codes must have no empty dimension");
  ConvGeom g = WeightGeom(w.shape(0), w.shape(1), w.shape(2), w.shape(3), w_bits);
  WordArray out = AlignedArray<uint64_t>({g.ob, static_cast<int64_t>(w_bits), g.l, kLanes});
  uint8_t all_or;
  {
    py::gil_scoped_release release;
    const KernelInfo& fastest = KernelFor(SupportedBackends().front());
    all_or = PackWeights(g, w.data(), out.mutable_data(), fastest.pack);
  }
  CheckCodes("w_codes", w, all_or, w_bits);
  return out;
}

// Variant name of the kernel that ran the calling thread's last convolution (for tests that
// assert which path ran, not only which one was asked for).
thread_local const char* last_kernel = "";

// mode: "acc" (int32 sum p*q), "signed" (int32 D), "requant" (uint8 codes).
py::array BitConvPy(const std::string& backend, const CodeArray& x, const WordArray& wpk, int64_t o,
                    int64_t c, int64_t kh, int64_t kw, int x_bits, int w_bits, int64_t stride,
                    int64_t padding, int threads, const std::string& mode,
                    std::optional<py::array_t<int32_t, py::array::c_style>> thresholds,
                    std::optional<py::array_t<int8_t, py::array::c_style>> direction) {
  const KernelInfo& kernel = KernelFor(backend);
  last_kernel = kernel.name;
  CheckBits("x_bits", x_bits);
  CheckBits("w_bits", w_bits);
  Require(x.ndim() == 4, "x_codes must be 4-D (N, C, H, W)");
  RequireOr(stride >= 1, [&] { return "stride must be >= 1, got " + std::to_string(stride); });
  RequireOr(padding >= 0, [&] { return "padding must be >= 0, got " + std::to_string(padding); });
  Require(threads >= 1 && threads <= 1024, "threads must be in 1..1024");
  Require(o >= 1 && c >= 1 && kh >= 1 && kw >= 1, "weight shape must have no empty dimension");
  RequireOr(x.shape(1) == c, [&] {
    return "x_codes has " + std::to_string(x.shape(1)) + " channels but the weights expect " +
           std::to_string(c);
  });
  ConvGeom g;
  g.n = x.shape(0);
  g.c = c;
  g.h = x.shape(2);
  g.w = x.shape(3);
  g.o = o;
  g.kh = kh;
  g.kw = kw;
  g.stride = stride;
  g.pad = padding;
  g.x_bits = x_bits;
  g.w_bits = w_bits;
  Require(g.h + 2 * padding >= kh && g.w + 2 * padding >= kw,
          "kernel larger than the padded input");
  g.Finalize();
  Require(wpk.ndim() == 4 && wpk.shape(0) == g.ob && wpk.shape(1) == w_bits &&
              wpk.shape(2) == g.l && wpk.shape(3) == kLanes,
          "packed weights do not match (O, C, KH, KW, w_bits)");
  // Largest |result|: every product at its maximum over the whole receptive field.
  const double bound = static_cast<double>(c * kh * kw) * ((1 << x_bits) - 1) * ((1 << w_bits) - 1);
  Require(bound <= std::numeric_limits<int32_t>::max(),
          "C*KH*KW*(2**x_bits-1)*(2**w_bits-1) exceeds int32; split the input channels");
  int64_t t = 0;
  if (mode == "requant") {
    Require(thresholds.has_value() && direction.has_value(),
            "requant needs thresholds and direction");
    Require(thresholds->ndim() == 2 && thresholds->shape(0) == o,
            "thresholds must be int32 (O, T)");
    t = thresholds->shape(1);
    Require(t >= 1 && t <= 255, "thresholds must have 1..255 columns");
    Require(direction->ndim() == 1 && direction->shape(0) == o, "direction must be int8 (O,)");
    const int8_t* dp = direction->data();
    for (int64_t i = 0; i < o; ++i)
      Require(dp[i] == 1 || dp[i] == -1, "direction values must be +1 or -1");
  } else {
    Require(mode == "acc" || mode == "signed", "mode must be acc, signed or requant");
  }

  static thread_local std::vector<uint64_t> xpk;
  xpk.resize(static_cast<size_t>(g.XpkSize()));
  const uint64_t* w = AlignedWeights(wpk);
  const std::vector<int64_t> shape{g.n, g.o, g.oh, g.ow};
  if (kernel.fused != nullptr && mode != "acc") {
    // Epilogue in the tile kernel: no int32 round trip through memory.
    Epilogue ep;
    ep.mode = mode == "requant" ? Epilogue::kRequant : Epilogue::kSigned;
    std::vector<int32_t> u;
    std::vector<uint16_t> neg;
    py::array result;
    int32_t* acc = nullptr;
    if (mode == "requant") {
      u.resize(static_cast<size_t>(ExpandedThresholdsSize(g, t)));
      neg.resize(static_cast<size_t>(g.ob * (kLanes / 2)));
      ExpandThresholds(g, thresholds->data(), t, direction->data(), u.data(), neg.data());
      ep.u = u.data();
      ep.neg = neg.data();
      ep.t = t;
      py::array_t<uint8_t> codes = NewArray<uint8_t>(shape);
      ep.codes = codes.mutable_data();
      result = std::move(codes);
    } else {
      py::array_t<int32_t> d = NewArray<int32_t>(shape);
      acc = d.mutable_data();
      result = std::move(d);
    }
    uint8_t all_or;
    {
      py::gil_scoped_release release;
      all_or = RunBitConvFused(kernel, g, x.data(), xpk.data(), w, acc, ep, threads);
    }
    CheckCodes("x_codes", x, all_or, x_bits);
    return result;
  }
  py::array_t<int32_t> acc_out;
  std::vector<int32_t> acc_tmp;
  int32_t* acc;
  if (mode == "requant") {
    acc_tmp.resize(static_cast<size_t>(g.n * g.o * g.oh * g.ow));
    acc = acc_tmp.data();
  } else {
    acc_out = NewArray<int32_t>(shape);
    acc = acc_out.mutable_data();
  }
  uint8_t all_or;
  {
    py::gil_scoped_release release;
    all_or = RunBitConv(kernel, g, x.data(), xpk.data(), w, acc, mode != "acc", threads);
  }
  CheckCodes("x_codes", x, all_or, x_bits);
  if (mode != "requant") return std::move(acc_out);
  py::array_t<uint8_t> codes = NewArray<uint8_t>(shape);
  {
    uint8_t* dst = codes.mutable_data();
    const int32_t* th = thresholds->data();
    const int8_t* dir = direction->data();
    py::gil_scoped_release release;
    Requantize(g, acc, th, t, dir, dst, threads);
  }
  return std::move(codes);
}

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// Fused float first layer (conv_float.h); arguments validated by dorefa.kernels.
py::array_t<uint8_t> ConvFloatQuantizePy(const std::string& backend, const FloatArray& x,
                                         const FloatArray& weight, const FloatArray& bias,
                                         int64_t stride, int64_t padding, int64_t pool, int bits,
                                         int threads) {
  KernelFor(backend);  // a supported native backend
  CheckBits("bits", bits);
  Require(x.ndim() == 4 && weight.ndim() == 4 && bias.ndim() == 1, "bad ranks");
  Require(stride >= 1 && padding >= 0 && pool >= 1, "bad stride / padding / pool");
  Require(threads >= 1 && threads <= 1024, "threads must be in 1..1024");
  FloatConvGeom g;
  g.n = x.shape(0);
  g.c = x.shape(1);
  g.h = x.shape(2);
  g.w = x.shape(3);
  g.o = weight.shape(0);
  g.kh = weight.shape(2);
  g.kw = weight.shape(3);
  Require(weight.shape(1) == g.c && bias.shape(0) == g.o && g.o >= 1 && g.kh >= 1 && g.kw >= 1,
          "weight / bias do not fit the input");
  Require(g.h + 2 * padding >= g.kh && g.w + 2 * padding >= g.kw,
          "kernel larger than the padded input");
  g.stride = stride;
  g.pad = padding;
  g.pool = pool;
  g.bits = bits;
  g.oh = (g.h + 2 * padding - g.kh) / stride + 1;
  g.ow = (g.w + 2 * padding - g.kw) / stride + 1;
  Require(g.oh >= pool && g.ow >= pool, "pool larger than the conv output");
  g.ph = g.oh / pool;
  g.pw = g.ow / pool;
  py::array_t<uint8_t> out = NewArray<uint8_t>({g.n, g.o, g.ph, g.pw});
  {
    uint8_t* dst = out.mutable_data();
    py::gil_scoped_release release;
    ConvFloatQuantize(g, x.data(), weight.data(), bias.data(), dst, backend == "avx512", threads);
  }
  return out;
}

py::array_t<uint8_t> MaxPoolCodesPy(const CodeArray& x, int64_t k, int64_t s, int64_t p) {
  Require(x.ndim() == 4, "x must be 4-D (N, C, H, W)");
  Require(k >= 1 && s >= 1 && p >= 0 && 2 * p <= k, "bad kernel / stride / padding");
  Require(x.shape(2) + 2 * p >= k && x.shape(3) + 2 * p >= k, "kernel larger than the input");
  const int64_t oh = (x.shape(2) + 2 * p - k) / s + 1, ow = (x.shape(3) + 2 * p - k) / s + 1;
  py::array_t<uint8_t> out = NewArray<uint8_t>({x.shape(0), x.shape(1), oh, ow});
  uint8_t* dst = out.mutable_data();
  py::gil_scoped_release release;
  MaxPoolCodes(x.data(), x.shape(0), x.shape(1), x.shape(2), x.shape(3), k, s, p, dst);
  return out;
}

std::string KernelName(const std::string& backend) { return KernelFor(backend).name; }

// For benchmarks: runs `iterations` x 8 dependent register-register integer adds (1 cycle
// latency each on x86 cores), so cycles ~= 8 * iterations; returns the elapsed seconds.
// Measures the clock the core actually runs at (turbo included, and time slices lost to other
// processes). Register-register on purpose: recent cores fold add-immediate chains at rename,
// which would make them look faster than one add per cycle.
double DependentAddSeconds(int64_t iterations) {
  py::gil_scoped_release release;
  const auto t0 = std::chrono::steady_clock::now();
#if defined(__x86_64__)
  uint64_t acc = 0, one = 1;
  int64_t n = iterations;
  __asm__ volatile(
      "1:\n\t"
      "add %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\t"
      "add %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\t"
      "dec %1\n\tjnz 1b\n\t"
      : "+r"(acc), "+r"(n)
      : "r"(one)
      : "cc");
#else
  volatile uint64_t acc = 0;
  for (int64_t i = 0; i < 8 * iterations; ++i) acc = acc + 1;
#endif
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double>(t1 - t0).count();
}

}  // namespace
}  // namespace dorefa

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "dorefa bit-serial convolution kernels (see dorefa.kernels for the Python API)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  m.def("compiled_backends", &dorefa::CompiledBackends);
  m.def("supported_backends", &dorefa::SupportedBackends);
  m.def("resolve_backend", &dorefa::ResolveBackend, py::arg("requested"));
  m.def("kernel_name", &dorefa::KernelName, py::arg("backend"));
  m.def("last_kernel", [] { return std::string(dorefa::last_kernel); });
  m.def("dependent_add_seconds", &dorefa::DependentAddSeconds, py::arg("iterations"));
  m.def("pack_weights", &dorefa::PackWeightsPy, py::arg("w_codes"), py::arg("w_bits"));
  m.def("conv_float_quantize", &dorefa::ConvFloatQuantizePy, py::arg("backend"), py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"), py::arg("pool"),
        py::arg("bits"), py::arg("threads"));
  m.def("maxpool_codes", &dorefa::MaxPoolCodesPy, py::arg("x"), py::arg("kernel"),
        py::arg("stride"), py::arg("padding"));
  m.def("bitconv", &dorefa::BitConvPy, py::arg("backend"), py::arg("x_codes"), py::arg("wpk"),
        py::arg("o"), py::arg("c"), py::arg("kh"), py::arg("kw"), py::arg("x_bits"),
        py::arg("w_bits"), py::arg("stride"), py::arg("padding"), py::arg("threads"),
        py::arg("mode"), py::arg("thresholds") = py::none(), py::arg("direction") = py::none());
}
