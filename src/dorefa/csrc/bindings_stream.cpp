// pybind11 glue of the float stream's elementwise operations (stream_float.h) and of integer
// training's f_a and BatchNorm (act_train.h, bn_train.h): checks the arrays, releases the GIL.
// The Python face is dorefa.kernels (quantize_float, affine_float, scale_int_float; the
// average pool's glue sits beside the other pools' in bindings.cpp), dorefa.engine_act and
// dorefa.engine_bn.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "act_train.h"
#include "bindings_checks.h"
#include "bn_train.h"
#include "buffers.h"
#include "conv_float_train.h"
#include "stream_float.h"

namespace py = pybind11;

namespace dorefa {
namespace {

using IntArray = py::array_t<int32_t, py::array::c_style>;

std::vector<int64_t> ShapeOf(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

// (N, C, HW) of a (N, C, ...) array whose per-channel vectors p and q have C entries.
void ChannelShape(const py::array& x, const FloatArray& p, const FloatArray& q, int64_t* n,
                  int64_t* c, int64_t* hw) {
  Require(x.ndim() >= 2, "x must be (N, C, ...)");
  *n = x.shape(0);
  *c = x.shape(1);
  *hw = 1;
  for (py::ssize_t i = 2; i < x.ndim(); ++i) *hw *= x.shape(i);
  RequireOr(p.ndim() == 1 && q.ndim() == 1 && p.shape(0) == *c && q.shape(0) == *c, [&] {
    return "the per-channel vectors must hold C = " + std::to_string(*c) + " floats each";
  });
}

py::array_t<uint8_t> QuantizeFloatPy(const FloatArray& x, int bits, bool vector, int threads) {
  CheckBits("bits", bits);
  CheckThreads(threads);
  py::array_t<uint8_t> out = OutputArray<uint8_t>(ShapeOf(x));
  uint8_t* dst = out.mutable_data();
  py::gil_scoped_release release;
  QuantizeFloat(x.data(), static_cast<int64_t>(x.size()), bits, dst, vector, threads);
  return out;
}

py::array_t<float> AffineFloatPy(const FloatArray& x, const FloatArray& scale,
                                 const FloatArray& shift, int threads) {
  CheckThreads(threads);
  int64_t n, c, hw;
  ChannelShape(x, scale, shift, &n, &c, &hw);
  py::array_t<float> out = OutputArray<float>(ShapeOf(x));
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  AffineFloat(x.data(), n, c, hw, scale.data(), shift.data(), dst, threads);
  return out;
}

py::array_t<uint8_t> AffineQuantizeFloatPy(const FloatArray& x, const FloatArray& scale,
                                           const FloatArray& shift, int bits, bool vector,
                                           int threads) {
  CheckBits("bits", bits);
  CheckThreads(threads);
  int64_t n, c, hw;
  ChannelShape(x, scale, shift, &n, &c, &hw);
  py::array_t<uint8_t> out = OutputArray<uint8_t>(ShapeOf(x));
  uint8_t* dst = out.mutable_data();
  py::gil_scoped_release release;
  AffineQuantizeFloat(x.data(), n, c, hw, scale.data(), shift.data(), bits, dst, vector, threads);
  return out;
}

// residual: None, or a float32 array of d's shape added last (clip must be false).
py::array_t<float> ScaleIntFloatPy(const IntArray& d, const FloatArray& alpha,
                                   const FloatArray& beta, bool clip, int threads,
                                   const std::optional<FloatArray>& residual) {
  CheckThreads(threads);
  int64_t n, c, hw;
  ChannelShape(d, alpha, beta, &n, &c, &hw);
  const float* r = nullptr;
  if (residual.has_value()) {
    Require(!clip, "a residual is added to an unclipped output only");
    Require(ShapeOf(*residual) == ShapeOf(d), "the residual must have the shape of d");
    r = residual->data();
  }
  py::array_t<float> out = OutputArray<float>(ShapeOf(d));
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  ScaleIntFloat(d.data(), n, c, hw, alpha.data(), beta.data(), clip, r, dst, threads);
  return out;
}

// f_a of integer training: x -> (y float32, codes uint8, whether some x is NaN).
py::tuple ActQuantTrainPy(const FloatArray& x, int bits, int threads) {
  CheckBits("bits", bits);
  CheckThreads(threads);
  py::array_t<float> y = OutputArray<float>(ShapeOf(x));
  py::array_t<uint8_t> codes = OutputArray<uint8_t>(ShapeOf(x));
  float* yd = y.mutable_data();
  uint8_t* cd = codes.mutable_data();
  bool nan = false;
  {
    py::gil_scoped_release release;
    nan = ActQuantTrainForward(x.data(), static_cast<int64_t>(x.size()), bits, yd, cd, threads);
  }
  return py::make_tuple(y, codes, nan);
}

// Its backward: x, dy (the same shape) -> dx.
py::array_t<float> ActQuantTrainBackwardPy(const FloatArray& x, const FloatArray& dy, int threads) {
  CheckThreads(threads);
  Require(ShapeOf(x) == ShapeOf(dy), "x and dy must have the same shape");
  py::array_t<float> dx = OutputArray<float>(ShapeOf(x));
  float* dst = dx.mutable_data();
  py::gil_scoped_release release;
  ActQuantTrainBackward(x.data(), dy.data(), static_cast<int64_t>(x.size()), dst, threads);
  return dx;
}

// The float first layer's weight gradient (and its bias's where `bias`), conv_float_train.h:
// (dW (O, C, KH, KW), db (O) or None), or None where the native path does not fit this CPU or
// shape (the engine then keeps torch's).
py::object ConvFloatWeightGradPy(const FloatArray& x, const FloatArray& dy, int64_t kh, int64_t kw,
                                 int64_t padding, bool bias, int threads) {
  CheckThreads(threads);
  Require(x.ndim() == 4 && dy.ndim() == 4, "x and dy must be (N, C, H, W) and (N, O, OH, OW)");
  Require(kh >= 1 && kw >= 1 && padding >= 0, "bad kernel size or padding");
  const FloatTrainGeom g(x.shape(0), x.shape(1), x.shape(2), x.shape(3), dy.shape(1), kh, kw,
                         padding);
  Require(dy.shape(0) == g.n && dy.shape(2) == g.oh && dy.shape(3) == g.ow,
          "dy does not fit x, the kernel size and the padding (stride 1)");
  if (!ConvFloatTrainFits(g)) return py::none();
  py::array_t<float> dw = OutputArray<float>({g.o, g.c, kh, kw});
  py::array_t<float> db = OutputArray<float>({bias ? g.o : 0});
  float* dw_data = dw.mutable_data();
  float* db_data = bias ? db.mutable_data() : nullptr;
  {
    py::gil_scoped_release release;
    ConvFloatWeightGrad(g, x.data(), dy.data(), dw_data, db_data, threads);
  }
  return py::make_tuple(dw, bias ? py::object(db) : py::none());
}

// The float first layer's training forward (conv_float_train.h): y (N, O, OH, OW), or None
// where the native path does not fit this CPU or shape (the engine then runs conv_float).
py::object ConvFloatTrainForwardPy(const FloatArray& x, const FloatArray& w, const FloatArray& b,
                                   int64_t padding, int threads) {
  CheckThreads(threads);
  Require(x.ndim() == 4 && w.ndim() == 4 && b.ndim() == 1 && padding >= 0,
          "x (N, C, H, W), weight (O, C, KH, KW), bias (O) and padding >= 0 expected");
  Require(w.shape(1) == x.shape(1) && b.shape(0) == w.shape(0), "weight / bias do not fit x");
  const FloatTrainGeom g(x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), w.shape(2),
                         w.shape(3), padding);
  Require(g.oh >= 1 && g.ow >= 1, "kernel larger than the padded input");
  if (!ConvFloatTrainFits(g)) return py::none();
  py::array_t<float> y = OutputArray<float>({g.n, g.o, g.oh, g.ow});
  float* dst = y.mutable_data();
  {
    py::gil_scoped_release release;
    ConvFloatTrainForward(g, x.data(), w.data(), b.data(), dst, threads);
  }
  return std::move(y);
}

// (N, C, H, W) of a BatchNorm's input, its (C) weight and bias checked.
void BnShape(const FloatArray& x, const FloatArray& w, const FloatArray& b, int64_t* n, int64_t* c,
             int64_t* hw) {
  Require(x.ndim() == 4, "x must be (N, C, H, W)");
  ChannelShape(x, w, b, n, c, hw);
}

// BatchNorm2d forward in training: x, weight, bias -> (y, mean, var, invstd).
py::tuple BatchNormTrainPy(const FloatArray& x, const FloatArray& w, const FloatArray& b,
                           double eps, int threads) {
  CheckThreads(threads);
  int64_t n, c, hw;
  BnShape(x, w, b, &n, &c, &hw);
  py::array_t<float> y = OutputArray<float>(ShapeOf(x));
  py::array_t<double> mean(c), var(c), invstd(c);
  float* yd = y.mutable_data();
  double *md = mean.mutable_data(), *vd = var.mutable_data(), *id = invstd.mutable_data();
  {
    py::gil_scoped_release release;
    BatchNormTrainForward(x.data(), n, c, hw, w.data(), b.data(), eps, yd, md, vd, id, threads);
  }
  return py::make_tuple(y, mean, var, invstd);
}

// Its backward: x, dy, weight, mean, invstd -> (dx, dw, dbias).
py::tuple BatchNormTrainBackwardPy(const FloatArray& x, const FloatArray& dy, const FloatArray& w,
                                   const py::array_t<double, py::array::c_style>& mean,
                                   const py::array_t<double, py::array::c_style>& invstd,
                                   int threads) {
  CheckThreads(threads);
  int64_t n, c, hw;
  BnShape(x, w, w, &n, &c, &hw);
  Require(ShapeOf(x) == ShapeOf(dy), "x and dy must have the same shape");
  Require(mean.ndim() == 1 && mean.shape(0) == c && invstd.ndim() == 1 && invstd.shape(0) == c,
          "mean and invstd must hold C values");
  py::array_t<float> dx = OutputArray<float>(ShapeOf(x));
  py::array_t<float> dw(c), db(c);
  float *dxd = dx.mutable_data(), *dwd = dw.mutable_data(), *dbd = db.mutable_data();
  {
    py::gil_scoped_release release;
    BatchNormTrainBackward(x.data(), dy.data(), n, c, hw, w.data(), mean.data(), invstd.data(), dxd,
                           dwd, dbd, threads);
  }
  return py::make_tuple(dx, dw, db);
}

}  // namespace

void BindStreamOps(py::module_& m) {
  m.def("batch_norm_train", &BatchNormTrainPy, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("threads"));
  m.def("batch_norm_train_backward", &BatchNormTrainBackwardPy, py::arg("x"), py::arg("dy"),
        py::arg("weight"), py::arg("mean"), py::arg("invstd"), py::arg("threads"));
  m.def("act_quant_train", &ActQuantTrainPy, py::arg("x"), py::arg("bits"), py::arg("threads"));
  m.def("act_quant_train_backward", &ActQuantTrainBackwardPy, py::arg("x"), py::arg("dy"),
        py::arg("threads"));
  m.def("conv_float_train_forward", &ConvFloatTrainForwardPy, py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("padding"), py::arg("threads"));
  m.def("conv_float_weight_grad", &ConvFloatWeightGradPy, py::arg("x"), py::arg("dy"),
        py::arg("kh"), py::arg("kw"), py::arg("padding"), py::arg("bias"), py::arg("threads"));
  m.def("quantize_float", &QuantizeFloatPy, py::arg("x"), py::arg("bits"), py::arg("vector"),
        py::arg("threads"));
  m.def("affine_float", &AffineFloatPy, py::arg("x"), py::arg("scale"), py::arg("shift"),
        py::arg("threads"));
  m.def("affine_quantize_float", &AffineQuantizeFloatPy, py::arg("x"), py::arg("scale"),
        py::arg("shift"), py::arg("bits"), py::arg("vector"), py::arg("threads"));
  m.def("scale_int_float", &ScaleIntFloatPy, py::arg("d"), py::arg("alpha"), py::arg("beta"),
        py::arg("clip"), py::arg("threads"), py::arg("residual") = py::none());
}

}  // namespace dorefa
