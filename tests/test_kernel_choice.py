"""The per-layer kernel choice (dorefa.kernels.choose): the cost model's picks, identical
integers whatever is picked, the per-process cache, forcing over choosing, Model.plan() and
`dorefa run --explain`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dorefa.runtime as rt
from dorefa import kernels as K
from dorefa.cli import main
from dorefa.exporter import export
from dorefa.kernels import choose
from dorefa.kernels import reference as R
from dorefa.models import create_model
from dorefa.runtime.bitconv import BitConv
from kernel_cases import KERNELS, NATIVE

HAS_INT8 = any(k.startswith("int8-") for k in K.available_kernels())
needs_native = pytest.mark.skipif(not NATIVE, reason="the compiled extension did not import")


def _layer(w_bits, x_bits, c=48, o=64, k=3, size=14, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 2**w_bits, (o, c, k, k)).astype(np.uint8)
    x = rng.integers(0, 2**x_bits, (2, c, size, size)).astype(np.uint8)
    return w, x


@pytest.fixture(autouse=True)
def unforced(monkeypatch):
    """This file tests the choice itself: a DOREFA_KERNEL of the whole run (the suite is also
    run with DOREFA_KERNEL=avx2 / scalar) would bypass it, so it is cleared here."""
    from dorefa.kernels import selection

    monkeypatch.delenv("DOREFA_KERNEL", raising=False)
    monkeypatch.delenv(choose.CHOICE_ENV, raising=False)
    monkeypatch.setattr(selection, "_process_kernel", None)
    monkeypatch.setattr(selection, "_process_forced", False)
    choose.clear_cache()
    yield
    choose.clear_cache()


@pytest.fixture
def model_only(monkeypatch):
    monkeypatch.setenv(choose.CHOICE_ENV, "model")
    choose.clear_cache()
    yield
    choose.clear_cache()


@needs_native
@pytest.mark.skipif(not HAS_INT8, reason="this CPU runs no int8 kernel")
@pytest.mark.parametrize("bits", [(8, 8), (1, 2), (1, 4)])
def test_cost_model_picks_int8_for_w8a8_popcount_for_w1a2_lut_for_w1a4(model_only, bits):
    """W1A2 goes to lut only where the popcount kernel has no VPOPCNTQ (AVX2-only CPUs); with
    AMX (int8-amx, priced at 600 GMAC/s) every bit pair goes to int8."""
    zmm_popcount = "popcount-avx512/gfni" in K.available_kernels() or (
        "popcount-avx512/shift" in K.available_kernels()
    )
    kind = {(8, 8): "int8-", (1, 2): "popcount-" if zmm_popcount else "lut-", (1, 4): "lut-"}[bits]
    if "int8-amx" in K.available_kernels():
        kind = "int8-"
    w, x = _layer(*bits)
    conv = K.prepare_conv(K.pack_weights(w, bits[0]), bits[1], 1, 1, "signed")
    choice = conv.choice(x.shape[2:])
    assert choice.how == "model" and choice.us is None
    assert choice.kernel.startswith(kind), choice
    conv(x)
    assert K.last_kernel() == choice.kernel  # the call ran the choice


@needs_native
@pytest.mark.parametrize("method", ["measure", "model"])
@pytest.mark.parametrize("bits", [(1, 2), (2, 4), (8, 8), (3, 1)])
def test_results_identical_whatever_is_picked(monkeypatch, method, bits):
    monkeypatch.setenv(choose.CHOICE_ENV, method)
    w_bits, x_bits = bits
    for shape in [dict(c=3, o=5, k=3, size=9), dict(c=48, o=64, k=3, size=14), dict(k=1)]:
        w, x = _layer(w_bits, x_bits, **shape)
        pw = K.pack_weights(w, w_bits)
        signed = R.bitconv2d_signed(x, pw, x_bits, 2, 1)
        th = np.sort(np.random.default_rng(1).choice(np.unique(signed), (w.shape[0], 3)), axis=1)
        d = np.where(np.arange(w.shape[0]) % 2, 1, -1).astype(np.int8)
        th = th.astype(np.int32)
        chosen = {
            "acc": K.bitconv2d(x, w, x_bits, w_bits, 2, 1),
            "signed": K.bitconv2d_signed(x, pw, x_bits, 2, 1),
            "requant": K.prepare_conv(pw, x_bits, 2, 1, "requant", th, d)(x),
        }
        assert choose.cache_info()["size"] >= 1
        for kernel in KERNELS:
            with K.use_kernel(kernel):
                np.testing.assert_array_equal(
                    chosen["acc"], K.bitconv2d(x, w, x_bits, w_bits, 2, 1)
                )
                np.testing.assert_array_equal(chosen["signed"], signed)
                got = K.prepare_conv(pw, x_bits, 2, 1, "requant", th, d)(x)
                np.testing.assert_array_equal(chosen["requant"], got)


@needs_native
def test_the_cache_is_hit_the_second_time():
    choose.clear_cache()
    w, x = _layer(1, 2)
    pw = K.pack_weights(w, 1)
    first = K.prepare_conv(pw, 2, 1, 1, "signed")
    a = first.choice(x.shape[2:])
    assert choose.cache_info() == {"hits": 0, "misses": 1, "size": 1}
    assert a.how == "measured" and a.us > 0 and a.kernel in K.available_kernels()
    assert a.kernel in [k for k, _, _ in a.candidates] and len(a.candidates) <= choose.CANDIDATES
    second = K.prepare_conv(pw, 2, 1, 1, "signed")  # another layer of the same shape
    assert second.choice(x.shape[2:]) is a
    assert choose.cache_info() == {"hits": 1, "misses": 1, "size": 1}
    second(x)
    second(x)  # later calls read the layer's own table: no cache lookup
    assert choose.cache_info()["hits"] == 1
    K.prepare_conv(pw, 2, 1, 0, "signed").choice(x.shape[2:])  # another padding: a new entry
    assert choose.cache_info()["misses"] == 2


@needs_native
def test_calls_of_many_images_are_chosen_at_their_own_batch_class():
    """Batches of BATCHED_FROM images or more get their own choice, timed at MEASURE_BATCH (the
    fastest kernel for one image is not always the fastest for many); smaller ones share the
    batch-1 choice. Whatever is picked, the integers are the same."""
    from dorefa.kernels.prepared import BATCHED_FROM, MEASURE_BATCH, batch_class

    assert BATCHED_FROM == 8 and MEASURE_BATCH == 32
    assert [batch_class(n) for n in (1, 7, 8, 128)] == [1, 1, 32, 32]
    choose.clear_cache()
    w, _ = _layer(1, 2)
    pw = K.pack_weights(w, 1)
    conv = K.prepare_conv(pw, 2, 1, 1, "signed")
    rng = np.random.default_rng(3)
    one = rng.integers(0, 4, (1, w.shape[1], 6, 6), dtype=np.uint8)
    many = rng.integers(0, 4, (9, w.shape[1], 6, 6), dtype=np.uint8)
    np.testing.assert_array_equal(conv(one), R.bitconv2d_signed(one, pw, 2, 1, 1))
    np.testing.assert_array_equal(conv(many), R.bitconv2d_signed(many, pw, 2, 1, 1))
    assert choose.cache_info() == {"hits": 0, "misses": 2, "size": 2}
    conv(many[:3])  # below MEASURE_BATCH: the batch-1 choice, no new measurement
    assert conv.choice((6, 6), 3) is conv.choice((6, 6))
    assert choose.cache_info()["misses"] == 2
    batched = conv.choice((6, 6), 9)
    assert batched is not conv.choice((6, 6)) and batched.how == "measured" and batched.us > 0


@needs_native
def test_a_batched_choice_is_timed_on_no_more_images_than_the_call(monkeypatch):
    """Found by a hostile review: 8 images of 256x256 were chosen on 32 (4x the call's
    memory, +211 MB); a batched call is timed on its own batch, up to MEASURE_BATCH."""
    from dorefa.kernels.prepared import PreparedConv

    w, _ = _layer(1, 2)
    pw = K.pack_weights(w, 1)
    seen = []
    run_on = PreparedConv.run_on
    monkeypatch.setattr(
        PreparedConv, "run_on", lambda self, k, x, t: seen.append(len(x)) or run_on(self, k, x, t)
    )
    for batch, timed in ((9, 9), (100, 32)):
        choose.clear_cache()
        seen.clear()
        conv = K.prepare_conv(pw, 2, 1, 1, "signed")
        assert conv.choice((6, 6), batch).how == "measured"
        assert seen and set(seen) == {timed}


@needs_native
def test_a_clear_win_of_the_cost_model_is_not_timed():
    """W8A8: popcount runs 64 plane pairs and lut 16 lookups, priced far above int8-vnni and
    int8-winograd-avx2 (> CLEAR_WIN): only the int8 kernel is measured. W1A2 is close enough
    to time every kind."""
    if not any(k.startswith("int8-") for k in K.available_kernels()):
        pytest.skip("no int8 kernel on this CPU: nothing to compare")  # non-x86 builds
    choose.clear_cache()
    lut = {"lut"} if any(k.startswith("lut-") for k in K.available_kernels()) else set()
    # Without either, int8-avx2's W8A8 nibble path is slow enough that lut is timed too.
    fast = {"int8-vnni", "int8-winograd-avx2"} & set(K.available_kernels())
    w8a8 = {"int8"} | (lut if not fast else set())
    for bits, kinds in ((8, w8a8), (1, {"int8", "popcount"} | lut)):
        w, x = _layer(bits, 2 if bits == 1 else 8)
        choice = K.prepare_conv(K.pack_weights(w, bits), 2 if bits == 1 else 8, 1, 1).choice(
            x.shape[2:]
        )
        assert {k.split("-")[0] for k, _, _ in choice.candidates} == kinds, bits
        assert all(us is not None for _, _, us in choice.candidates)


@needs_native
def test_measurement_leaves_last_kernel_alone():
    choose.clear_cache()
    w, x = _layer(2, 2)
    pw = K.pack_weights(w, 2)
    K._ran("")
    K.prepare_conv(pw, 2, 1, 1, "signed").choice(x.shape[2:])  # runs candidates
    assert K.last_kernel() == ""  # no call of this thread ran yet


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
def test_forcing_overrides_the_choice(monkeypatch, kernel):
    monkeypatch.setenv(choose.CHOICE_ENV, "model")
    w, x = _layer(8, 8)
    conv = K.prepare_conv(K.pack_weights(w, 8), 8, 1, 1, "signed")
    conv(x)  # chosen
    with K.use_kernel(kernel):
        assert K.forced_kernel() == kernel
        conv(x)
        assert K.last_kernel() == kernel
        forced = conv.choice(x.shape[2:])
        assert (forced.kernel, forced.how) == (kernel, "forced") and forced.us > 0
    K.set_backend(kernel)
    try:
        conv(x)
        assert K.last_kernel() == kernel
    finally:
        K.set_backend(None)
    assert K.forced_kernel() is None
    K.set_backend(kernel)
    K.set_backend(" ")  # blank, as an empty DOREFA_KERNEL: nothing forced (it had forced one)
    assert K.forced_kernel() is None


def test_unknown_choice_method_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(choose.CHOICE_ENV, "fastest")
    with pytest.raises(ValueError, match="DOREFA_KERNEL_CHOICE='fastest' is not one of measure"):
        choose.method()


def test_cost_model_grows_with_the_planes_only_for_popcount():
    macs = 10**6
    pop = [choose.model_cost("popcount-avx512", w, a, macs) for w, a in [(1, 1), (2, 2), (8, 8)]]
    assert pop[0] * 4 == pytest.approx(pop[1]) and pop[0] * 64 == pytest.approx(pop[2])
    assert choose.model_cost("int8-vnni", 1, 1, macs) == choose.model_cost("int8-vnni", 8, 8, macs)


def test_amx_is_priced_by_the_tile_rows_a_call_fills():
    """int8-amx's 16-row tiles: a one-pixel layer at batch 1 fills one row (svhn's conv6 ran
    on it at 41.8 us where int8-vnni takes 27.5, chosen by the flat rate)."""
    assert choose.amx_rows_used(1) == 1 / 16 and choose.amx_rows_used(16) == 1
    assert choose.amx_rows_used(25) == 25 / 32 and choose.amx_rows_used(0) == 1 / 16
    macs = 10**6
    one, full = (choose.model_cost("int8-amx", 8, 8, macs, rows) for rows in (1, 32))
    assert one == pytest.approx(16 * full)
    vnni = choose.model_cost("int8-vnni", 8, 8, macs, 1)
    assert vnni == choose.model_cost("int8-vnni", 8, 8, macs)


def test_layers_that_fill_few_amx_rows_leave_it(model_only, monkeypatch):
    """The rows reach the price from a layer's call and from the summaries, on any CPU: the
    cost model alone, over a CPU's families as an AMX one lists them (nothing runs)."""
    from dorefa.model_summary import summary

    monkeypatch.setattr(choose, "families", lambda: ["int8-amx", "int8-vnni"])
    w, _ = _layer(8, 8, c=32, o=64, k=5)
    conv = K.prepare_conv(K.pack_weights(w, 8), 8, 1, 0, "signed")
    assert conv.choice((5, 5), 1).kernel == "int8-vnni"  # one pixel: one row in 16
    assert conv.choice((5, 5), 32).kernel == "int8-amx"  # 32 images: 32 rows
    w, _ = _layer(8, 8, c=32, o=64, k=1)
    strided = K.prepare_conv(K.pack_weights(w, 8), 8, 2, 0, "signed")
    assert strided.choice((2, 2), 1).kernel == "int8-vnni"  # one pixel of a 2 x 2 input
    assert strided.choice((7, 7), 1).kernel == "int8-amx"  # 4 x 4: 16 rows
    rows = summary(create_model("svhn", bits="8,8,8", num_classes=10)).rows
    picks = {r.name: r.kernel for r in rows if r.w == 8}
    assert picks.pop("features.conv6") == "int8-vnni"  # 512 x 5x5 to one pixel
    assert set(picks.values()) == {"int8-amx"}


def _export(tmp_path, bits):
    torch.manual_seed(0)
    m = create_model("svhn", bits=bits, num_classes=10, in_channels=1, width=0.25)
    with torch.no_grad():
        m.train()
        m(torch.rand(8, 1, 40, 40))
    path = tmp_path / f"m{bits.replace(',', '')}.dorefa"
    export(m.eval(), path)
    return path


@needs_native
@pytest.mark.parametrize("bits", ["1,2,6", "8,8,8"])
def test_plan_lists_every_bitconv_node(tmp_path, bits):
    model = rt.load(_export(tmp_path, bits))
    plan = model.plan()
    nodes = [la.name for la in model.layers if isinstance(la, BitConv)]
    assert [row.node for row in plan] == nodes and nodes
    w, a = bits.split(",")[:2]
    assert all(row.kernel in K.available_kernels() for row in plan)
    assert all(row.bits == f"W{w}A{a}" for row in plan)
    text = str(plan)
    assert all(node in text for node in nodes) and "kernel" in text.splitlines()[0]
    # dense receptive fields: shown where a popcount kernel runs a layer that takes them
    # (at width 0.25 the 12- to 32-channel layers do)
    convs = [la.convs[0] for la in model.layers if isinstance(la, BitConv)]
    runs = zip(convs, plan, strict=True)
    assert [row.fields for row in plan] == [
        conv.fields and row.kernel.startswith("popcount") for conv, row in runs
    ]
    assert ("+fields" in text) == any(row.fields for row in plan)
    with K.use_kernel(NATIVE[-1]):
        assert {(row.kernel, row.how) for row in model.plan()} == {(NATIVE[-1], "forced")}


@needs_native
def test_dorefa_run_explain_prints_the_plan(tmp_path, capsys):
    path = _export(tmp_path, "1,2,6")
    assert main(["run", str(path), "--explain"]) == 0
    out = capsys.readouterr().out
    model = rt.load(path)
    for layer in model.layers:
        if isinstance(layer, BitConv):
            assert layer.name in out
    assert "W1A2" in out and "kernel plan" in out
    assert main(["run", str(path), "--explain", "--compare", "x.pt", "--test-subset", "9"]) == 0
    assert "--explain runs no test set: --compare, --test-subset not used" in (
        capsys.readouterr().err
    )
    assert main(["run", str(path), "--explain", "--batch-size", "8"]) == 0
    assert "--explain runs no test set: --batch-size not used" in capsys.readouterr().err


def test_amx_candidates_are_warmed_up_before_timing_unless_just_timed(monkeypatch):
    """AMX runs slower for a while after idling: after every candidate's first call, an
    int8-amx candidate is called for WARM_UP_S before the timed rounds, unless its family was
    timed less than WARM_UP_IDLE_S ago. A fake clock (each call 1 ms) keeps it deterministic."""
    clock = [0.0]
    calls: list[str] = []
    monkeypatch.setattr(choose.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(choose, "_last_timed", {})

    def run(kernel):
        calls.append(kernel)
        clock[0] += 0.001

    choose.measure(run, ["int8-amx", "lut-vnni"])
    warm = round(choose.WARM_UP_S / 0.001)
    assert calls[:2] == ["int8-amx", "lut-vnni"]  # first calls (they also pack)
    assert calls[2 : 2 + warm] == ["int8-amx"] * warm  # the warm-up, before any timed round
    rounds = calls[2 + warm :]
    assert rounds[:2] == ["int8-amx", "lut-vnni"] and rounds.count("int8-amx") == len(rounds) // 2
    calls.clear()
    clock[0] += choose.WARM_UP_IDLE_S / 2  # timed just before: no second warm-up
    choose.measure(run, ["int8-amx", "lut-vnni"])
    assert calls.count("int8-amx") == calls.count("lut-vnni")
    calls.clear()
    clock[0] += 2 * choose.WARM_UP_IDLE_S  # idle since: warmed up again
    choose.measure(run, ["lut-vnni", "int8-amx"])
    assert calls.count("int8-amx") == calls.count("lut-vnni") + warm
