"""Training defaults that depend on the CPU: the number of torch threads and whether
``--amp bf16`` can be fast here. Each function also says *why* (the training log prints it).

Threads (``--threads`` not given), per training process:

1. ``OMP_NUM_THREADS`` if set (torchrun sets it to 1 for several workers): the user's choice;
2. else, with C = CPUs this process may run on (``os.sched_getaffinity``) divided among the
   processes of this node (``LOCAL_WORLD_SIZE``):
   * C <= 2: 1 thread. Measured on 2 vCPUs of an AMD Zen 2 machine, 2 torch threads ran the
     training step at 0.57x the speed of 1 (two vCPUs are often one core's two hyperthreads, and
     the second thread only adds synchronisation);
   * C > 2: one thread per physical core among those CPUs (Linux sysfs topology), divided
     among the processes; C // 2 when the topology cannot be read (hyperthread pairs).

An explicit ``--threads`` larger than C is clamped to C, with a warning (more threads than
CPUs only adds contention).

bf16: autocast to bf16 is fast only on CPUs with native bf16 arithmetic (x86: the
``avx512_bf16`` or ``amx_bf16`` flags; Arm: ``bf16``). Without them torch emulates it: on an AMD
Zen 2 machine a bf16 training step ran 21x slower than float32.
"""

from __future__ import annotations

import os
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 /proc/cpuinfo "flags"; Arm: "bf16" in "Features"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; all CPUs where that is unknown)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int], sysfs: str | Path = "/sys/devices/system/cpu") -> int | None:
    """Distinct (package, core) pairs among ``cpus`` (Linux sysfs); None if unreadable."""
    cores = set()
    for cpu in cpus:
        topo = Path(sysfs) / f"cpu{cpu}" / "topology"
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return None
        cores.add((package, core))
    return len(cores) or None


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def _local_processes() -> int:
    value = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else 1


def pick_threads(requested: int | None) -> tuple[int, str]:
    """(threads for this process: torch's intra-op threads in training, the kernels' in
    `dorefa run`; a log line saying why)."""
    cpus = usable_cpus()
    n = len(cpus)
    if requested is not None:
        if requested > n:
            return n, (
                f"warning: --threads {requested} is more than the {n} CPUs this process may "
                f"use; using {n} threads (more threads than CPUs only adds contention)"
            )
        return requested, f"torch threads: {requested} (--threads)"
    env = _env_threads()
    if env is not None:
        return min(env, n), f"torch threads: {min(env, n)} (OMP_NUM_THREADS={env})"
    procs = _local_processes()
    share = max(1, n // procs)
    where = f"{n} CPUs" + (f" shared by {procs} processes" if procs > 1 else "")
    if share <= 2:
        return 1, (
            f"torch threads: 1 ({where}; on 2 vCPUs 2 threads ran at 0.57x the speed of 1; "
            "--threads overrides)"
        )
    cores = physical_cores(cpus)
    threads = max(1, (cores if cores else n // 2) // procs)
    basis = f"{cores} physical cores" if cores else "core count unknown, taken as CPUs / 2"
    return (
        threads,
        f"torch threads: {threads} ({where}, {basis}: one per core; --threads overrides)",
    )


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU computes bf16 natively (x86: avx512_bf16 / amx_bf16 flags; Arm: bf16);
    None where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        words = set(value.split())
        if key.strip() == "flags":
            return any(flag in words for flag in BF16_FLAGS)
        if key.strip() == "Features":
            return "bf16" in words
    return None


def bf16_warning(native: bool | None) -> str | None:
    """The log line for ``--amp bf16`` on a CPU (None: native bf16, nothing to say)."""
    why = (
        "torch then emulates bf16, and a training step ran 21x slower than float32 on an AMD Zen 2"
    )
    if native is None:
        return (
            "warning: --amp bf16: cannot tell whether this CPU has native bf16 (no "
            f"/proc/cpuinfo); without {' or '.join(BF16_FLAGS)} {why}"
        )
    if not native:
        return (
            f"warning: --amp bf16 on a CPU without native bf16 (no {' or '.join(BF16_FLAGS)} in "
            f"/proc/cpuinfo): {why}; drop --amp for float32"
        )
    return None
