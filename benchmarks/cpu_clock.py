"""The core clock, for MAC/cycle figures: a chain of dependent adds, built aside.

``dependent_add_seconds(iterations)`` runs ``iterations`` x 8 dependent register-register
integer adds (1 cycle latency each on x86 cores), so cycles ~= 8 * iterations, and returns the
elapsed seconds: it measures the clock the core actually runs at (turbo included, and time
slices lost to other processes). Register-register on purpose: recent cores fold add-immediate
chains at rename, which would make them look faster than one add per cycle.

It is benchmark code, so it is not in the kernel library: this module compiles the loop with
the system C compiler into ``build/bench-clock/`` (once; the build directory is ignored by git)
and calls it through ctypes, which releases the GIL, so several threads can probe at once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import threading
from pathlib import Path

SOURCE = r"""
#include <stdint.h>
#include <time.h>

double dependent_add_seconds(int64_t iterations) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
#if defined(__x86_64__)
  uint64_t acc = 0, one = 1;
  int64_t n = iterations;
  __asm__ volatile(
      "1:\n\t"
      "add %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\t"
      "add %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\t"
      "dec %1\n\tjnz 1b\n\t"
      : "+r"(acc), "+r"(n)
      : "r"(one)
      : "cc");
#else
  volatile uint64_t acc = 0;
  for (int64_t i = 0; i < 8 * iterations; ++i) acc = acc + 1;
#endif
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
}
"""

BUILD_DIR = Path(__file__).resolve().parent.parent / "build"


def compile_c(source: str, stem: str, what: str) -> ctypes.CDLL:
    """``source`` built once with the system C compiler (``$CC``, else ``cc``) into
    ``build/bench-<stem>/<stem>-<hash>.so`` (ignored by git) and loaded; ``what`` names it in
    the error a failed build raises."""
    folder = BUILD_DIR / f"bench-{stem}"
    tag = hashlib.sha256(source.encode()).hexdigest()[:12]
    lib = folder / f"{stem}-{tag}.so"
    if not lib.exists():
        folder.mkdir(parents=True, exist_ok=True)
        src = folder / f"{stem}-{tag}.c"
        src.write_text(source)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cc = os.environ.get("CC", "cc")
        cmd = [cc, "-O2", "-shared", "-fPIC", str(src), "-o", str(tmp)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"could not build {what} with {cc!r} ({done.stderr.strip()}); "
                "install a C compiler or set CC"
            )
        tmp.replace(lib)
    return ctypes.CDLL(str(lib))


@functools.cache
def _library() -> ctypes.CDLL:
    so = compile_c(SOURCE, "clock", "the clock probe")
    so.dependent_add_seconds.restype = ctypes.c_double
    so.dependent_add_seconds.argtypes = [ctypes.c_int64]
    return so


def dependent_add_seconds(iterations: int) -> float:
    """Seconds for 8 * `iterations` dependent adds (about as many core cycles)."""
    return _library().dependent_add_seconds(iterations)


def clock_hz(threads: int = 1, probes: int = 40, iterations: int = 250_000) -> float:
    """The core clock while ``threads`` cores are busy: the fastest of ``probes`` runs of 8 *
    ``iterations`` dependent adds on each of ``threads`` threads started together (the probe
    releases the GIL). A core runs slower while the other is busy too (~10% on a 2-vCPU VM): a
    2-thread figure divided by the 1-thread clock understates MAC/cycle."""
    best = [float("inf")] * threads
    start = threading.Barrier(threads)

    def probe(k: int) -> None:
        start.wait()
        best[k] = min(dependent_add_seconds(iterations) for _ in range(probes))

    workers = [threading.Thread(target=probe, args=(k,)) for k in range(1, threads)]
    for w in workers:
        w.start()
    probe(0)
    for w in workers:
        w.join()
    return 8 * iterations / min(best)
