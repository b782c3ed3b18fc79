// What this CPU (and OS) can execute, from CPUID: the "CPU check" of the kernel table.
#ifndef DOREFA_CSRC_CPU_FEATURES_H_
#define DOREFA_CSRC_CPU_FEATURES_H_

#include <cstdint>
#include <string>
#include <vector>

namespace dorefa {

// One bit per instruction-set extension a kernel may need. Names (FeatureNames) are the flag
// names of Linux's /proc/cpuinfo, so tests can compare them with what the kernel reports.
enum CpuFeature : uint32_t {
  kAvx2 = 1u << 0,
  kAvx512F = 1u << 1,
  kAvx512Bw = 1u << 2,
  kAvx512Dq = 1u << 3,
  kAvx512Vl = 1u << 4,
  kAvx512Vpopcntdq = 1u << 5,
  kAvx512Vbmi = 1u << 6,
  kGfni = 1u << 7,
  kFma = 1u << 8,
  kAvx512Vnni = 1u << 9,  // CPUID leaf 7, ECX bit 11: VPDPBUSD on 128/256/512-bit registers
  kAmxTile = 1u << 10,    // CPUID leaf 7, EDX bit 24, the OS's XTILEDATA state and permission
  kAmxInt8 = 1u << 11,    // CPUID leaf 7, EDX bit 25: TDPBUUD and the other byte products
};

// The features of this CPU, detected once per process. __builtin_cpu_supports also checks
// that the OS saves the wider register state (XGETBV), so a set bit means "can run". AMX
// also needs the process's permission for the tile data (Linux: arch_prctl
// ARCH_REQ_XCOMP_PERM, asked for here once): without it the AMX bits stay clear.
// DOREFA_CPU_FEATURES (a comma-separated list of names) keeps only those features, so an
// AVX-512 machine can run as an AVX2-only one; an unknown name is a std::invalid_argument.
uint32_t CpuFeatures();

// For the files that compile one loop body for several targets (act_train.cpp, bn_train.cpp,
// input_grad.cpp):
// the copy for this CPU of those compiled for the baseline, AVX2 and AVX-512.
// DOREFA_PICK_COPY(Name) picks among the functions NameBase, NameAvx2, NameAvx512 (NameBase
// alone without the x86 kernels).
template <class Copy>
Copy ForVectorWidth(Copy baseline, Copy avx2, Copy avx512) {
  const uint32_t f = CpuFeatures();
  if ((f & kAvx512F) && (f & kAvx512Bw) && (f & kAvx512Vl)) return avx512;
  return (f & kAvx2) ? avx2 : baseline;
}
// DOREFA_DEFINE_COPIES(COPIES) expands COPIES(SUFFIX, TARGET) for the three copies (the
// suffixes Base, Avx2, Avx512 and their target attributes, FMA allowed), for a file whose
// loop bodies may contract multiply-adds (bn_train.cpp, input_grad.cpp; act_train.cpp, bit
// for bit torch's float steps, names its targets without FMA itself).
#ifdef DOREFA_HAVE_X86_KERNELS
#define DOREFA_PICK_COPY(NAME) ForVectorWidth(&NAME##Base, &NAME##Avx2, &NAME##Avx512)
#define DOREFA_DEFINE_COPIES(COPIES)                \
  COPIES(Base, )                                    \
  COPIES(Avx2, __attribute__((target("avx2,fma")))) \
  COPIES(Avx512, __attribute__((target("avx512f,avx512bw,avx512vl,fma"))))
#else
#define DOREFA_PICK_COPY(NAME) (&NAME##Base)
#define DOREFA_DEFINE_COPIES(COPIES) COPIES(Base, )
#endif

// The names of the bits set in `mask`, lowest bit first.
std::vector<std::string> FeatureNames(uint32_t mask);

}  // namespace dorefa

#endif  // DOREFA_CSRC_CPU_FEATURES_H_
