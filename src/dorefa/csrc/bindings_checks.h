// Argument checks shared by the pybind11 glue files (bindings*.cpp): each
// failure is a Python ValueError whose message says what was expected.
#ifndef DOREFA_CSRC_BINDINGS_CHECKS_H_
#define DOREFA_CSRC_BINDINGS_CHECKS_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace dorefa {

using FloatArray = pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>;
using CodeArray = pybind11::array_t<uint8_t, pybind11::array::c_style>;

inline void Require(bool ok, const char* msg) {
  if (!ok) throw pybind11::value_error(msg);
}

// Require with a message built only on failure (these checks run on every kernel call).
template <class Message>
void RequireOr(bool ok, Message&& message) {
  if (!ok) throw pybind11::value_error(message());
}

inline void CheckBits(const char* name, int bits) {
  RequireOr(bits >= 1 && bits <= 8, [&] {
    return std::string(name) + " must be an int in 1..8, got " + std::to_string(bits);
  });
}

// The most elements a padded input may have, N x C x (H + 2p) x (W + 2p) (N taken as at least 1):
// the kernels' buffer sizes stay far inside int64 (a padding of 2^31 - 4 made (H + 2p)(W + 2p)
// wrap to 0, and the packing wrote past its buffer).
constexpr double kMaxPaddedElements = 1099511627776.0;  // 2^40

inline void CheckPaddedSize(int64_t n, int64_t c, int64_t h, int64_t w, int64_t pad) {
  const double e = static_cast<double>(std::max<int64_t>(n, 1)) * static_cast<double>(c) *
                   (static_cast<double>(h) + 2.0 * static_cast<double>(pad)) *
                   (static_cast<double>(w) + 2.0 * static_cast<double>(pad));
  RequireOr(e <= kMaxPaddedElements, [&] {
    return "padding " + std::to_string(pad) + " makes the padded input N*C*(H+2p)*(W+2p) " +
           "larger than 2**40 elements; use a smaller padding";
  });
}

// The most threads a call takes (the module's MAX_THREADS; dorefa.runtime checks it at load).
constexpr int kMaxThreads = 1024;

inline void CheckThreads(int threads) {
  RequireOr(threads >= 1 && threads <= kMaxThreads,
            [] { return "threads must be in 1.." + std::to_string(kMaxThreads); });
}

// Reports the largest code when a packer's OR says some code needs more than `bits` bits.
inline void CheckCodes(const char* name, const CodeArray& a, uint8_t all_or, int bits) {
  if ((all_or >> bits) == 0) return;
  const uint8_t* p = a.data();
  const uint8_t mx = *std::max_element(p, p + a.size());
  throw pybind11::value_error(std::string(name) + " holds code " + std::to_string(mx) + " >= 2**" +
                              std::to_string(bits) + " = " + std::to_string(1 << bits) +
                              "; codes must be unsigned ints below 2**bits");
}

}  // namespace dorefa

#endif  // DOREFA_CSRC_BINDINGS_CHECKS_H_
