// pybind11 glue of the weight gradient of integer training (wgrad.h): checks the arrays,
// releases the GIL. The Python face is dorefa.kernels.training (weight_grad_codes,
// conv_weight_grad).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings_checks.h"
#include "buffers.h"
#include "wgrad.h"
#include "wgrad_digits.h"

namespace py = pybind11;

namespace dorefa {
namespace {

// Weight gradient of integer training (wgrad.h): without `scale`, the per-sample sums S
// (N, O, C*KH*KW) int32; with it (N float64), dW (O, C*KH*KW) float64 = sum_b scale_b S_b;
// with `divisor` too, float32(dW / divisor) (the training entry point's last two steps).
py::array WeightGradPy(const std::string& kernel_name, const CodeArray& c, const CodeArray& x,
                       int g_bits, int a_bits, int64_t kh, int64_t kw, int64_t stride,
                       int64_t padding, int threads,
                       std::optional<py::array_t<double, py::array::c_style>> scale,
                       std::optional<double> divisor) {
  CheckBits("g_bits", g_bits);
  CheckBits("a_bits", a_bits);
  CheckThreads(threads);
  Require(c.ndim() == 4 && x.ndim() == 4,
          "c and x_codes must be 4-D: (N, O, OH, OW) and (N, C, H, W)");
  Require(c.shape(0) == x.shape(0), "c and x_codes must have the same batch size");
  Require(kh >= 1 && kw >= 1 && stride >= 1 && padding >= 0 && padding < 4096,
          "kernel >= 1, stride >= 1 and 0 <= padding < 4096 are required");
  WgradGeom g;
  g.n = x.shape(0), g.c = x.shape(1), g.h = x.shape(2), g.w = x.shape(3);
  g.o = c.shape(1), g.oh = c.shape(2), g.ow = c.shape(3);
  g.kh = kh, g.kw = kw, g.stride = stride, g.padding = padding;
  g.g_bits = g_bits, g.a_bits = a_bits;
  Require(g.h + 2 * padding >= kh && g.w + 2 * padding >= kw &&
              g.oh == (g.h + 2 * padding - kh) / stride + 1 &&
              g.ow == (g.w + 2 * padding - kw) / stride + 1,
          "c's spatial shape is not the convolution's output shape for x_codes");
  Require(std::min({g.n, g.o, g.c}) >= 1, "c and x_codes must not be empty");
  // The kernels sum modulo 2^32; only S (|S| <= P n_g n_a), Xsum and Csum must fit int32.
  const double bound = static_cast<double>(g.P()) * ((1 << g_bits) - 1) * ((1 << a_bits) - 1);
  RequireOr(bound <= 2147483647.0, [&] {
    return "the weight-gradient sums of " + std::to_string(g.P()) +
           " output pixels may pass int32 (P * n_g * n_a > 2^31 - 1); use the reference kernel";
  });
  const WgradKernel* kernel = nullptr;
  for (int i = 0; i < WgradKernelCount(); ++i)
    if (kernel_name == WgradKernelAt(i).name) kernel = &WgradKernelAt(i);
  RequireOr(kernel != nullptr, [&] {
    return "weight-gradient kernel " + kernel_name + " is not available on this CPU";
  });
  Require(!divisor || scale, "divisor needs scale");
  WgradOutput out;
  py::array result;
  if (scale) {
    Require(scale->ndim() == 1 && scale->shape(0) == g.n, "scale must be (N,) float64");
    out.scale = scale->data();
    if (divisor) {
      py::array_t<float> dw = OutputArray<float>({g.o, g.K()});
      out.dw32 = dw.mutable_data();
      out.divisor = *divisor;
      result = std::move(dw);
    } else {
      py::array_t<double> dw = OutputArray<double>({g.o, g.K()});
      out.dw = dw.mutable_data();
      result = std::move(dw);
    }
  } else {
    py::array_t<int32_t> s = OutputArray<int32_t>({g.n, g.o, g.K()});
    out.s = s.mutable_data();
    result = std::move(s);
  }
  uint32_t ors;
  {
    py::gil_scoped_release release;
    ors = RunWeightGrad(*kernel, g, c.data(), x.data(), out, threads);
  }
  CheckCodes("c", c, static_cast<uint8_t>(ors & 0xff), g_bits);
  CheckCodes("x_codes", x, static_cast<uint8_t>(ors >> 8), a_bits);
  return result;
}

std::vector<std::string> WgradKernelsPy() {
  std::vector<std::string> names;
  for (int i = 0; i < WgradKernelCount(); ++i) names.emplace_back(WgradKernelAt(i).name);
  return names;
}

// (digits, base) of the one-pixel digit route (wgrad_digits.h) for N = len(scale) samples at
// (g_bits, a_bits) with these scales, (0, 0) where it does not apply; whether `wgrad-vnni`
// takes it also needs that kernel on this CPU.
std::pair<int, int64_t> WgradDigitPlanPy(int g_bits, int a_bits,
                                         const py::array_t<double, py::array::c_style>& scale) {
  CheckBits("g_bits", g_bits);
  CheckBits("a_bits", a_bits);
  Require(scale.ndim() == 1, "scale must be (N,) float64");
  WgradGeom g;
  g.n = scale.shape(0), g.o = g.c = g.h = g.w = g.kh = g.kw = g.oh = g.ow = 1;
  g.g_bits = g_bits, g.a_bits = a_bits;
  WgradOutput out;
  out.scale = scale.data();
  const DigitPlan plan = PlanDigits(g, out);
  return {plan.digits, plan.base};
}

}  // namespace

void BindWeightGrad(py::module_& m) {
  m.def("weight_grad", &WeightGradPy, py::arg("kernel"), py::arg("c"), py::arg("x_codes"),
        py::arg("g_bits"), py::arg("a_bits"), py::arg("kh"), py::arg("kw"), py::arg("stride"),
        py::arg("padding"), py::arg("threads"), py::arg("scale") = py::none(),
        py::arg("divisor") = py::none());
  m.def("wgrad_kernels", &WgradKernelsPy);
  m.def("wgrad_digit_plan", &WgradDigitPlanPy, py::arg("g_bits"), py::arg("a_bits"),
        py::arg("scale"));
}

}  // namespace dorefa
