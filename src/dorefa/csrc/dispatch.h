// Run-time choice of the kernel: CPUID decides what the machine can run, DOREFA_KERNEL (or an
// explicit name) can force any path the CPU supports, so one machine tests all of them.
#ifndef DOREFA_CSRC_DISPATCH_H_
#define DOREFA_CSRC_DISPATCH_H_

#include <string>
#include <vector>

#include "bitconv.h"

namespace dorefa {

// Native backends compiled into this build, fastest first ("avx512", "avx2", "scalar").
std::vector<std::string> CompiledBackends();

// The subset of CompiledBackends() this CPU (and OS) can execute, fastest first.
const std::vector<std::string>& SupportedBackends();

// Resolves a requested backend name: empty -> the fastest supported one; "reference" is
// passed through (the NumPy reference lives in Python). Throws std::invalid_argument with
// the reason when the name is unknown or the CPU lacks the instructions.
std::string ResolveBackend(const std::string& requested);

// The kernel of a supported native backend (throws std::invalid_argument otherwise).
const KernelInfo& KernelFor(const std::string& backend);

}  // namespace dorefa

#endif  // DOREFA_CSRC_DISPATCH_H_
