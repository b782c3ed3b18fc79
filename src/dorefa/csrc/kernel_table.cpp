#include "kernel_table.h"

#include <iterator>
#include <stdexcept>

#include "bitpack.h"

namespace dorefa {
namespace {

// CPU features of the AVX-512 popcount tile kernel (files built with -mavx512f, bw, dq, vl,
// vpopcntdq), and what the GFNI packer adds.
constexpr uint32_t kAvx512 = kAvx512F | kAvx512Bw | kAvx512Dq | kAvx512Vl | kAvx512Vpopcntdq;
constexpr uint32_t kGfniVbmi = kGfni | kAvx512Vbmi;
// Fused modes: kEpilogue = signed and requant in the tile kernel; 0 = in a second pass.
constexpr unsigned kEpilogue = ModeBit(Epilogue::kSigned) | ModeBit(Epilogue::kRequant);
// The int8 kernels: AVX-512 F/BW/VL (their file is built with -mavx512dq too) and VNNI; AVX2.
constexpr uint32_t kVnni = kAvx512F | kAvx512Bw | kAvx512Dq | kAvx512Vl | kAvx512Vnni;
#ifdef DOREFA_HAVE_AMX
// int8-amx: the tiles, and the zmm store (its file is built with AVX-512 F/BW/VL/DQ).
constexpr uint32_t kAmx = kAvx512F | kAvx512Bw | kAvx512Dq | kAvx512Vl | kAmxTile | kAmxInt8;
#endif
// The lut kernels (lut.h): AVX-512 F/BW/VL (their file is built with -mavx512dq too), with
// VBMI and VNNI for lut-vnni; AVX2.
constexpr uint32_t kLutZmm = kAvx512F | kAvx512Bw | kAvx512Dq | kAvx512Vl;
constexpr Packer kNhwc{"nhwc", nullptr, nullptr};  // int8: codes in NHWC bytes (int8conv.h)

constexpr Packer kPortable{"portable", &PackActivations, &BuildFieldRow, true};
// Float first layer paths; the ymm and zmm ones also need FMA (their float32 FMA chains).
constexpr FloatConvPath kScalarRows{"scalar", nullptr, nullptr, FloatWeights::kNone};
#ifdef DOREFA_HAVE_X86_KERNELS
constexpr Packer kGfniPack{"gfni", &PackActivationsAvx512Gfni, &BuildFieldRowVbmi};
constexpr Packer kShiftPack{"shift", &PackActivationsAvx512Shift, &BuildFieldRow};
constexpr Packer kMovemaskPack{"movemask", &PackActivationsAvx2, &BuildFieldRow, true};
constexpr FloatConvPath kFloatAvx512{"avx512", &ConvPoolQuantizeAvx512, &ConvFloatOutAvx512,
                                     FloatWeights::kTapMajor, &ConvFloatWinogradAvx512};
constexpr FloatConvPath kFloatAvx2{"avx2",
                                   &ConvPoolQuantizeAvx2,
                                   &ConvFloatOutAvx2,
                                   FloatWeights::kBlocked,
                                   &ConvFloatWinogradAvx2,
                                   &WinogradCodesAvx2};
// Float32 sums on zmm (entries that have AVX-512F), codes and float output.
constexpr FloatConvPath kFloatZmm{"zmm",
                                  &ConvPoolQuantizeZmm,
                                  &ConvFloatOutAvx512,
                                  FloatWeights::kTapMajor,
                                  &ConvFloatWinogradAvx512,
                                  &WinogradCodesAvx512};
#endif

// The float first layer: the float32 paths (FMA sums, codes proved against an error bound) ran
// svhn's 1->48 5x5 + pool + quantize in 72 us where the AVX-512 double path took 98 us on a Zen
// 4, so the default AVX-512 entry takes the zmm one; the shift entry keeps the double path so
// that it stays selectable and tested.
// clang-format off
const KernelEntry kTable[] = {
  // name                     backend   needs                tiles          packer      int8        fused
  //  float first layer path
#ifdef DOREFA_HAVE_X86_KERNELS
  {"popcount-avx512/gfni",    "avx512", kAvx512 | kGfniVbmi | kFma, &kAvx512Tiles, kGfniPack, nullptr, kEpilogue,
   kFloatZmm},
  {"popcount-avx512/shift",   "avx512", kAvx512,             &kAvx512Tiles, kShiftPack, nullptr,    kEpilogue,
   kFloatAvx512},
  {"popcount-avx2/movemask",  "avx2",   kAvx2 | kFma,        &kAvx2Tiles,   kMovemaskPack, nullptr, kEpilogue,
   kFloatAvx2},
#ifdef DOREFA_HAVE_AMX
  {"int8-amx",                "avx512", kAmx | kFma,         nullptr,       kNhwc,      &kInt8Amx,  kEpilogue,
   kFloatZmm},
#endif
  {"int8-vnni",               "avx512", kVnni | kFma,        nullptr,       kNhwc,      &kInt8Vnni, kEpilogue,
   kFloatZmm},
  {"int8-avx2",               "avx2",   kAvx2 | kFma,        nullptr,       kNhwc,      &kInt8Avx2, kEpilogue,
   kFloatAvx2},
  {"int8-winograd-avx2",      "avx2",   kAvx2 | kFma,        nullptr,       kNhwc,      &kInt8WinogradAvx2,
   kEpilogue, kFloatAvx2},
  {"lut-vnni",                "avx512", kLutZmm | kAvx512Vbmi | kAvx512Vnni | kFma, nullptr, kNhwc, &kLutVnni,
   kEpilogue, kFloatZmm},
  {"lut-avx512",              "avx512", kLutZmm | kFma,      nullptr,       kNhwc,      &kLutAvx512, kEpilogue,
   kFloatZmm},
  {"lut-avx2",                "avx2",   kAvx2 | kFma,        nullptr,       kNhwc,      &kLutAvx2,  kEpilogue,
   kFloatAvx2},
#endif
  {"popcount-scalar/portable", "scalar", 0,                  &kScalarTiles, kPortable,  nullptr,    0,
   kScalarRows},
};
// clang-format on

std::vector<KernelEntry> MakeTable() {
  for (const KernelEntry& k : kTable) {
    if ((k.tiles == nullptr) == (k.int8 == nullptr))
      throw std::logic_error(std::string(k.name) + ": needs popcount tiles or an int8 kernel");
    if (k.tiles != nullptr && k.fused_modes != 0 && k.tiles->fused == nullptr)
      throw std::logic_error(std::string(k.name) + ": fused modes without a fused tile kernel");
  }
  return {std::begin(kTable), std::end(kTable)};
}

std::string Join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// Names a request may use, each once, in table order: kernels, families, backends.
std::vector<std::string> KnownNames(bool supported_only) {
  std::vector<std::string> kernels{"reference"}, families, backends;
  auto add = [](std::vector<std::string>& v, const std::string& n) {
    for (const auto& m : v)
      if (m == n) return;
    v.push_back(n);
  };
  for (const KernelEntry& k : KernelTable()) {
    if (supported_only && !k.Supported()) continue;
    add(kernels, k.name);
    add(families, k.Family());
    add(backends, k.backend);
  }
  return {Join(kernels), Join(families), Join(backends)};
}

std::string Available() {
  const std::vector<std::string> n = KnownNames(true);
  return "available on this CPU: " + n[0] + " (or a family: " + n[1] + "; or a backend: " + n[2] +
         ")";
}

bool Names(const KernelEntry& k, const std::string& request) {
  return request.empty() || request == k.name || request == k.backend || request == k.Family();
}

}  // namespace

std::string KernelEntry::Family() const {
  const std::string n = name;
  return n.substr(0, n.find('/'));
}

const std::vector<KernelEntry>& KernelTable() {
  static const std::vector<KernelEntry> table = MakeTable();
  return table;
}

const KernelEntry& FindKernel(const std::string& name) {
  // The common case first: a full name (what dorefa.kernels passes on every call).
  for (const KernelEntry& k : KernelTable())
    if (k.Supported() && name == k.name) return k;
  const KernelEntry* named = nullptr;
  for (const KernelEntry& k : KernelTable()) {
    if (!Names(k, name)) continue;
    if (k.Supported()) return k;
    if (named == nullptr) named = &k;
  }
  if (named != nullptr) {
    const std::string lacks = Join(FeatureNames(named->needs & ~CpuFeatures()));
    throw std::invalid_argument("kernel '" + name + "' needs instructions this CPU lacks (" +
                                lacks + "); " + Available());
  }
  if (name == "reference") {
    throw std::invalid_argument(
        "'reference' is the NumPy kernel of dorefa.kernels, not a native one; " + Available());
  }
  const std::vector<std::string> all = KnownNames(false);
  throw std::invalid_argument("unknown kernel backend '" + name + "'; expected a kernel (" +
                              all[0] + "), a family (" + all[1] + ") or a backend (" + all[2] +
                              ")");
}

}  // namespace dorefa
