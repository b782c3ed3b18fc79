"""Integer training's backward kernels (dorefa.kernels.training): the entry points equal the
NumPy spec (dorefa.kernels.reference_grad) bit for bit on every kernel of this CPU; every native
weight-gradient kernel by name (random codes, training's integer scale grid on one-pixel, small
and 7 x 7 maps, the one-pixel digit plan, the largest codes, several sample blocks), the
input-gradient GEMM on each tile engine, the one-pixel route's byte transpose, and the entry
points' refusals. The int engine that runs on them against the torch engine: test_engine.py.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dorefa import kernels as K
from dorefa.kernels import reference_grad as R
from dorefa.kernels import training as T
from kernel_cases import KERNELS

TRIPLES = [(1, 2, 6), (1, 1, 4), (2, 2, 6), (1, 4, 8)]
# (N, C, H, W, O, K, stride, padding): odd sizes, strides 1-3, padding beyond K - 1
GEOMETRIES = [
    (2, 5, 9, 9, 7, 3, 1, 1),
    (3, 33, 7, 6, 9, 3, 2, 1),
    (1, 7, 11, 11, 4, 5, 2, 0),
    (2, 3, 8, 8, 5, 3, 3, 4),
    (3, 64, 1, 1, 17, 1, 1, 0),
    (1, 16, 5, 5, 65, 5, 1, 0),
    (2, 6, 2, 2, 13, 3, 3, 1),
    (2, 20, 7, 7, 35, 3, 1, 0),
    (1, 3, 3, 3, 600, 3, 1, 0),  # one pixel, O > 2 x 257: the column sums' blocks
]
BIT_TRIPLES = TRIPLES + [(8, 8, 8), (3, 1, 2), (4, 3, 1)]


def _operands(geometry, bits, seed):
    n, c, h, w, o, k, stride, padding = geometry
    wb, ab, gb = bits
    rng = np.random.default_rng(seed)
    oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    g = rng.integers(0, 1 << gb, (n, o, oh, ow), dtype=np.uint8)
    wc = rng.integers(0, 1 << wb, (o, c, k, k), dtype=np.uint8)
    a = rng.integers(0, 1 << ab, (n, c, h, w), dtype=np.uint8)
    m = rng.random(n).astype(np.float32)
    return g, m, wc, a


# ------------------------------------------------------------- entry points == spec, every kernel
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("bits", BIT_TRIPLES)
def test_backward_products_equal_the_spec_on_every_kernel(kernel, geometry, bits):
    n, c, h, w, o, k, stride, padding = geometry
    wb, ab, gb = bits
    g, m, wc, a = _operands(geometry, bits, seed=sum(geometry) + sum(bits))
    want_d = R.conv_input_grad_codes(g, m, gb, wc, 0.25, wb, stride, padding, (h, w))
    want_s = R.conv_weight_grad_codes(g, m, gb, a, ab, stride, padding, (k, k))
    with K.use_kernel(kernel):
        d = T.input_grad_codes(g, gb, wc, wb, stride, padding, (h, w))
        s = T.weight_grad_codes(g, gb, a, ab, stride, padding, (k, k))
        dx = T.conv_input_grad(g, m, gb, wc, 0.25, wb, stride, padding, (h, w))
        dw = T.conv_weight_grad(g, m, gb, a, ab, stride, padding, (k, k))
        dw_drop = T.conv_weight_grad(g, m, gb, a, ab, stride, padding, (k, k), factor=1 / 0.7)
    assert np.array_equal(d, want_d.d) and np.array_equal(s, want_s.s)
    assert np.array_equal(dx, R.input_grad_float(want_d).astype(np.float32))
    assert np.array_equal(dw, R.weight_grad_float(want_s).astype(np.float32))
    drop = R.conv_weight_grad_codes(g, m, gb, a, ab, stride, padding, (k, k), factor=1 / 0.7)
    assert np.array_equal(dw_drop, R.weight_grad_float(drop).astype(np.float32))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 70),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    o=st.integers(1, 20),
    k=st.sampled_from([1, 2, 3, 5]),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
    bits=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes(n, c, hw, o, k, stride, padding, bits, seed):
    h, w = hw
    if h + 2 * padding < k or w + 2 * padding < k:
        return  # no output pixel
    geometry = (n, c, h, w, o, k, stride, padding)
    g, m, wc, a = _operands(geometry, bits, seed)
    want_d = R.conv_input_grad_codes(g, m, bits[2], wc, 1.0, bits[0], stride, padding, (h, w))
    want_s = R.conv_weight_grad_codes(g, m, bits[2], a, bits[1], stride, padding, (k, k))
    assert np.array_equal(T.input_grad_codes(g, bits[2], wc, bits[0], stride, padding, (h, w)),
                          want_d.d)  # fmt: skip
    assert np.array_equal(T.weight_grad_codes(g, bits[2], a, bits[1], stride, padding, (k, k)),
                          want_s.s)  # fmt: skip


WGRAD = K._native.wgrad_kernels() if K._native is not None else []


@pytest.mark.parametrize("name", WGRAD)
@pytest.mark.parametrize(
    "geometry",
    GEOMETRIES
    + [(20, 5, 9, 9, 7, 3, 1, 1), (100, 3, 18, 18, 5, 3, 1, 1), (2, 36, 6, 5, 18, 2, 1, 1)]
    + [(3, 17, 9, 9, 20, 3, 1, 0), (3, 20, 9, 9, 40, 5, 1, 2), (2, 5, 10, 10, 20, 7, 1, 3)]
    + [(4, 33, 6, 6, 17, 1, 1, 0)]
    # size-keeping padding (input rows as wide as the output's): strip planes of 2 masked steps
    # with rows across the step boundary, and one past the masked route's 16 steps; unpadded
    # rows of 8 bytes (8-byte copies) and of 9 (row by row)
    + [(2, 4, 13, 6, 5, 3, 1, 1), (2, 3, 5, 11, 6, 5, 1, 2), (1, 3, 41, 40, 5, 3, 1, 1)]
    + [(2, 3, 10, 10, 4, 3, 1, 0), (2, 3, 11, 11, 4, 3, 1, 0)],
)
@pytest.mark.parametrize("bits", [(1, 2, 6), (8, 8, 8), (1, 7, 8), (1, 8, 6), (1, 8, 7), (1, 1, 1)])
def test_every_weight_grad_kernel_equals_the_spec(name, geometry, bits):
    """Each native weight-gradient kernel by name, both outputs (per-sample S, scaled batch
    sum), any thread count; training's integer scales (reference_grad.grid_scales), fractional
    float32 values (exact terms, the FMA paths may run) and scales with all 53 bits (multiply,
    then add). The bit triples take
    every route: the direct kernels (G <= 7; AVX2 only while 2 n_g n_a <= 32767, so (1,8,7)
    goes to its packed path), the packed path (G = 8), AVX2's portable fallback (G = 8 with
    A = 8); 20 samples span several of `wgrad-avx2`'s direct batch blocks (4 KiB), 100
    samples of an 18 x 18 map those of every direct kernel (518 KB of packed gradients against
    `wgrad-vnni`'s 256 KiB blocks); `wgrad-amx`'s tiles take 36 channels (a
    partial group of 16), an even kernel width and 18 output channels (a partial vector), and
    its small-map strip packer input planes of 30, 49 and 81 bytes; 1x1, 5x5 and 7x7 kernels
    (items of 4, 2 and 1 channel vectors)."""
    n, c, h, w, o, k, stride, padding = geometry
    g, m, _, a = _operands(geometry, bits, seed=7)
    want = R.conv_weight_grad_codes(g, m, bits[2], a, bits[1], stride, padding, (k, k))
    wide = want.scale * (1 + 2.0**-40) + 2.0**-30
    assert not np.array_equal(wide.astype(np.float32), wide)
    for threads in (1, 2, 3):
        s = K._native.weight_grad(name, g, a, bits[2], bits[1], k, k, stride, padding, threads)
        assert np.array_equal(s.reshape(want.s.shape), want.s)
        for scale in (want.scale, m.astype(np.float64), wide):
            dw = K._native.weight_grad(
                name, g, a, bits[2], bits[1], k, k, stride, padding, threads, scale
            )
            assert np.array_equal(dw.reshape(o, c, k, k), R.scaled_batch_sum(scale, want.s))


# one output pixel: (N, C, H, W, O, K, stride, padding), sizes off the digit tile's 4 samples,
# 4 channels and 32 columns; a padded window (the gathered columns); 130 samples
ONE_PIXEL = [
    (1, 1, 1, 1, 1, 1, 1, 0),
    (5, 3, 5, 5, 17, 5, 1, 0),
    (13, 40, 1, 1, 70, 1, 1, 0),
    (6, 7, 3, 3, 9, 5, 1, 1),
    (130, 33, 2, 2, 35, 2, 1, 0),
]


def _check_on_scale_grid(name, geometry, bits, codes, plan_check=None):
    """The weight gradient on training's integer scales equals the spec's float64 batch-order
    sum bit for bit at 1-3 threads, with a zero scale (when N > 1) and the largest (Q);
    "extreme": every gradient code at 0 or n_g, every activation at n_a, and scales whose
    digits are all beta - 1 (the largest digit products and sums), then every scale Q."""
    n, c, h, w, o, k, stride, padding = geometry
    _, ab, gb = bits
    g, m, _, a = _operands(geometry, bits, seed=11 + n)
    if n > 1:
        m[0] = 0.0
    want = R.conv_weight_grad_codes(g, m, gb, a, ab, stride, padding, (k, k))
    assert want.scale.max() == R.GRID and (n == 1 or want.scale[0] == 0)
    scales = [want.scale]
    if codes == "extreme":
        g[:] = np.where(np.arange(o) % 3 == 0, 0, (1 << gb) - 1)[None, :, None, None]
        a[:] = (1 << ab) - 1
        want = R.conv_weight_grad_codes(g, m, gb, a, ab, stride, padding, (k, k))
        beta = 255 // ((1 << ab) - 1) + 1
        top = beta ** int(np.floor(np.log(R.GRID) / np.log(beta))) - 1  # digits beta - 1
        scales = [np.resize([top, R.GRID, 0.0, top], n).astype(np.float64), np.full(n, R.GRID)]
    for scale in scales:
        if plan_check is not None:
            plan_check(scale)
        for threads in (1, 2, 3):
            args = (name, g, a, gb, ab, k, k, stride, padding, threads, scale)
            dw = K._native.weight_grad(*args)
            assert np.array_equal(dw.reshape(o, c, k, k), R.scaled_batch_sum(scale, want.s))
            dw32 = K._native.weight_grad(*args, want.divisor)
            want32 = (R.scaled_batch_sum(scale, want.s) / want.divisor).astype(np.float32)
            assert np.array_equal(dw32.reshape(o, c, k, k), want32)


@pytest.mark.parametrize("name", WGRAD)
@pytest.mark.parametrize("geometry", ONE_PIXEL)
@pytest.mark.parametrize(
    "bits", [(1, 1, 6), (1, 2, 6), (1, 3, 7), (1, 4, 6), (1, 5, 6), (1, 2, 1), (1, 8, 7), (1, 2, 8)]
)
@pytest.mark.parametrize("codes", ["random", "extreme"])
def test_one_pixel_weight_grad_on_the_scale_grid(name, geometry, bits, codes):
    """One output pixel, where `wgrad-vnni` (and `wgrad-amx`) sum the batch by the scales'
    digits in int8 multiply-adds (wgrad_digits.h: A = 1..4 take 3..6 digits, checked by its
    plan; A >= 5 and G = 8 other routes); see _check_on_scale_grid."""
    _, ab, gb = bits

    def plan_check(scale):
        digits, _ = K._native.wgrad_digit_plan(gb, ab, scale)
        assert (digits > 0) == (ab <= 4 and gb <= 7), (digits, bits)

    _check_on_scale_grid(name, geometry, bits, codes, plan_check)


# small maps: (N, C, H, W, O, K, stride, padding) with 4, 16 and 25 output pixels, where
# `wgrad-amx` sums the batch and the map together by the scales' digits (its tile steps span
# samples; 2 x 2 maps are below its per-sample route's smallest)
SMALL_MAPS = [(5, 3, 3, 3, 17, 2, 1, 0), (40, 17, 4, 4, 33, 3, 1, 1), (9, 20, 7, 7, 35, 3, 1, 0)]
SMALL_MAPS += [(9, 16, 7, 7, 20, 3, 1, 0)]  # 144 columns: a last tile pair of one 16-column tile


@pytest.mark.parametrize("name", WGRAD)
@pytest.mark.parametrize("geometry", SMALL_MAPS)
@pytest.mark.parametrize("bits", [(1, 1, 6), (1, 2, 6), (1, 3, 7), (1, 4, 6), (1, 2, 1)])
@pytest.mark.parametrize("codes", ["random", "extreme"])
def test_small_map_weight_grad_on_the_scale_grid(name, geometry, bits, codes):
    """Small maps on training's integer scales (see _check_on_scale_grid)."""
    _check_on_scale_grid(name, geometry, bits, codes)


# 7 x 7 maps on the scale grid, where `wgrad-amx`'s per-sample route sums two samples at a
# time in int32 (q = 4096 q_hi + q_lo, |S| < 2^15) and moves the sums to float64 every
# (2^31 - 1) // (2 * 4095 * P n_g n_a) pairs: at (1, 2, 7), 14 pairs, so 41 samples flush
# twice within a block and end on an odd sample; the extreme codes put S at its bound.
@pytest.mark.parametrize("name", WGRAD)
@pytest.mark.parametrize("geometry", [(41, 16, 7, 7, 32, 3, 1, 1), (30, 20, 9, 9, 18, 3, 1, 0)])
@pytest.mark.parametrize("bits", [(1, 2, 7), (1, 2, 6), (1, 4, 5)])
@pytest.mark.parametrize("codes", ["random", "extreme"])
def test_seven_by_seven_weight_grad_on_the_scale_grid(name, geometry, bits, codes):
    """See _check_on_scale_grid."""
    _check_on_scale_grid(name, geometry, bits, codes)


def test_digit_plan():
    """The one-pixel digit route's plan: digits of base floor(255 / n_a) + 1 covering the
    largest scale, refused for fractional, negative, too large or NaN scales, G = 8, more than
    6 digits and batches whose digit sums could pass int32."""
    q = np.array([R.GRID, 5.0, 0.0])
    plans = [K._native.wgrad_digit_plan(6, a, q) for a in (1, 2, 3, 4)]
    assert plans == [(3, 256), (4, 86), (5, 37), (6, 18)]
    assert K._native.wgrad_digit_plan(6, 2, np.array([85.0, 0.0])) == (1, 86)
    assert K._native.wgrad_digit_plan(6, 2, np.array([86.0])) == (2, 86)
    for bad in ([0.5], [-1.0], [2.0**24], [np.nan]):
        assert K._native.wgrad_digit_plan(6, 2, np.array(bad)) == (0, 0)
    assert K._native.wgrad_digit_plan(8, 2, q) == (0, 0)  # n_g = 255: not an int8 factor
    assert K._native.wgrad_digit_plan(6, 5, q) == (0, 0)  # 11 digits
    fits = 2**31 // (63 * 255)  # N n_g 255 < 2^31: T_j within int32 (and then N Q n_g n_a < 2^53)
    assert K._native.wgrad_digit_plan(6, 2, np.full(fits, 1.0)) == (1, 86)
    assert K._native.wgrad_digit_plan(6, 2, np.full(fits + 1, 1.0)) == (0, 0)


def test_scale_grid_edges():
    """grid_scales: the largest scale on Q, zero scales at 0, a NaN or inf anywhere makes every
    scale NaN (so every dW is NaN), an all-zero batch gives zeros."""
    m = np.array([0.5, 0.25, 0.0, 1e-30], np.float32)
    q, divisor = R.grid_scales(m, 63, 3)
    assert q.tolist() == [R.GRID, np.rint(R.GRID / 2), 0.0, 0.0]
    assert divisor == 63 * 3 * R.GRID / 0.5
    for bad in (np.nan, np.inf):
        q, _ = R.grid_scales(np.array([1.0, bad], np.float32), 63, 3)
        assert np.isnan(q).all()
    q, divisor = R.grid_scales(np.zeros(3, np.float32), 63, 3, factor=2.0)
    assert not q.any() and divisor == 63 * 3 / 2.0


@pytest.mark.parametrize("name", WGRAD)
@pytest.mark.parametrize("bits", [(1, 2, 6), (1, 8, 6), (1, 7, 8), (1, 1, 1), (1, 4, 4)])
@pytest.mark.parametrize("x_code", ["max", "zero"])
def test_weight_grad_extreme_codes_on_a_large_map(name, bits, x_code):
    """Every gradient code at n_g and every activation at n_a (or 0) over 30 x 30 = 900 output
    pixels (225 pixel quads, 18 channels): the largest sums the kernels' narrow accumulators
    see (AVX2 adds up to 32767 / (2 n_g max|x - z|) quads in int16 before widening)."""
    _, ab, gb = bits
    geometry = (2, 3, 30, 30, 18, 3, 1, 1)
    g, m, _, a = _operands(geometry, bits, seed=3)
    g[:] = (1 << gb) - 1
    a[:] = (1 << ab) - 1 if x_code == "max" else 0
    want = R.conv_weight_grad_codes(g, m, gb, a, ab, 1, 1, (3, 3))
    for threads in (1, 2):
        s = K._native.weight_grad(name, g, a, gb, ab, 3, 3, 1, 1, threads)
        assert np.array_equal(s.reshape(want.s.shape), want.s)
        dw = K._native.weight_grad(name, g, a, gb, ab, 3, 3, 1, 1, threads, want.scale)
        assert np.array_equal(dw.reshape(18, 3, 3, 3), R.scaled_batch_sum(want.scale, want.s))


@pytest.mark.parametrize("name", WGRAD)
def test_weight_grad_over_several_sample_blocks(name):
    """A layer whose packed operands (111 KB a sample) span two of `wgrad-amx`'s 1 MB blocks of
    samples (9 + 3): the sums and the scaled batch sum equal the spec at 1 and 2 threads."""
    geometry, bits = (12, 64, 20, 20, 64, 3, 1, 1), (1, 2, 6)
    g, m, _, a = _operands(geometry, bits, seed=5)
    want = R.conv_weight_grad_codes(g, m, 6, a, 2, 1, 1, (3, 3))
    for threads in (1, 2):
        s = K._native.weight_grad(name, g, a, 6, 2, 3, 3, 1, 1, threads)
        assert np.array_equal(s.reshape(want.s.shape), want.s)
        dw = K._native.weight_grad(name, g, a, 6, 2, 3, 3, 1, 1, threads, want.scale)
        assert np.array_equal(dw.reshape(64, 64, 3, 3), R.scaled_batch_sum(want.scale, want.s))


@pytest.mark.skipif(not WGRAD, reason="needs the compiled kernels")
def test_weight_grad_kernel_follows_the_kernel_in_force():
    """Unforced: the fastest (the table's first); `int8-amx` forced: `wgrad-amx`; any other
    kernel: the native weight-gradient kernel of its ISA (wgrad-vnni for the avx512 ones where
    the CPU has VNNI); `reference`: the spec."""
    from dorefa.kernels.selection import backend_of

    assert T.weight_grad_kernel() == WGRAD[0]
    for kernel in K.available_kernels():
        with K.use_kernel(kernel):
            name = T.weight_grad_kernel()
        if kernel == "reference":
            assert name == "reference"
        elif kernel == "int8-amx" and "wgrad-amx" in WGRAD:
            assert name == "wgrad-amx"
        else:
            first = {"avx512": "wgrad-vnni", "avx2": "wgrad-avx2", "scalar": "wgrad-scalar"}
            ranked = ["wgrad-vnni", "wgrad-avx2", "wgrad-scalar"]
            want = ranked[ranked.index(first[backend_of(kernel)]) :]
            assert name == next(n for n in want if n in WGRAD), (kernel, name)


@pytest.mark.skipif(not WGRAD, reason="needs the compiled kernels")
def test_weight_grad_kernel_refuses_bad_input():
    g, _, _, a = _operands((2, 3, 6, 6, 4, 3, 1, 1), (1, 2, 4), 0)
    native = K._native
    with pytest.raises(ValueError, match="c holds code 15 >= 2\\*\\*2"):
        native.weight_grad("wgrad-scalar", g | 8, a, 2, 2, 3, 3, 1, 1, 1)
    with pytest.raises(ValueError, match="not the convolution's output shape"):
        native.weight_grad("wgrad-scalar", g, a, 4, 2, 3, 3, 2, 1, 1)
    with pytest.raises(ValueError, match="not available on this CPU"):
        native.weight_grad("wgrad-neon", g, a, 4, 2, 3, 3, 1, 1, 1)
    with pytest.raises(ValueError, match="scale must be"):
        native.weight_grad("wgrad-scalar", g, a, 4, 2, 3, 3, 1, 1, 1, np.ones(3))


@pytest.mark.skipif(not WGRAD, reason="needs the compiled kernels")
def _gemm_engines():
    """The input-gradient GEMM's tile engines this CPU runs ([] without VNNI)."""
    if K._native is None:
        return []
    g, _, wc, _ = _operands((2, 3, 6, 6, 4, 3, 1, 1), (1, 2, 4), 0)
    fits = {amx: K._native.input_grad_gemm_fits(g, wc, 4, 1, 1, 1, 6, 6, amx=amx) for amx in (0, 1)}
    return [name for amx, name in ((False, "vnni"), (True, "amx")) if fits[amx]]


@pytest.mark.parametrize("engine", _gemm_engines())
@pytest.mark.parametrize(
    "geometry",
    [geo for geo in GEOMETRIES if geo[2] * geo[3] > 1]
    + [(3, 40, 9, 9, 70, 3, 1, 0), (2, 17, 12, 12, 130, 3, 2, 1), (2, 64, 7, 7, 64, 3, 1, 0)],
)
@pytest.mark.parametrize("bits", [(1, 2, 6), (7, 2, 8), (3, 2, 1)])
def test_input_grad_gemm_equals_the_spec(engine, geometry, bits):
    """The GEMM on each tile engine (`igrad-vnni`; `igrad-amx`, whose steps are 64 output
    channels: O of 70 and 130 pad its weight rows; 40 and 17 input channels leave a single
    16-channel group; 49 pixels a partial strip pair): K1, K2 and the fused finish equal the
    spec at 1 and 3 threads, valid, padded and strided."""
    n, c, h, w, o, k, stride, padding = geometry
    g, m, wc, _ = _operands(geometry, bits, seed=13)
    want = R.conv_input_grad_codes(g, m, bits[2], wc, 1.0, bits[0], stride, padding, (h, w))
    ng = (1 << bits[2]) - 1
    scale = np.linspace(0.5, 2.0, n)
    for threads in (1, 3):
        args = (g, wc, bits[2], bits[0], stride, padding, h, w, threads)
        k1, k2 = K._native.input_grad_gemm(*args, amx=engine == "amx")
        d = 2 * k1.astype(np.int64) - ng * k2.astype(np.int64)
        assert np.array_equal(d, want.d)
        dx = K._native.input_grad_gemm(*args, scale=scale, amx=engine == "amx")
        want_dx = (scale[:, None, None, None] * d.astype(np.float64)).astype(np.float32)
        assert np.array_equal(dx, want_dx)


def test_input_grad_gemm_refuses_bad_input():
    """The GEMM's checks; where the CPU lacks VNNI (or W = 8) it says so instead of running."""
    g, _, wc, _ = _operands((2, 3, 6, 6, 4, 3, 1, 1), (1, 2, 4), 0)
    native = K._native
    assert not native.input_grad_gemm_fits(g, wc, 4, 8, 1, 1, 6, 6)  # 2p - 255 is not an int8
    with pytest.raises(ValueError, match="c and w_codes must have the same O"):
        native.input_grad_gemm(g, wc[:3], 4, 1, 1, 1, 6, 6, 1)
    with pytest.raises(ValueError, match="not the convolution's output shape"):
        native.input_grad_gemm(g, wc, 4, 1, 2, 1, 6, 6, 1)
    if not native.input_grad_gemm_fits(g, wc, 4, 1, 1, 1, 6, 6):
        with pytest.raises(ValueError, match="needs AVX-512 VNNI"):
            native.input_grad_gemm(g, wc, 4, 1, 1, 1, 6, 6, 1)
        return
    with pytest.raises(ValueError, match="c holds code 15 >= 2\\*\\*2"):
        native.input_grad_gemm(g | 8, wc, 2, 1, 1, 1, 6, 6, 1)
    with pytest.raises(ValueError, match="w_codes holds code 2 >= 2\\*\\*1"):
        native.input_grad_gemm(g, wc + 1, 4, 1, 1, 1, 6, 6, 1)
    with pytest.raises(ValueError, match="scale must be"):
        native.input_grad_gemm(g, wc, 4, 1, 1, 1, 6, 6, 1, scale=np.ones(3))


TRANSPOSE_SHAPES = [(1, 1), (1, 40), (40, 1), (16, 16), (15, 17), (33, 70), (512, 48), (700, 1100)]


@pytest.mark.parametrize("shape", TRANSPOSE_SHAPES)
def test_transpose_codes_is_the_transpose(shape):
    """The native byte transpose of the one-pixel input-gradient route: 16 x 16 blocks and the
    edges, every element where numpy's transpose puts it."""
    a = np.random.default_rng(shape[0] * 100 + shape[1]).integers(0, 256, shape, dtype=np.uint8)
    t = K._native.transpose_codes(a)
    assert t.flags.c_contiguous
    np.testing.assert_array_equal(t, a.T)
    with pytest.raises(ValueError, match="2-D uint8"):
        K._native.transpose_codes(a.reshape(1, *shape))


def test_one_pixel_input_grad_with_the_largest_weight_codes():
    """The one-pixel route sums the weights' columns in blocks of 257 rows in uint16: 600
    output channels of code 255 (w_bits 8) cross two block boundaries at the largest sums."""
    g = np.random.default_rng(7).integers(0, 16, (2, 600, 1, 1), dtype=np.uint8)
    wc = np.full((600, 2, 3, 3), 255, np.uint8)
    want = R.conv_input_grad_codes(g, np.ones(2, np.float32), 4, wc, 1.0, 8, 1, 0, (3, 3))
    assert np.array_equal(T.input_grad_codes(g, 4, wc, 8, 1, 0, (3, 3)), want.d)


def test_entry_points_refuse_a_wrong_geometry():
    g, m, wc, a = _operands((1, 3, 6, 6, 2, 3, 1, 1), (1, 2, 4), 0)
    with pytest.raises(ValueError, match="pass the forward input's"):
        T.input_grad_codes(g, 4, wc, 1, 1, 0, (6, 6))
    with pytest.raises(ValueError, match="pass the forward input's"):
        T.weight_grad_codes(g, 4, a[:, :, :5], 2, 1, 1, (3, 3))


@pytest.mark.parametrize("kernel", KERNELS)
def test_entry_points_refuse_codes_they_would_cast(kernel):
    """Codes of another dtype are refused as the spec refuses them (a cast had made code 256
    into 0, -1 into 255 and activation 1.9 into 1)."""
    g, m, wc, a = _operands((1, 3, 6, 6, 2, 3, 1, 1), (1, 2, 4), 0)
    with K.use_kernel(kernel):
        for bad in (g.astype(np.int64) + 256, g.astype(np.int8) - 1):
            with pytest.raises(TypeError, match="c must have dtype uint8"):
                T.input_grad_codes(bad, 4, wc, 1, 1, 1, (6, 6))
            with pytest.raises(TypeError, match="c must have dtype uint8"):
                T.weight_grad_codes(bad, 4, a, 2, 1, 1, (3, 3))
        with pytest.raises(TypeError, match="w_codes must have dtype uint8"):
            T.input_grad_codes(g, 4, wc.astype(np.int32), 1, 1, 1, (6, 6))
        with pytest.raises(TypeError, match="a_codes must have dtype uint8"):
            T.weight_grad_codes(g, 4, a.astype(np.float32) + 0.9, 2, 1, 1, (3, 3))


def test_input_grad_errors_name_its_own_arguments():
    """Found by a review: out-of-range gradient codes and a channel mismatch were reported as
    "x_codes ..." (the forward kernel's name for what it was handed)."""
    g, m, wc, a = _operands((1, 3, 6, 6, 2, 3, 1, 1), (1, 2, 4), 0)
    with pytest.raises(ValueError, match=r"c holds code \d+ >= 2\*\*4"):
        T.input_grad_codes(g + 16, 4, wc, 1, 1, 1, (6, 6))
    with pytest.raises(ValueError, match="c has 1 channels but w_codes 2 outputs"):
        T.conv_input_grad(g[:, :1], m, 4, wc, 0.5, 1, 1, 1, (6, 6))


def test_entry_points_refuse_a_zero_stride_and_factor():
    g, m, wc, a = _operands((1, 3, 6, 6, 2, 3, 1, 1), (1, 2, 4), 0)
    with pytest.raises(ValueError, match="stride must be an int in 1..[0-9]+, got 0"):
        T.input_grad_codes(g, 4, wc, 1, 0, 1, (6, 6))
    for factor in (0.0, float("inf"), -1.0):
        with pytest.raises(ValueError, match="factor must be finite and > 0"):
            R.grid_scales(m, 15, 3, factor)


@pytest.mark.parametrize("kernel", [None, *KERNELS])
def test_a_scale_per_sample_is_asked_for_by_name(kernel):
    """m of another length than the batch was reported as the internal 'scale must be (N,)
    float64'."""
    g, m, wc, a = _operands((2, 3, 6, 6, 2, 3, 1, 1), (1, 2, 4), 0)
    want = r"m must hold one gradient scale per sample of c: shape \(2,\), got "
    with K.use_kernel(kernel) if kernel else contextlib.nullcontext():
        for bad in (m[:1], np.concatenate([m, m]), 1.0):
            with pytest.raises(ValueError, match=want):
                T.conv_input_grad(g, bad, 4, wc, 0.5, 1, 1, 1, (6, 6))
            with pytest.raises(ValueError, match=want):
                T.conv_weight_grad(g, bad, 4, a, 2, 1, 1, (3, 3))


@pytest.mark.parametrize("kernel", [None, *KERNELS])
def test_an_empty_batch_gives_empty_sums_on_every_route(kernel):
    """N = 0 had raised on the GEMM routes and given empty sums on the convolution route."""
    g, m, wc, a = _operands((1, 3, 6, 6, 2, 3, 1, 1), (1, 2, 4), 0)
    g0, a0 = g[:0], a[:0]
    want_d = R.conv_input_grad_codes(g0, np.ones(0, np.float32), 4, wc, 1.0, 1, 1, 1, (6, 6)).d
    want_s = R.conv_weight_grad_codes(g0, np.ones(0, np.float32), 4, a0, 2, 1, 1, (3, 3)).s
    with K.use_kernel(kernel) if kernel else contextlib.nullcontext():
        d = T.input_grad_codes(g0, 4, wc, 1, 1, 1, (6, 6))
        s = T.weight_grad_codes(g0, 4, a0, 2, 1, 1, (3, 3))
    assert d.shape == want_d.shape == (0, 3, 6, 6) and s.shape == want_s.shape


@pytest.mark.parametrize("kernel", [None, *KERNELS])
def test_input_grad_past_int32_takes_the_spec_with_a_warning(kernel):
    """Found by a hostile review: 4096 output channels of 3x3 at G = W = 8 were refused
    ("may pass int32; use the reference kernel"), and the reference kernel refused them too.
    The spec (int64) computes them, with a warning, as the weight gradient does."""
    g = np.full((1, 4096, 3, 3), 255, np.uint8)
    wc = np.full((4096, 1, 3, 3), 255, np.uint8)
    m = np.array([0.5], np.float32)
    want = R.conv_input_grad_codes(g, m, 8, wc, 0.01, 8, 1, 1, (3, 3))
    assert want.d.max() > 2**31  # past int32 indeed
    with K.use_kernel(kernel) if kernel else contextlib.nullcontext():
        with pytest.warns(RuntimeWarning, match="sums may pass int32, computed by the NumPy"):
            d = T.input_grad_codes(g, 8, wc, 8, 1, 1, (3, 3))
        with pytest.warns(RuntimeWarning, match="sums may pass int32"):
            dx = T.conv_input_grad(g, m, 8, wc, 0.01, 8, 1, 1, (3, 3))
    assert np.array_equal(d, want.d)
    assert np.array_equal(dx, R.input_grad_float(want).astype(np.float32))
