// pybind11 glue for prepared layers (dorefa.kernels.prepared, dorefa.runtime): a bit convolution
// bound to everything but its input and thread count, and a run of such convolutions and codes'
// max-pools called as one.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "bindings_checks.h"
#include "bindings_conv.h"
#include "kernel_table.h"
#include "requant_table.h"

namespace py = pybind11;

namespace dorefa {
namespace {

// bitconv with everything but the input and the thread count bound once (a prepared layer's
// call on one kernel): a call converts two arguments, not seventeen (the trivial convolution
// 2.6-3.1 -> 1.9-2.1 us a call, most of it pybind11's conversions). The same checks run.
class PreparedBitConvPy {
 public:
  PreparedBitConvPy(std::string kernel, WordArray wpk, int64_t o, int64_t c, int64_t kh, int64_t kw,
                    int x_bits, int w_bits, int64_t stride, int64_t padding, std::string mode,
                    py::object table, bool fields)
      : kernel_(std::move(kernel)),
        wpk_(std::move(wpk)),
        o_(o),
        c_(c),
        kh_(kh),
        kw_(kw),
        x_bits_(x_bits),
        w_bits_(w_bits),
        stride_(stride),
        padding_(padding),
        mode_(std::move(mode)),
        table_obj_(std::move(table)),
        table_(table_obj_.is_none() ? nullptr : table_obj_.cast<const RequantParams*>()),
        fields_(fields) {
    FindKernel(kernel_);  // an unknown name fails here, not at the first call
  }
  py::array Call(const CodeArray& x, int threads) const {
    return BitConvBound(kernel_, x, wpk_, o_, c_, kh_, kw_, x_bits_, w_bits_, stride_, padding_,
                        threads, mode_, table_, fields_);
  }
  bool CodesOut() const { return mode_ == "requant"; }  // uint8 codes out, else int32

 private:
  std::string kernel_;
  WordArray wpk_;
  int64_t o_, c_, kh_, kw_;
  int x_bits_, w_bits_;
  int64_t stride_, padding_;
  std::string mode_;
  py::object table_obj_;  // keeps the RequantTable alive
  const RequantParams* table_;
  bool fields_;
};

// A run of a network's nodes on codes, each the input of the next: prepared convolutions (their
// bound calls) and max-pools (k, s, p). One call runs them all, each as its own native call
// would (the same checks), without a return to Python between them: the svhn runtime's five
// nodes after its first bit convolution cost ~2.5 us each in Python and pybind11 at batch 1.
class CodesChainPy {
 public:
  struct Pool {
    int64_t k, s, p;
  };
  explicit CodesChainPy(const py::list& steps) {
    for (const py::handle& step : steps) {
      if (py::isinstance<PreparedBitConvPy>(step)) {
        const auto* conv = step.cast<const PreparedBitConvPy*>();
        Require(conv->CodesOut(), "a chain's convolutions output codes (mode 'requant')");
        keep_.push_back(py::reinterpret_borrow<py::object>(step));
        steps_.emplace_back(conv);
        continue;
      }
      std::vector<int64_t> t;
      try {
        t = step.cast<std::vector<int64_t>>();
      } catch (const py::cast_error&) {
        t.clear();  // not a sequence of ints: the message below
      }
      Require(t.size() == 3 && t[0] >= 1 && t[1] >= 1 && t[2] >= 0 && 2 * t[2] <= t[0],
              "a chain's step is a PreparedBitConv or a max-pool (kernel, stride, padding)");
      steps_.emplace_back(Pool{t[0], t[1], t[2]});
    }
    Require(!steps_.empty(), "a chain needs at least one step");
  }
  py::array Call(const CodeArray& x, int threads) const {
    py::array cur = x;
    for (const auto& step : steps_) {
      const CodeArray in = py::reinterpret_borrow<CodeArray>(cur);
      if (const auto* conv = std::get_if<const PreparedBitConvPy*>(&step)) {
        cur = (*conv)->Call(in, threads);
      } else {
        const Pool& p = std::get<Pool>(step);
        cur = MaxPoolCodesBound(in, p.k, p.s, p.p, threads);
      }
    }
    return cur;
  }

 private:
  std::vector<std::variant<const PreparedBitConvPy*, Pool>> steps_;
  std::vector<py::object> keep_;  // the bound calls, kept alive
};

}  // namespace

void BindPrepared(py::module_& m) {
  py::class_<PreparedBitConvPy>(m, "PreparedBitConv", py::module_local())
      .def(py::init<std::string, WordArray, int64_t, int64_t, int64_t, int64_t, int, int, int64_t,
                    int64_t, std::string, py::object, bool>(),
           py::arg("kernel"), py::arg("wpk"), py::arg("o"), py::arg("c"), py::arg("kh"),
           py::arg("kw"), py::arg("x_bits"), py::arg("w_bits"), py::arg("stride"),
           py::arg("padding"), py::arg("mode"), py::arg("table") = py::none(),
           py::arg("fields") = false)
      .def("__call__", &PreparedBitConvPy::Call, py::arg("x_codes"), py::arg("threads"));
  py::class_<CodesChainPy>(m, "CodesChain", py::module_local())
      .def(py::init<const py::list&>(), py::arg("steps"))
      .def("__call__", &CodesChainPy::Call, py::arg("x_codes"), py::arg("threads"));
}

}  // namespace dorefa
