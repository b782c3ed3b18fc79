// pybind11 glue of the input-gradient GEMM (igrad.h) and of the byte transpose of the
// one-pixel route (byte_transpose.h): checks the arrays, releases the GIL. The Python face is
// dorefa.kernels.training (input_grad_codes, conv_input_grad).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "bindings_checks.h"
#include "buffers.h"
#include "byte_transpose.h"
#include "igrad.h"

namespace py = pybind11;

namespace dorefa {
namespace {

IgradGeom Geometry(const CodeArray& c, const CodeArray& w, int g_bits, int w_bits, int64_t stride,
                   int64_t padding, int64_t h, int64_t wd) {
  CheckBits("g_bits", g_bits);
  CheckBits("w_bits", w_bits);
  Require(c.ndim() == 4 && w.ndim() == 4,
          "c and w_codes must be 4-D: (N, O, OH, OW) and (O, C, KH, KW)");
  Require(c.shape(1) == w.shape(0), "c and w_codes must have the same O");
  Require(stride >= 1 && padding >= 0 && padding < 4096 && h >= 1 && wd >= 1,
          "stride >= 1, 0 <= padding < 4096 and an input of at least 1 x 1 are required");
  IgradGeom g;
  g.n = c.shape(0), g.o = c.shape(1), g.oh = c.shape(2), g.ow = c.shape(3);
  g.c = w.shape(1), g.kh = w.shape(2), g.kw = w.shape(3), g.h = h, g.w = wd;
  g.stride = stride, g.padding = padding, g.g_bits = g_bits, g.w_bits = w_bits;
  Require(h + 2 * padding >= g.kh && wd + 2 * padding >= g.kw &&
              g.oh == (h + 2 * padding - g.kh) / stride + 1 &&
              g.ow == (wd + 2 * padding - g.kw) / stride + 1,
          "c's spatial shape is not the convolution's output shape for this input size");
  Require(g.n >= 1 && g.o >= 1 && g.c >= 1, "c and w_codes must not be empty");
  Require(h * wd < (int64_t{1} << 31), "the input must have fewer than 2^31 pixels");
  const double bound =
      static_cast<double>(g.o * g.kh * g.kw) * ((1 << g_bits) - 1) * ((1 << w_bits) - 1);
  RequireOr(bound <= 2147483647.0, [&] {
    return "the input-gradient sums over " + std::to_string(g.o * g.kh * g.kw) +
           " terms may pass int32; use the reference kernel";
  });
  return g;
}

bool InputGradGemmFitsPy(const CodeArray& c, const CodeArray& w, int g_bits, int w_bits,
                         int64_t stride, int64_t padding, int64_t h, int64_t wd, bool amx) {
#ifdef DOREFA_HAVE_X86_KERNELS
  IgradGeom g = Geometry(c, w, g_bits, w_bits, stride, padding, h, wd);
  g.amx = amx;
  return InputGradGemmFits(g);
#else
  return false;
#endif
}

// The input gradient's sums (igrad.h): (K1 (N, C, H, W), K2 (1, C, H, W)) int32, or with
// `scale` ((N,) float64) dx (N, C, H, W) float32 = float32(scale * double(2 K1 - n_g K2)).
py::object InputGradGemmPy(const CodeArray& c, const CodeArray& w, int g_bits, int w_bits,
                           int64_t stride, int64_t padding, int64_t h, int64_t wd, int threads,
                           std::optional<py::array_t<double, py::array::c_style>> scale, bool amx) {
  CheckThreads(threads);
  IgradGeom g = Geometry(c, w, g_bits, w_bits, stride, padding, h, wd);
  g.amx = amx;
#ifdef DOREFA_HAVE_X86_KERNELS
  Require(InputGradGemmFits(g),
          "the input-gradient GEMM needs AVX-512 VNNI (amx=True: and AMX) and w_bits <= 7; check "
          "input_grad_gemm_fits first");
  Require(!scale || (scale->ndim() == 1 && scale->shape(0) == g.n), "scale must be (N,) float64");
  py::array_t<int32_t> k2 = OutputArray<int32_t>({1, g.c, g.h, g.w});
  IgradOut out;
  out.k2 = k2.mutable_data();
  py::array result;
  if (scale) {
    py::array_t<float> dx = OutputArray<float>({g.n, g.c, g.h, g.w});
    out.dx = dx.mutable_data(), out.scale = scale->data();
    result = std::move(dx);
  } else {
    py::array_t<int32_t> k1 = OutputArray<int32_t>({g.n, g.c, g.h, g.w});
    out.k1 = k1.mutable_data();
    result = std::move(k1);
  }
  uint32_t ors;
  {
    py::gil_scoped_release release;
    ors = InputGradGemm(g, c.data(), w.data(), out, threads);
  }
  CheckCodes("c", c, static_cast<uint8_t>(ors & 0xff), g_bits);
  CheckCodes("w_codes", w, static_cast<uint8_t>(ors >> 8), w_bits);
  if (scale) return result;
  return py::make_tuple(result, k2);
#else
  throw py::value_error("the input-gradient GEMM needs the x86 kernels");
#endif
}

// a (R, K) uint8 -> its transpose (K, R), contiguous (numpy's copy of a.T moved one byte at a
// time: 1 ms for svhn conv6's 512 x 3200 weights, 30x this).
py::array_t<uint8_t> TransposeCodesPy(const CodeArray& a) {
  Require(a.ndim() == 2, "transpose_codes takes a 2-D uint8 array");
  py::array_t<uint8_t> out = OutputArray<uint8_t>({a.shape(1), a.shape(0)});
  uint8_t* dst = out.mutable_data();
  py::gil_scoped_release release;
  TransposeBytes(a.data(), a.shape(0), a.shape(1), dst);
  return out;
}

}  // namespace

void BindInputGrad(py::module_& m) {
  m.def("transpose_codes", &TransposeCodesPy, py::arg("a"));
  m.def("input_grad_gemm_fits", &InputGradGemmFitsPy, py::arg("c"), py::arg("w_codes"),
        py::arg("g_bits"), py::arg("w_bits"), py::arg("stride"), py::arg("padding"), py::arg("h"),
        py::arg("w"), py::arg("amx") = false);
  m.def("input_grad_gemm", &InputGradGemmPy, py::arg("c"), py::arg("w_codes"), py::arg("g_bits"),
        py::arg("w_bits"), py::arg("stride"), py::arg("padding"), py::arg("h"), py::arg("w"),
        py::arg("threads"), py::arg("scale") = py::none(), py::arg("amx") = false);
}

}  // namespace dorefa
