// Short runs of bytes stored by plain stores (the int8 kernels' code runs, the float first
// layer's code runs). Internal linkage, one copy per ISA file (as int8conv_store.h): an inline
// function compiled with AVX-512 flags must not be the copy an AVX2 path calls.
#ifndef DOREFA_CSRC_BYTE_RUNS_H_
#define DOREFA_CSRC_BYTE_RUNS_H_

#include <cstdint>
#include <cstring>

namespace dorefa {
namespace {  // NOLINT(build/namespaces): one copy per ISA

// The first np (<= 8) bytes of q (little-endian) to dst, by plain stores.
inline void StoreRun8(uint8_t* dst, uint64_t q, int np) {
  if (np == 8) {
    std::memcpy(dst, &q, 8);
    return;
  }
  if (np & 4) {
    const auto v = static_cast<uint32_t>(q);
    std::memcpy(dst, &v, 4);
    q >>= 32;
    dst += 4;
  }
  if (np & 2) {
    const auto v = static_cast<uint16_t>(q);
    std::memcpy(dst, &v, 2);
    q >>= 16;
    dst += 2;
  }
  if (np & 1) *dst = static_cast<uint8_t>(q);
}

}  // namespace
}  // namespace dorefa

#endif  // DOREFA_CSRC_BYTE_RUNS_H_
