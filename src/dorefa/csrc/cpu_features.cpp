#include "cpu_features.h"

#include <cstdlib>
#include <sstream>
#include <stdexcept>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace dorefa {
namespace {

struct Feature {
  CpuFeature bit;
  const char* name;  // as in /proc/cpuinfo
};

constexpr Feature kFeatures[] = {
    {kAvx2, "avx2"},
    {kAvx512F, "avx512f"},
    {kAvx512Bw, "avx512bw"},
    {kAvx512Dq, "avx512dq"},
    {kAvx512Vl, "avx512vl"},
    {kAvx512Vpopcntdq, "avx512_vpopcntdq"},
    {kAvx512Vbmi, "avx512vbmi"},
    {kGfni, "gfni"},
    {kFma, "fma"},
    {kAvx512Vnni, "avx512_vnni"},
    {kAmxTile, "amx_tile"},
    {kAmxInt8, "amx_int8"},
};

// AMX tiles and int8 products, where the CPU has them (CPUID leaf 7 EDX bits 24, 25), the OS
// saves the tile state (XCR0 bits 17, 18) and grants this process the tile data on request
// (Linux 5.16+: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); refused, e.g., while a
// thread has a sigaltstack too small for the larger signal frame, or by some sandboxes).
// Asked only where DOREFA_CPU_FEATURES keeps AMX: the permission enlarges the process's signal
// frames from then on.
uint32_t DetectAmx() {
#if defined(__x86_64__) && defined(__linux__) && defined(SYS_arch_prctl)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return 0;
  __cpuid_count(7, 0, a, b, c, d);
  if (!(d & (1u << 24)) || !(d & (1u << 25))) return 0;
  __cpuid(1, a, b, c, d);
  if (!(c & (1u << 27))) return 0;  // OSXSAVE: XGETBV is available
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return 0;
  constexpr int kReqXcompPerm = 0x1023, kXtileData = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) != 0) return 0;
  return kAmxTile | kAmxInt8;
#else
  return 0;
#endif
}

uint32_t Detect() {
  uint32_t mask = 0;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();  // __builtin_cpu_supports takes a string literal: one test per feature
  if (__builtin_cpu_supports("avx2")) mask |= kAvx2;
  if (__builtin_cpu_supports("avx512f")) mask |= kAvx512F;
  if (__builtin_cpu_supports("avx512bw")) mask |= kAvx512Bw;
  if (__builtin_cpu_supports("avx512dq")) mask |= kAvx512Dq;
  if (__builtin_cpu_supports("avx512vl")) mask |= kAvx512Vl;
  if (__builtin_cpu_supports("avx512vpopcntdq")) mask |= kAvx512Vpopcntdq;
  if (__builtin_cpu_supports("avx512vbmi")) mask |= kAvx512Vbmi;
  if (__builtin_cpu_supports("gfni")) mask |= kGfni;
  if (__builtin_cpu_supports("fma")) mask |= kFma;
  if (__builtin_cpu_supports("avx512vnni")) mask |= kAvx512Vnni;
#endif
  return mask;
}

// DOREFA_CPU_FEATURES=avx2,fma: run as if the CPU had only these of its features (an AVX2-only
// machine on an AVX-512 one, for tests and benchmarks); never adds a feature.
uint32_t EnvMask() {
  const char* env = std::getenv("DOREFA_CPU_FEATURES");
  if (env == nullptr) return ~0u;
  uint32_t keep = 0;
  std::stringstream list(env);
  std::string name;
  while (std::getline(list, name, ',')) {
    if (name.empty()) continue;
    bool known = false;
    for (const Feature& f : kFeatures) {
      if (name == f.name) keep |= f.bit, known = true;
    }
    if (!known) {
      std::string all;
      for (const Feature& f : kFeatures) all += std::string(all.empty() ? "" : ", ") + f.name;
      throw std::invalid_argument("DOREFA_CPU_FEATURES: unknown feature '" + name +
                                  "'; use a comma-separated list of: " + all);
    }
  }
  return keep;
}

}  // namespace

uint32_t CpuFeatures() {
  static const uint32_t features = [] {  // CPUID once per process
    const uint32_t keep = EnvMask();
    const uint32_t amx = kAmxTile | kAmxInt8;
    return (Detect() | ((keep & amx) == amx ? DetectAmx() : 0)) & keep;
  }();
  return features;
}

std::vector<std::string> FeatureNames(uint32_t mask) {
  std::vector<std::string> names;
  for (const Feature& f : kFeatures)
    if (mask & f.bit) names.emplace_back(f.name);
  return names;
}

}  // namespace dorefa
