#include "dispatch.h"

#include <stdexcept>

namespace dorefa {
namespace {

bool CpuHas(const std::string& backend) {
  if (backend == "scalar") return true;
#ifdef DOREFA_HAVE_X86_KERNELS
  // __builtin_cpu_supports also checks that the OS saves the wider register state (XGETBV).
  __builtin_cpu_init();
  if (backend == "avx2") return __builtin_cpu_supports("avx2");
  if (backend == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vpopcntdq");
  }
#endif
  return false;
}

std::string Join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

std::vector<std::string> CompiledBackends() {
#ifdef DOREFA_HAVE_X86_KERNELS
  return {"avx512", "avx2", "scalar"};
#else
  return {"scalar"};
#endif
}

const std::vector<std::string>& SupportedBackends() {
  static const std::vector<std::string> supported = [] {  // CPUID once per process
    std::vector<std::string> out;
    for (const auto& b : CompiledBackends())
      if (CpuHas(b)) out.push_back(b);
    return out;
  }();
  return supported;
}

std::string ResolveBackend(const std::string& requested) {
  const std::vector<std::string>& supported = SupportedBackends();
  if (requested.empty()) return supported.front();
  if (requested == "reference") return requested;
  for (const auto& b : supported)
    if (b == requested) return b;
  for (const auto& b : CompiledBackends()) {
    if (b == requested) {
      throw std::invalid_argument("kernel backend '" + requested +
                                  "' needs instructions this CPU lacks; available: reference, " +
                                  Join(supported));
    }
  }
  throw std::invalid_argument("unknown kernel backend '" + requested +
                              "'; expected one of: reference, " + Join(CompiledBackends()));
}

const KernelInfo& KernelFor(const std::string& backend) {
  // Fast path for the per-call lookup: a backend already known to be supported.
  for (const auto& b : SupportedBackends()) {
    if (b != backend) continue;
    if (b == "scalar") return ScalarKernel();
#ifdef DOREFA_HAVE_X86_KERNELS
    if (b == "avx2") return Avx2Kernel();
    if (b == "avx512") return Avx512Kernel();
#endif
  }
  const std::string b = ResolveBackend(backend);  // throws the explanatory error
  throw std::invalid_argument("backend '" + b + "' is not a native kernel");
}

}  // namespace dorefa
