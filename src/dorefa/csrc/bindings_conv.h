// The bit convolution and the codes' max-pool as bindings.cpp checks and runs them, for the
// other glue files (bindings_prepared.cpp).
#ifndef DOREFA_CSRC_BINDINGS_CONV_H_
#define DOREFA_CSRC_BINDINGS_CONV_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings_checks.h"
#include "requant_table.h"

namespace dorefa {

using WordArray = pybind11::array_t<uint64_t, pybind11::array::c_style>;

// native.bitconv with its threshold table given (or null: no requant), no threshold arrays.
pybind11::array BitConvBound(const std::string& kernel, const CodeArray& x, const WordArray& wpk,
                             int64_t o, int64_t c, int64_t kh, int64_t kw, int x_bits, int w_bits,
                             int64_t stride, int64_t padding, int threads, const std::string& mode,
                             const RequantParams* table, bool fields);

// native.maxpool_codes.
pybind11::array_t<uint8_t> MaxPoolCodesBound(const CodeArray& x, int64_t k, int64_t s, int64_t p,
                                             int threads);

}  // namespace dorefa

#endif  // DOREFA_CSRC_BINDINGS_CONV_H_
