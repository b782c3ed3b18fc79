// pybind11 glue: converts arrays, checks arguments, releases the GIL. The Python face is
// dorefa/kernels; the choices (which kernel, fused or two-pass output) are made in the core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings_checks.h"
#include "bindings_conv.h"
#include "bitconv.h"
#include "bitpack.h"
#include "buffers.h"
#include "conv_float.h"
#include "cpu_features.h"
#include "fields.h"
#include "grad_codes.h"
#include "input_grad.h"
#include "int8conv.h"
#include "kernel_table.h"
#include "linear_float.h"
#include "lut.h"
#include "pool.h"
#include "pool_train.h"
#include "requant_table.h"
#include "run_conv.h"
#include "stream_float.h"

namespace py = pybind11;

namespace dorefa {
namespace {

using ThresholdArray = py::array_t<int32_t, py::array::c_style>;
using DirectionArray = py::array_t<int8_t, py::array::c_style>;

// Variant name of the kernel that ran the calling thread's last bit convolution (for tests
// that assert which path ran, not only which one was asked for).
thread_local const char* last_kernel = "";

// Weight geometry from (O, C, KH, KW) and bits.
ConvGeom WeightGeom(int64_t o, int64_t c, int64_t kh, int64_t kw, int w_bits) {
  ConvGeom g;
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

WordArray PackWeightsPy(const CodeArray& w, int w_bits, const std::string& kernel_name) {
  const KernelEntry& kernel = FindKernel(kernel_name);
  CheckBits("w_bits", w_bits);
  Require(w.ndim() == 4, "w_codes must be 4-D (O, C, KH, KW)");
  Require(w.shape(0) >= 1 && w.shape(1) >= 1 && w.shape(2) >= 1 && w.shape(3) >= 1,
          "w_codes must have no empty dimension");
  ConvGeom g = WeightGeom(w.shape(0), w.shape(1), w.shape(2), w.shape(3), w_bits);
  const Int8Kernel* bytes = kernel.int8;  // int8 or lut layout; else bit planes
  WordArray out = bytes != nullptr
                      ? AlignedArray<uint64_t>({ByteWeightWords(*bytes, g)})
                      : AlignedArray<uint64_t>({g.ob, static_cast<int64_t>(w_bits), g.l, kLanes});
  uint8_t all_or;
  {
    py::gil_scoped_release release;
    all_or = bytes != nullptr ? PackByteWeights(*bytes, g, w.data(), out.mutable_data())
                              : PackWeights(g, w.data(), out.mutable_data(), kernel.packer.fn,
                                            kernel.packer.weights_by_tap);
  }
  CheckCodes("w_codes", w, all_or, w_bits);
  return out;
}

// The geometry of a convolution of x (N, C, H, W) with (O, C, KH, KW) weights, validated.
ConvGeom ConvGeomOf(const CodeArray& x, int64_t o, int64_t c, int64_t kh, int64_t kw, int x_bits,
                    int w_bits, int64_t stride, int64_t padding) {
  CheckBits("x_bits", x_bits);
  CheckBits("w_bits", w_bits);
  Require(x.ndim() == 4, "x_codes must be 4-D (N, C, H, W)");
  RequireOr(stride >= 1, [&] { return "stride must be >= 1, got " + std::to_string(stride); });
  RequireOr(padding >= 0, [&] { return "padding must be >= 0, got " + std::to_string(padding); });
  Require(o >= 1 && c >= 1 && kh >= 1 && kw >= 1, "weight shape must have no empty dimension");
  RequireOr(x.shape(1) == c, [&] {
    return "x_codes has " + std::to_string(x.shape(1)) + " channels but the weights expect " +
           std::to_string(c);
  });
  CheckPaddedSize(x.shape(0), c, x.shape(2), x.shape(3), padding);
  ConvGeom g = WeightGeom(o, c, kh, kw, w_bits);
  g.n = x.shape(0);
  g.h = x.shape(2);
  g.w = x.shape(3);
  g.stride = stride;
  g.pad = padding;
  g.x_bits = x_bits;
  Require(g.h + 2 * padding >= kh && g.w + 2 * padding >= kw,
          "kernel larger than the padded input");
  g.Finalize();
  // Largest |result|: every product at its maximum over the whole receptive field.
  const double bound = static_cast<double>(c * kh * kw) * ((1 << x_bits) - 1) * ((1 << w_bits) - 1);
  Require(bound <= std::numeric_limits<int32_t>::max(),
          "C*KH*KW*(2**x_bits-1)*(2**w_bits-1) exceeds int32; split the input channels");
  return g;
}

Epilogue::Mode ParseMode(const std::string& mode) {
  if (mode == "acc") return Epilogue::kAcc;
  if (mode == "signed") return Epilogue::kSigned;
  Require(mode == "requant", "mode must be acc, signed or requant");
  return Epilogue::kRequant;
}

// Thresholds (O, T) int32 with 1 <= T <= 255 and directions (O,) of +1 / -1.
void CheckRequant(const ThresholdArray& thresholds, const DirectionArray& direction) {
  Require(thresholds.ndim() == 2, "thresholds must be int32 (O, T)");
  const int64_t o = thresholds.shape(0);
  Require(thresholds.shape(1) >= 1 && thresholds.shape(1) <= 255,
          "thresholds must have 1..255 columns");
  Require(direction.ndim() == 1 && direction.shape(0) == o, "direction must be int8 (O,)");
  const int8_t* dp = direction.data();
  for (int64_t i = 0; i < o; ++i)
    Require(dp[i] == 1 || dp[i] == -1, "direction values must be +1 or -1");
}

// The requant parameters of a call into `out`: a built table (RequantTable), else the arrays.
void SetRequant(int64_t o, const std::optional<ThresholdArray>& thresholds,
                const std::optional<DirectionArray>& direction, const RequantParams* table,
                ConvOutput* out) {
  if (table != nullptr) {
    Require(!thresholds.has_value() && !direction.has_value(),
            "give either table or thresholds and direction");
    Require(table->o == o, "the requant table has another number of channels than the weights");
    out->t = table->t;
    out->thresholds = table->thresholds.data();
    out->direction = table->direction.data();
    out->table = &table->table;
    return;
  }
  Require(thresholds.has_value() && direction.has_value(),
          "requant needs thresholds and direction (or a RequantTable)");
  CheckRequant(*thresholds, *direction);
  Require(thresholds->shape(0) == o, "thresholds must be int32 (O, T)");
  out->t = thresholds->shape(1);
  out->thresholds = thresholds->data();
  out->direction = direction->data();
}

// mode: "acc" (int32 sum p*q), "signed" (int32 D), "requant" (uint8 codes).
py::array BitConvPy(const std::string& kernel_name, const CodeArray& x, const WordArray& wpk,
                    int64_t o, int64_t c, int64_t kh, int64_t kw, int x_bits, int w_bits,
                    int64_t stride, int64_t padding, int threads, const std::string& mode,
                    std::optional<ThresholdArray> thresholds,
                    std::optional<DirectionArray> direction, const RequantParams* table,
                    bool fields) {
  const KernelEntry& kernel = FindKernel(kernel_name);
  last_kernel = kernel.name;
  CheckThreads(threads);
  const ConvGeom g = ConvGeomOf(x, o, c, kh, kw, x_bits, w_bits, stride, padding);
  if (fields) {
    Require(kernel.int8 == nullptr, "fields=True is for the popcount kernels only");
    const ConvGeom gf = FieldGeom(g);
    Require(wpk.ndim() == 4 && wpk.shape(0) == gf.ob && wpk.shape(1) == w_bits &&
                wpk.shape(2) == gf.l && wpk.shape(3) == kLanes,
            "packed weights do not match the dense fields of (O, C, KH, KW, w_bits); pack "
            "w_codes.transpose(0, 2, 3, 1) as (O, KH * KW * C, 1, 1) codes");
  } else if (kernel.int8 != nullptr) {
    Require(wpk.ndim() == 1 && wpk.shape(0) == ByteWeightWords(*kernel.int8, g),
            "packed weights do not match (O, C, KH, KW, w_bits) in this kernel's layout; pack "
            "them with pack_weights(w_codes, w_bits, kernel) for this kernel");
  } else {
    Require(wpk.ndim() == 4 && wpk.shape(0) == g.ob && wpk.shape(1) == w_bits &&
                wpk.shape(2) == g.l && wpk.shape(3) == kLanes,
            "packed weights do not match (O, C, KH, KW, w_bits)");
  }
  ConvOutput out;
  out.mode = ParseMode(mode);
  if (out.mode == Epilogue::kRequant) SetRequant(o, thresholds, direction, table, &out);
  const std::vector<int64_t> shape{g.n, g.o, g.oh, g.ow};
  py::array result;
  if (out.mode == Epilogue::kRequant) {
    py::array_t<uint8_t> codes = OutputArray<uint8_t>(shape);
    out.codes = codes.mutable_data();
    result = std::move(codes);
  } else {
    py::array_t<int32_t> acc = OutputArray<int32_t>(shape);
    out.acc = acc.mutable_data();
    result = std::move(acc);
  }
  const uint64_t* w = Aligned64(wpk.data(), static_cast<size_t>(wpk.size()));
  uint8_t all_or;
  {
    py::gil_scoped_release release;
    all_or = RunConv(kernel, g, x.data(), w, out, threads, fields);
  }
  CheckCodes("x_codes", x, all_or, x_bits);
  return result;
}

// Fused float first layer (conv_float.h); arguments validated by dorefa.kernels.
FloatConvGeom FloatGeomOf(const FloatArray& x, const FloatArray& weight, const FloatArray& bias,
                          int64_t stride, int64_t padding, int64_t pool, int threads) {
  Require(x.ndim() == 4 && weight.ndim() == 4 && bias.ndim() == 1, "bad ranks");
  Require(stride >= 1 && padding >= 0 && pool >= 1, "bad stride / padding / pool");
  CheckThreads(threads);
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
  CheckPaddedSize(g.n, g.c, g.h, g.w, padding);
  Require(g.h + 2 * padding >= g.kh && g.w + 2 * padding >= g.kw,
          "kernel larger than the padded input");
  g.stride = stride;
  g.pad = padding;
  g.pool = pool;
  g.oh = (g.h + 2 * padding - g.kh) / stride + 1;
  g.ow = (g.w + 2 * padding - g.kw) / stride + 1;
  Require(g.oh >= pool && g.ow >= pool, "pool larger than the conv output");
  g.ph = g.oh / pool;
  g.pw = g.ow / pool;
  return g;
}

py::array_t<uint8_t> ConvFloatQuantizePy(const std::string& kernel_name, const FloatArray& x,
                                         const FloatArray& weight, const FloatArray& bias,
                                         int64_t stride, int64_t padding, int64_t pool, int bits,
                                         int threads) {
  const KernelEntry& kernel = FindKernel(kernel_name);
  CheckBits("bits", bits);
  FloatConvGeom g = FloatGeomOf(x, weight, bias, stride, padding, pool, threads);
  g.bits = bits;
  // The kernel's own float path (kernel table): forcing a backend also tests its float path.
  const FloatConvPath& path = kernel.float_conv;
  py::array_t<uint8_t> out = OutputArray<uint8_t>({g.n, g.o, g.ph, g.pw});
  uint8_t* dst = out.mutable_data();
  py::gil_scoped_release release;
  ConvFloatQuantize(g, x.data(), weight.data(), bias.data(), dst, path.fn, path.weights,
                    path.winograd_codes, threads);
  return out;
}

// pool_k > 0: followed by a pool_k x pool_k / pool_s max-pool with padding pool_p, fused.
py::array_t<float> ConvFloatPy(const std::string& kernel_name, const FloatArray& x,
                               const FloatArray& weight, const FloatArray& bias, int64_t stride,
                               int64_t padding, int threads, int64_t pool_k, int64_t pool_s,
                               int64_t pool_p) {
  const KernelEntry& kernel = FindKernel(kernel_name);
  const FloatConvGeom g = FloatGeomOf(x, weight, bias, stride, padding, 1, threads);
  const FloatConvPath& path = kernel.float_conv;
  if (pool_k > 0) {
    Require(pool_s >= 1 && pool_p >= 0 && 2 * pool_p <= pool_k && g.oh + 2 * pool_p >= pool_k &&
                g.ow + 2 * pool_p >= pool_k,
            "bad pool kernel / stride / padding for the conv's output");
    py::array_t<float> out =
        OutputArray<float>({g.n, g.o, (g.oh + 2 * pool_p - pool_k) / pool_s + 1,
                            (g.ow + 2 * pool_p - pool_k) / pool_s + 1});
    float* dst = out.mutable_data();
    py::gil_scoped_release release;
    ConvFloatOutMaxPool(g, x.data(), weight.data(), bias.data(), pool_k, pool_s, pool_p, dst,
                        path.out_fn, path.weights, path.winograd, threads);
    return out;
  }
  py::array_t<float> out = OutputArray<float>({g.n, g.o, g.oh, g.ow});
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  ConvFloatOut(g, x.data(), weight.data(), bias.data(), dst, path.out_fn, path.weights,
               path.winograd, threads);
  return out;
}

// Float linear layer (linear_float.h): x (N, C), weight (O, C), bias (O) -> (N, O) float32.
py::array_t<float> LinearFloatPy(const FloatArray& x, const FloatArray& weight,
                                 const FloatArray& bias, bool vector, int threads) {
  Require(x.ndim() == 2 && weight.ndim() == 2 && bias.ndim() == 1,
          "x (N, C), weight (O, C) and bias (O,) are required");
  Require(x.shape(1) == weight.shape(1) && bias.shape(0) == weight.shape(0),
          "x's C must match weight's, and bias must have O entries");
  CheckThreads(threads);
  const int64_t n = x.shape(0), c = x.shape(1), o = weight.shape(0);
  py::array_t<float> out = OutputArray<float>({n, o});
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  LinearFloat(x.data(), weight.data(), bias.data(), n, c, o, dst, vector, threads);
  return out;
}

// The output shape (N, C, OH, OW) of a k x k / s pool with padding p of x (N, C, H, W), checked.
std::vector<int64_t> PoolShape(const py::array& x, int64_t k, int64_t s, int64_t p) {
  Require(x.ndim() == 4, "x must be 4-D (N, C, H, W)");
  Require(k >= 1 && s >= 1 && p >= 0 && 2 * p <= k, "bad kernel / stride / padding");
  Require(x.shape(2) + 2 * p >= k && x.shape(3) + 2 * p >= k, "kernel larger than the input");
  return {x.shape(0), x.shape(1), (x.shape(2) + 2 * p - k) / s + 1,
          (x.shape(3) + 2 * p - k) / s + 1};
}

// A float pool (MaxPoolFloat, AvgPoolFloat: the same signature) of x (N, C, H, W).
template <void (*kPool)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                        float*, int)>
py::array_t<float> FloatPoolPy(const FloatArray& x, int64_t k, int64_t s, int64_t p, int threads) {
  CheckThreads(threads);
  py::array_t<float> out = OutputArray<float>(PoolShape(x, k, s, p));
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  kPool(x.data(), x.shape(0), x.shape(1), x.shape(2), x.shape(3), k, s, p, dst, threads);
  return out;
}

py::array_t<uint8_t> MaxPoolCodesPy(const CodeArray& x, int64_t k, int64_t s, int64_t p,
                                    int threads) {
  CheckThreads(threads);
  py::array_t<uint8_t> out = OutputArray<uint8_t>(PoolShape(x, k, s, p));
  uint8_t* dst = out.mutable_data();
  py::gil_scoped_release release;
  MaxPoolCodes(x.data(), x.shape(0), x.shape(1), x.shape(2), x.shape(3), k, s, p, dst, threads);
  return out;
}

std::vector<std::string> ModeNames(unsigned modes) {
  std::vector<std::string> names;
  const char* all[] = {"acc", "signed", "requant"};
  for (int m = 0; m < 3; ++m)
    if (modes & ModeBit(static_cast<Epilogue::Mode>(m))) names.emplace_back(all[m]);
  return names;
}

// The kernel table as a list of dicts, fastest first (dorefa.kernels.kernel_table()).
py::list KernelTablePy() {
  py::list rows;
  for (const KernelEntry& k : KernelTable()) {
    py::dict row;
    row["name"] = k.name;
    row["family"] = k.Family();
    row["backend"] = k.backend;
    row["needs"] = FeatureNames(k.needs);
    row["supported"] = k.Supported();
    row["tile"] = k.Tile();
    row["pixel_tile"] = k.PixelTile();
    row["channel_block_tile"] = k.BlockTile();
    row["weights"] = k.Weights();
    row["packer"] = k.packer.name;
    row["fused_modes"] = ModeNames(k.fused_modes);
    row["float_conv"] = k.float_conv.name;
    rows.append(row);
  }
  return rows;
}

// "" -> the first kernel this CPU runs; a backend, family or kernel name -> its kernel's name.
std::string ResolveKernel(const std::string& requested) {
  if (requested == "reference") return requested;
  return FindKernel(requested).name;
}

// Input gradient's last step (input_grad.h): k1 (N, C, H, W) int32, k2 (1, C, H, W) int32,
// scale (N,) float64 -> dx (N, C, H, W) float32.
py::array_t<float> InputGradFinishPy(const py::array_t<int32_t, py::array::c_style>& k1,
                                     const py::array_t<int32_t, py::array::c_style>& k2, int64_t ng,
                                     const py::array_t<double, py::array::c_style>& scale,
                                     int threads) {
  Require(k1.ndim() == 4 && k2.ndim() == 4 && k2.shape(0) == 1, "k1 (N, C, H, W), k2 (1, C, H, W)");
  for (int i = 1; i < 4; ++i)
    Require(k1.shape(i) == k2.shape(i), "k1 and k2 must match in C, H, W");
  Require(scale.ndim() == 1 && scale.shape(0) == k1.shape(0), "scale must be (N,) float64");
  CheckThreads(threads);
  const int64_t n = k1.shape(0), chw = k1.shape(1) * k1.shape(2) * k1.shape(3);
  py::array_t<float> out = OutputArray<float>({n, k1.shape(1), k1.shape(2), k1.shape(3)});
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  InputGradFinish(k1.data(), k2.data(), n, chw, ng, scale.data(), dst, threads);
  return out;
}

// The forward product's float output (input_grad.h): d int32, any shape -> float32(scale * d).
py::array_t<float> ScaleToFloatPy(const py::array_t<int32_t, py::array::c_style>& d, double scale,
                                  int threads) {
  CheckThreads(threads);
  py::array_t<float> out =
      OutputArray<float>(std::vector<int64_t>(d.shape(), d.shape() + d.ndim()));
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  ScaleToFloat(d.data(), d.size(), scale, dst, threads);
  return out;
}

// Integer training's max-pool (pool_train.h): x (N, C, H, W) float32, window k = stride ->
// (y float32, pos uint8), (N, C, H / k, W / k).
py::tuple MaxPoolTrainPy(const py::array_t<float, py::array::c_style>& x, int64_t k, int threads) {
  Require(x.ndim() == 4, "x must be 4-D (N, C, H, W)");
  Require(k >= 1 && k <= 15, "kernel must be 1..15");
  Require(x.shape(2) >= k && x.shape(3) >= k, "kernel larger than the input");
  CheckThreads(threads);
  const std::vector<int64_t> shape{x.shape(0), x.shape(1), x.shape(2) / k, x.shape(3) / k};
  py::array_t<float> y = OutputArray<float>(shape);
  py::array_t<uint8_t> pos = OutputArray<uint8_t>(shape);
  float* yd = y.mutable_data();
  uint8_t* pd = pos.mutable_data();
  {
    py::gil_scoped_release release;
    MaxPoolTrainForward(x.data(), x.shape(0) * x.shape(1), x.shape(2), x.shape(3), k, yd, pd,
                        threads);
  }
  return py::make_tuple(y, pos);
}

// Its backward: dy, pos (N, C, H / k, W / k) -> dx (N, C, H, W).
py::array_t<float> MaxPoolTrainBackwardPy(const py::array_t<float, py::array::c_style>& dy,
                                          const CodeArray& pos, int64_t h, int64_t w, int64_t k,
                                          int threads) {
  Require(dy.ndim() == 4 && pos.ndim() == 4, "dy and pos must be 4-D");
  Require(k >= 1 && k <= 15 && h >= k && w >= k, "bad kernel or input size");
  const std::vector<int64_t> shape{dy.shape(0), dy.shape(1), h / k, w / k};
  for (int i = 0; i < 4; ++i)
    Require(dy.shape(i) == shape[i] && pos.shape(i) == shape[i], "dy, pos: (N, C, H / k, W / k)");
  CheckThreads(threads);
  const uint8_t* p = pos.data();
  uint8_t most = 0;
  for (int64_t i = 0, n = pos.size(); i < n; ++i) most = std::max(most, p[i]);
  Require(most < k * k, "pos holds a position >= k * k");
  py::array_t<float> dx = OutputArray<float>({dy.shape(0), dy.shape(1), h, w});
  float* dst = dx.mutable_data();
  py::gil_scoped_release release;
  MaxPoolTrainBackward(dy.data(), p, dy.shape(0) * dy.shape(1), h, w, k, dst, threads);
  return dx;
}

// f_g's codes (grad_codes.h): g (N, L) float32, noise (N * L) int16 -> (codes uint8 (N, L),
// m float32 (N,)).
py::tuple GradientCodesPy(const py::array_t<float, py::array::c_style>& g,
                          const py::array_t<int16_t, py::array::c_style>& noise, int levels,
                          int threads) {
  Require(g.ndim() == 2, "g must be 2-D (N, L)");
  Require(noise.ndim() == 1 && noise.shape(0) == g.size(), "noise must hold N * L int16 values");
  Require(levels >= 1 && levels <= 255, "levels must be 1..255");
  CheckThreads(threads);
  py::array_t<uint8_t> codes = OutputArray<uint8_t>({g.shape(0), g.shape(1)});
  py::array_t<float> m = OutputArray<float>({g.shape(0)});
  uint8_t* cd = codes.mutable_data();
  float* md = m.mutable_data();
  {
    py::gil_scoped_release release;
    GradientCodes(g.data(), noise.data(), g.shape(0), g.shape(1), levels, cd, md, threads);
  }
  return py::make_tuple(codes, m);
}

}  // namespace

// bindings_conv.h: bitconv with a RequantTable (or none) and the codes' max-pool, for the bound
// calls of bindings_prepared.cpp.
py::array BitConvBound(const std::string& kernel, const CodeArray& x, const WordArray& wpk,
                       int64_t o, int64_t c, int64_t kh, int64_t kw, int x_bits, int w_bits,
                       int64_t stride, int64_t padding, int threads, const std::string& mode,
                       const RequantParams* table, bool fields) {
  return BitConvPy(kernel, x, wpk, o, c, kh, kw, x_bits, w_bits, stride, padding, threads, mode,
                   std::nullopt, std::nullopt, table, fields);
}

py::array_t<uint8_t> MaxPoolCodesBound(const CodeArray& x, int64_t k, int64_t s, int64_t p,
                                       int threads) {
  return MaxPoolCodesPy(x, k, s, p, threads);
}

void BindPrepared(py::module_& m);    // bindings_prepared.cpp
void BindStreamOps(py::module_& m);   // bindings_stream.cpp
void BindInputGrad(py::module_& m);   // bindings_igrad.cpp
void BindWeightGrad(py::module_& m);  // bindings_wgrad.cpp

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
  m.attr("MAX_THREADS") = dorefa::kMaxThreads;
  m.def("kernel_table", &dorefa::KernelTablePy);
  m.def("cpu_features", [] { return dorefa::FeatureNames(dorefa::CpuFeatures()); });
  m.def("resolve_kernel", &dorefa::ResolveKernel, py::arg("requested"));
  m.def("last_kernel", [] { return std::string(dorefa::last_kernel); });
  m.def("pack_weights", &dorefa::PackWeightsPy, py::arg("w_codes"), py::arg("w_bits"),
        py::arg("kernel") = "");
  m.def("conv_float_quantize", &dorefa::ConvFloatQuantizePy, py::arg("kernel"), py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"), py::arg("pool"),
        py::arg("bits"), py::arg("threads"));
  m.def("conv_float", &dorefa::ConvFloatPy, py::arg("kernel"), py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("stride"), py::arg("padding"), py::arg("threads"),
        py::arg("pool_k") = 0, py::arg("pool_s") = 1, py::arg("pool_p") = 0);
  m.def("linear_float", &dorefa::LinearFloatPy, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("vector"), py::arg("threads"));
  m.def("maxpool_float", &dorefa::FloatPoolPy<&dorefa::MaxPoolFloat>, py::arg("x"),
        py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("threads"));
  m.def("avgpool_float", &dorefa::FloatPoolPy<&dorefa::AvgPoolFloat>, py::arg("x"),
        py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("threads"));
  m.def("maxpool_codes", &dorefa::MaxPoolCodesPy, py::arg("x"), py::arg("kernel"),
        py::arg("stride"), py::arg("padding"), py::arg("threads") = 1);
  m.def("gradient_codes", &dorefa::GradientCodesPy, py::arg("g"), py::arg("noise"),
        py::arg("levels"), py::arg("threads"));
  m.def("maxpool_train", &dorefa::MaxPoolTrainPy, py::arg("x"), py::arg("kernel"),
        py::arg("threads"));
  m.def("maxpool_train_backward", &dorefa::MaxPoolTrainBackwardPy, py::arg("dy"), py::arg("pos"),
        py::arg("h"), py::arg("w"), py::arg("kernel"), py::arg("threads"));
  m.def("scale_to_float", &dorefa::ScaleToFloatPy, py::arg("d"), py::arg("scale"),
        py::arg("threads"));
  m.def("input_grad_finish", &dorefa::InputGradFinishPy, py::arg("k1"), py::arg("k2"),
        py::arg("ng"), py::arg("scale"), py::arg("threads"));
  m.def("bitconv", &dorefa::BitConvPy, py::arg("kernel"), py::arg("x_codes"), py::arg("wpk"),
        py::arg("o"), py::arg("c"), py::arg("kh"), py::arg("kw"), py::arg("x_bits"),
        py::arg("w_bits"), py::arg("stride"), py::arg("padding"), py::arg("threads"),
        py::arg("mode"), py::arg("thresholds") = py::none(), py::arg("direction") = py::none(),
        py::arg("table") = nullptr, py::arg("fields") = false);
  m.def("field_buffer_bytes", &dorefa::FieldBufferBytes, py::arg("bytes") = 0,
        "The largest dense-field buffer a bitconv builds at once (bytes); bytes > 0 sets it "
        "and returns the previous value.");
  // A layer's requant thresholds with their table, built once; pass it as bitconv's `table`.
  // Module-local: two builds loaded side by side (benchmarks/bench_ab.py) each keep their own.
  py::class_<dorefa::RequantParams>(m, "RequantTable", py::module_local())
      .def(py::init([](const dorefa::ThresholdArray& thresholds,
                       const dorefa::DirectionArray& direction) {
             dorefa::CheckRequant(thresholds, direction);
             return new dorefa::RequantParams(thresholds.shape(0), thresholds.data(),
                                              thresholds.shape(1), direction.data());
           }),
           py::arg("thresholds"), py::arg("direction"))
      .def_readonly("t", &dorefa::RequantParams::t)
      // (rows on a line, rows on the float line): how the kernels compute the codes
      .def_property_readonly("lines", [](const dorefa::RequantParams& p) {
        int64_t lines = 0, floats = 0;
        for (int64_t o = 0; o < p.o; ++o) {
          lines += p.table.line[o] != 0;
          floats += p.table.line[o] != 0 && p.table.fline[o] != 0;
        }
        return std::make_pair(lines, floats);
      });
  dorefa::BindPrepared(m);
  dorefa::BindStreamOps(m);
  dorefa::BindInputGrad(m);
  dorefa::BindWeightGrad(m);
}
