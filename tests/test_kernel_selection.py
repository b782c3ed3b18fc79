"""The kernel table and the choice of a kernel: the table's rows against the CPU, the names
(kernel, family, backend), DOREFA_KERNEL, use_kernel / use_backend / set_backend, and which
kernel actually ran (last_kernel, per thread)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dorefa import kernels as K
from kernel_cases import BACKENDS, KERNELS, NATIVE, SHAPES, TABLE, case, cpu_flags, fresh_process


# ------------------------------------------------------------------------- the kernel table
def test_kernel_table_rows():
    assert TABLE and TABLE[-1]["name"] == "popcount-scalar/portable"
    assert TABLE[-1]["needs"] == [] and TABLE[-1]["supported"]
    names = [row["name"] for row in TABLE]
    assert len(set(names)) == len(names)
    for row in TABLE:
        if row["weights"] in ("int8", "int8wino", "lut", "lutdp"):  # int8, lut: by family
            family = row["weights"].removesuffix("dp").removesuffix("wino")
            assert row["name"] == row["family"] and row["name"].startswith(f"{family}-")
        else:
            assert row["weights"] == "bitplanes" and row["name"].startswith("popcount-")
            assert row["name"] == f"{row['family']}/{row['packer']}"
        assert row["backend"] in ("avx512", "avx2", "scalar")
        assert set(row["fused_modes"]) <= {"acc", "signed", "requant"}
        assert re.fullmatch(r"\d+x\d+", row["tile"]), row["tile"]
        assert row["pixel_tile"] >= 1 and row["channel_block_tile"] >= 1
    assert K.available_kernels() == [r["name"] for r in TABLE if r["supported"]] + ["reference"]
    backends = [r["backend"] for r in TABLE if r["supported"]]
    assert K.available_backends() == list(dict.fromkeys(backends)) + ["reference"]
    K.kernel_table()[0]["name"] = "changed"  # a copy: the table itself cannot be edited
    assert K.kernel_table() == TABLE


def test_kernel_table_supported_matches_the_cpu_flags():
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    for row in TABLE:
        assert row["supported"] == (set(row["needs"]) <= flags), row


@pytest.mark.parametrize("row", TABLE, ids=lambda row: row["name"])
def test_every_table_entry_runs_or_names_what_the_cpu_lacks(row):
    if not row["supported"]:
        with pytest.raises(ValueError, match=r"needs instructions this CPU lacks \(\w"):
            K.kernel_name(row["name"])
        return
    x, w, expected = case(SHAPES[6], 3, 2)
    with K.use_kernel(row["name"]) as active:
        assert active == row["name"] == K.kernel_name()
        assert K.backend() == row["backend"]
        np.testing.assert_array_equal(K.bitconv2d(x, w, 3, 2, 1, 1), expected)
        assert K.last_kernel() == row["name"]


def test_family_and_backend_names_select_their_first_supported_kernel():
    for row in TABLE:
        for alias in ("family", "backend"):
            first = next((r for r in TABLE if r[alias] == row[alias] and r["supported"]), None)
            if first is None:  # e.g. the AVX-512 family on an AVX2-only CPU
                with pytest.raises(ValueError, match="lacks"):
                    K.kernel_name(row[alias])
                continue
            assert K.kernel_name(row[alias]) == first["name"]
    assert K.kernel_name("reference") == "reference"


# ------------------------------------------------------------------------- which kernel ran
def test_int8_kernels_are_listed_where_the_cpu_runs_them_and_never_the_default():
    flags = cpu_flags()
    rows = {r["name"]: r for r in TABLE}
    if "int8-avx2" in rows:  # x86 builds
        assert ("int8-avx2" in KERNELS) == ("avx2" in flags or not flags)
        assert ("int8-vnni" in KERNELS) == (set(rows["int8-vnni"]["needs"]) <= flags or not flags)
        assert "avx512_vnni" in rows["int8-vnni"]["needs"]
    if "int8-amx" in rows:  # x86 builds whose compiler has the AMX intrinsics
        amx = {"amx_tile", "amx_int8"}
        assert amx <= set(rows["int8-amx"]["needs"])
        # AMX also needs XCR0's tile state and the process's permission (asked for at the first
        # look at the CPU): the library's own detection decides, and only with the CPU's flags.
        assert ("int8-amx" in KERNELS) == (amx <= set(K._native.cpu_features()))
        assert "int8-amx" not in KERNELS or amx <= flags or not flags
    assert not KERNELS[0].startswith("int8-")


def test_default_kernel_is_the_first_supported_entry():
    code = "import dorefa.kernels as k; print(k.kernel_name(), k.backend())"
    assert fresh_process(code) == [KERNELS[0], BACKENDS[0]]


@pytest.mark.parametrize("kernel", KERNELS)
def test_use_kernel_switches_and_restores_and_that_path_runs(kernel):
    before = K.kernel_name()
    x, w, _ = case(SHAPES[0], 2, 1)
    th, direction = np.zeros((3, 1), np.int32), np.ones(3, np.int8)
    with K.use_kernel(kernel) as active:
        assert active == kernel == K.kernel_name()
        pw = K.pack_weights(w, 1)
        calls = [
            lambda: K.bitconv2d(x, w, 2, 1, 1, 1),
            lambda: K.bitconv2d_packed(x, pw, 2, 1, 1),
            lambda: K.bitconv2d_signed(x, pw, 2, 1, 1),
            lambda: K.bitconv2d_requant(x, pw, 2, 1, 1, th, direction),
            lambda: K.prepare_conv(pw, 2, 1, 1, "requant", th, direction)(x),
        ]
        for call in calls:
            K._ran("")
            call()
            assert K.last_kernel() == kernel  # the kernel that actually ran
    assert K.kernel_name() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_use_backend_takes_the_backend_names(backend):
    before = K.backend()
    x, w, expected = case(SHAPES[0], 2, 1)
    with K.use_backend(backend) as active:
        assert active == backend == K.backend()
        assert K.kernel_name() == K.kernel_name(backend)
        np.testing.assert_array_equal(K.bitconv2d(x, w, 2, 1, 1, 1), expected)
        assert K.last_kernel() == K.kernel_name()
    assert K.backend() == before


def test_last_kernel_and_use_kernel_are_per_thread():
    """Python threads on different kernels at once each see their own choice and their own
    last kernel (every thread has run its call before any of them asks)."""
    import threading

    kernels = list(dict.fromkeys([NATIVE[0], NATIVE[-1], "reference"]))
    x, w, expected = case(SHAPES[3], 2, 1)
    s, p = SHAPES[3][6], SHAPES[3][7]
    barrier = threading.Barrier(len(kernels), timeout=60)
    seen: dict = {}

    def work(kernel: str) -> None:
        with K.use_kernel(kernel):
            for r in range(3):
                barrier.wait()
                got = K.bitconv2d(x, w, 2, 1, s, p)
                barrier.wait()
                seen[kernel, r] = (K.kernel_name(), K.last_kernel(), np.array_equal(got, expected))

    before = K.kernel_name()
    workers = [threading.Thread(target=work, args=(k,)) for k in kernels]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert seen == {(k, r): (k, k, True) for k in kernels for r in range(3)}
    assert K.kernel_name() == before  # the main thread's choice is untouched


@pytest.mark.parametrize("which", ["backend", "family", "kernel"])
def test_env_override_selects_the_kernel_in_a_fresh_process(which):
    rows = [r for r in TABLE if r["supported"]]
    row = rows[min(1, len(rows) - 1)] if rows else {}  # not the default one, where possible
    name = row.get({"backend": "backend", "family": "family", "kernel": "name"}[which], "reference")
    code = (
        "import dorefa.kernels as k, sys\n"
        "print(k.kernel_name(), k.backend(), 'torch' in sys.modules)"
    )
    kernel, backend, torch_loaded = fresh_process(code, DOREFA_KERNEL=name)
    assert (kernel, backend) == (K.kernel_name(name), row.get("backend", "reference"))
    assert torch_loaded == "False"  # the kernels (and so the runtime) never import torch


@pytest.mark.skipif("popcount-avx512/shift" not in KERNELS, reason="needs the AVX-512 kernels")
def test_avx512_packing_with_the_shift_transpose_in_a_fresh_process():
    """The AVX-512 packer transposes its 64x64 bit blocks with GFNI where the CPU has it, else
    with shifts and masks: two kernels of the table. DOREFA_KERNEL=popcount-avx512/shift selects
    the latter in a fresh process, so the path that CPUs without GFNI take is tested here too,
    bit for bit, weights and activations, on every shape."""
    code = f"""
import numpy as np
import dorefa.kernels as K
from dorefa.kernels import reference as R
print(K.kernel_name())
for shape in {SHAPES!r}:
    n, c, h, w, o, k, s, p = shape
    for xb, wb in [(1, 1), (2, 1), (3, 2), (8, 8)]:
        rng = np.random.default_rng([n, c, h, w, o, xb, wb])
        x = rng.integers(0, 1 << xb, (n, c, h, w), dtype=np.uint8)
        wc = rng.integers(0, 1 << wb, (o, c, k, k), dtype=np.uint8)
        pw = K.pack_weights(wc, wb)
        assert np.array_equal(pw.words, R.pack_weights(wc, wb).words)
        got = K.bitconv2d_packed(x, pw, xb, s, p, threads=2)
        assert np.array_equal(got, R.bitconv2d(x, wc, xb, wb, s, p)), (shape, xb, wb)
print(K.last_kernel())
print("ok")
"""
    shift = "popcount-avx512/shift"
    assert fresh_process(code, DOREFA_KERNEL=shift) == [shift, shift, "ok"]


@pytest.mark.skipif(not NATIVE, reason="needs the compiled kernels")
def test_cpu_features_env_runs_an_avx2_machine_on_any_cpu():
    """DOREFA_CPU_FEATURES=avx2,fma hides every other extension: the kernels, the weight-gradient
    kernels and the default are those of an AVX2-only CPU (Zen 2), and their results the
    reference's (the int8 and lut kernels' packing by SSE2 16 x 16 transposes included); an
    unknown feature name is a clear error."""
    code = f"""
import numpy as np
import dorefa.kernels as K
from dorefa.kernels import reference as R
print(*K.available_kernels(), *K._native.wgrad_kernels(), sep=",")
n, c, h, w, o, k, s, p = {SHAPES[6]!r}
rng = np.random.default_rng(0)
x = rng.integers(0, 4, (n, c, h, w), dtype=np.uint8)
wc = rng.integers(0, 2, (o, c, k, k), dtype=np.uint8)
got = K.bitconv2d_packed(x, K.pack_weights(wc, 1), 2, s, p, threads=2)
assert np.array_equal(got, R.bitconv2d(x, wc, 2, 1, s, p))
x8 = rng.integers(0, 256, (2, 53, 6, 7), dtype=np.uint8)  # 3 x 16 channels + a tail of 5
pw8 = K.pack_weights(rng.integers(0, 256, (20, 53, 3, 3), dtype=np.uint8), 8)
for kernel in ("int8-avx2", "int8-winograd-avx2", "lut-avx2"):
    with K.use_kernel(kernel):
        got8 = K.bitconv2d_signed(x8, pw8, 8, 1, 1)
    assert np.array_equal(got8, R.bitconv2d_signed(x8, pw8, 8, 1, 1)), kernel
print(K.last_kernel())
"""
    if "avx2" in cpu_flags():
        names, ran = fresh_process(code, DOREFA_CPU_FEATURES="avx2,fma")
        assert not any(f in n for n in names.split(",") for f in ("avx512", "vnni", "amx")), names
        assert names.split(",")[0] == "popcount-avx2/movemask"
        assert {"int8-avx2", "wgrad-avx2", "wgrad-scalar", "reference"} <= set(names.split(","))
        assert ran in names.split(",")
    bad = subprocess.run(
        [sys.executable, "-c", "import dorefa.kernels as K; K.available_kernels()"],
        env={**os.environ, "DOREFA_CPU_FEATURES": "avx3"},
        capture_output=True,
        text=True,
    )
    assert "DOREFA_CPU_FEATURES: unknown feature 'avx3'; use a comma-separated" in bad.stderr


def test_unknown_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown kernel backend 'neon'"):
        K.set_backend("neon")
    with pytest.raises(ValueError, match=r"unknown kernel backend 'popcount-neon/x'.*a family \("):
        with K.use_kernel("popcount-neon/x"):
            pass
