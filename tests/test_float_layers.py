"""The float layers of the runtime on every kernel of the table: the fused first layer (conv ->
pool -> f_a codes, exact against the NumPy spec, including codes at the rounding steps and
inputs without an error bound), its float-output form, the float linear layer and the float
max-pool. No torch here (bit convolutions: test_kernels.py; the float stream's element-wise
operations: test_stream_ops.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dorefa import kernels as K
from dorefa.kernels import reference as R
from dorefa.kernels.selection import backend_of
from kernel_cases import (
    KERNELS,
    NATIVE,
    direct_float64,
    fresh_process,
)

# (N, C, H, W, O, K, stride, padding, pool, bits)
FLOAT_SHAPES = [
    (1, 1, 40, 40, 48, 5, 1, 0, 2, 2),
    (2, 3, 9, 11, 5, 3, 1, 1, 2, 1),
    (1, 2, 7, 37, 3, 5, 1, 2, 3, 4),
    (3, 1, 6, 5, 4, 3, 2, 1, 1, 8),
    (1, 1, 3, 3, 1, 3, 1, 0, 1, 2),
    (1, 1, 12, 12, 57, 5, 1, 0, 2, 2),
    (1, 4, 8, 8, 100, 1, 2, 0, 1, 3),
    (1, 3, 22, 22, 96, 6, 4, 0, 1, 2),  # AlexNet's first layer in small: one group of 6 zmm
    (2, 1, 11, 14, 200, 3, 1, 1, 1, 8),  # 13 zmm: groups of 5, 5, 3
    (2, 2, 13, 15, 20, 3, 2, 1, 2, 8),  # pairs of 2 x 2 windows at stride 2, 2 zmm
    # Winograd codes (conv_float_winograd.h): F(2x2, 3x3) over 16 C phases (AlexNet's 12x12/4
    # and kernels 9-11 with partial phase kernels, odd output sizes, tile rows of several
    # 16-tile blocks), F(2x2, 4x4) over 4 C phases (7x7/2 and 8x8/2)
    (2, 3, 71, 83, 96, 12, 4, 0, 1, 2),
    (1, 2, 40, 37, 33, 9, 4, 1, 1, 8),
    (3, 1, 27, 30, 17, 11, 4, 2, 1, 1),
    (1, 3, 30, 31, 20, 7, 2, 3, 1, 4),
    (2, 1, 19, 24, 9, 8, 2, 0, 1, 2),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", FLOAT_SHAPES, ids=str)
def test_conv_float_quantize(kernel, shape):
    n, c, h, w, o, k, s, p, pool, bits = shape
    rng = np.random.default_rng(list(shape))
    x = rng.random((n, c, h, w), dtype=np.float32)
    wt = (rng.standard_normal((o, c, k, k)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(o) * 0.3 + 0.3).astype(np.float32)
    expected = R.conv_float_quantize(x, wt, b, s, p, pool, bits)
    # an independent check of the reference: float64 conv, pool, bias, quantize
    y = direct_float64(x, wt, s, p).astype(np.float32)
    ph, pw_ = y.shape[2] // pool, y.shape[3] // pool
    y = y[:, :, : ph * pool, : pw_ * pool].reshape(n, o, ph, pool, pw_, pool).max(axis=(3, 5))
    z = np.clip(y + b[None, :, None, None], 0, 1) * np.float32((1 << bits) - 1)
    assert np.abs(expected.astype(np.int64) - np.rint(z)).max() <= 1
    with K.use_kernel(kernel):
        got = K.conv_float_quantize(x, wt, b, s, p, pool, bits, threads=2)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", FLOAT_SHAPES + [(2, 3, 23, 23, 64, 7, 2, 3, 1, 1)], ids=str)
def test_conv_float_output(kernel, shape):
    """The float-output first layer (ResNet's stem) against the float64 reference: the vector
    paths sum the taps in float32, so within (taps + 2) * 2**-24 * (sum |w x| + |b|)."""
    n, c, h, w, o, k, s, p = shape[:8]
    rng = np.random.default_rng(list(shape))
    x = (rng.random((n, c, h, w), dtype=np.float32) - 0.3).astype(np.float32)
    wt = (rng.standard_normal((o, c, k, k)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(o) * 0.3).astype(np.float32)
    expected = R.conv_float(x, wt, b, s, p)
    np.testing.assert_allclose(expected, direct_float64(x, wt, s, p) + b[:, None, None], atol=1e-5)
    bound = direct_float64(np.abs(x), np.abs(wt), s, p) + np.abs(b)[:, None, None]
    with K.use_kernel(kernel):
        got = K.conv_float(x, wt, b, s, p, threads=2)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.all(np.abs(got - expected) <= (c * k * k + 2) * 2.0**-24 * bound)


@pytest.mark.parametrize(
    "shape", [(1, 3, 23, 23, 64, 7, 2, 3), (2, 2, 9, 11, 70, 3, 1, 1)], ids=str
)
def test_conv_float_output_same_bits_on_vector_paths(shape):
    """The float-output vector paths (ymm on AVX2, zmm on AVX-512) run each output's float32 FMAs
    over the taps in the same order: the same bits, at any thread count (outputs in runs of 1-4
    pixels, 70 channels = a full and a partial group of either width)."""
    n, c, h, w, o, k, s, p = shape
    rng = np.random.default_rng(list(shape))
    x = (rng.random((n, c, h, w), dtype=np.float32) - 0.3).astype(np.float32)
    wt = (rng.standard_normal((o, c, k, k)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(o) * 0.3).astype(np.float32)
    vector = [k for k in NATIVE if not k.startswith("popcount-scalar")]
    outs = {}
    for kernel in vector:
        with K.use_kernel(kernel):
            outs[kernel] = [K.conv_float(x, wt, b, s, p, threads=t) for t in (1, 2)]
    for kernel, (one, two) in outs.items():
        np.testing.assert_array_equal(one.view(np.uint32), two.view(np.uint32), err_msg=kernel)
        first = outs[vector[0]][0]
        np.testing.assert_array_equal(one.view(np.uint32), first.view(np.uint32), err_msg=kernel)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(1, 512, 10), (3, 37, 5), (8, 8, 1), (5, 1, 9), (2, 300, 7)])
def test_linear_float(kernel, shape):
    """The runtime's float linear layer: every native path gives the same bits (one summation
    order, csrc/linear_float.h) at any thread count, within (C + 3) 2**-24 (sum |x w| + |b|) of
    the float64 reference."""
    n, c, o = shape
    rng = np.random.default_rng(list(shape))
    x = rng.standard_normal((n, c)).astype(np.float32)
    w = rng.standard_normal((o, c)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    expected = R.linear_float(x, w, b)
    bound = (c + 3) * 2.0**-24 * (np.abs(x) @ np.abs(w).T + np.abs(b))
    with K.use_kernel("scalar"):
        portable = K.linear_float(x, w, b)
    with K.use_kernel(kernel):
        for threads in (1, 2, 3):
            got = K.linear_float(x, w, b, threads)
            assert got.dtype == np.float32 and got.shape == (n, o)
            assert np.all(np.abs(got - expected) <= bound)
            if kernel != "reference":
                np.testing.assert_array_equal(got, portable)


@pytest.mark.parametrize("c", [9, 17])
def test_linear_float_keeps_negative_zero(c):
    """Products that all underflow to -0.0 and a -0.0 bias give -0.0 on every native path
    (the vector path's lanes past C must not turn a -0.0 partial sum into +0.0)."""
    x = np.full((1, c), 1e-30, np.float32)
    w = np.full((1, c), -1e-30, np.float32)
    b = np.array([-0.0], np.float32)
    for kernel in (k for k in KERNELS if k != "reference"):
        with K.use_kernel(kernel):
            assert np.signbit(K.linear_float(x, w, b)[0, 0]), kernel


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("geom", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2), (1, 1, 0)])
def test_maxpool_float(kernel, geom):
    """Float max-pool: equal to the reference and to a padded brute force (padding -inf), NaN
    propagates, at any thread count."""
    k, s, p = geom
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    x = rng.standard_normal((2, 3, 11, 8)).astype(np.float32)
    x[0, 1, 4, 4] = np.nan
    x[1, 2, 0, 0] = -np.inf
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    brute = win.max(axis=(4, 5))  # NaN propagates through max
    with K.use_kernel(kernel):
        for threads in (1, 2):
            got = K.maxpool_float(x, k, s, p, threads)
            np.testing.assert_array_equal(got, brute)
    np.testing.assert_array_equal(R.maxpool_float(x, k, s, p), brute)


_STEM_POOL_CASE = """
import numpy as np
from dorefa import kernels as K
from dorefa.kernels import reference as R
from dorefa.kernels.selection import backend_of
rng = np.random.default_rng(5)
for w in range(1, 71):
    x = rng.standard_normal((2, 3, 7, w)).astype(np.float32)
    x[1, 0, rng.integers(7), rng.integers(w)] = np.nan
    x[1, 2, rng.integers(7), rng.integers(w)] = np.inf
    got = K.maxpool_float(x, 3, 2, 1, 1)
    np.testing.assert_array_equal(got, R.maxpool_float(x, 3, 2, 1))
print("ok")
"""


def test_stem_pool_rows_at_every_width():
    """3 x 3 / 2 windows with padding 1 (ResNet's stem pool: AVX-512 rows where the CPU has
    them, pool_avx512.cpp; SSE2 rows otherwise) at widths 1-70 (every tail of the 32-column
    blocks), NaN and inf among the values: equal to the spec, on this CPU and as an AVX2-only
    one."""
    exec(_STEM_POOL_CASE)
    assert fresh_process(_STEM_POOL_CASE, DOREFA_CPU_FEATURES="avx2,fma") == ["ok"]


# Layers the vector paths run by Winograd (csrc/conv_float_winograd.h): F(2x2, 4x4) on the
# stride-2 phases of kernels 7 and 8, F(2x2, 3x3) on the stride-4 phases of kernels 9-12; odd
# and even output sizes, rows of several 16-tile blocks with a partial last one, channel counts
# off the 16 (and 8) of a pass. (N, C, H, W, O, K, stride, padding)
WINOGRAD_SHAPES = [
    (1, 3, 61, 75, 64, 7, 2, 3),
    (2, 1, 20, 33, 20, 8, 2, 3),
    (1, 5, 18, 18, 9, 7, 2, 0),
    (3, 2, 9, 70, 33, 8, 2, 4),
    (1, 3, 95, 139, 96, 12, 4, 0),
    (2, 2, 29, 34, 20, 9, 4, 2),
    (1, 1, 16, 150, 7, 10, 4, 1),
]


@pytest.mark.parametrize("shape", WINOGRAD_SHAPES, ids=str)
def test_conv_float_output_by_winograd(shape):
    """Winograd layers: within the direct sums' bound of the float64 reference ((taps + 2) *
    2**-24 * (sum |w x| + |b|), test_conv_float_output) on every vector path, the same bits on
    ymm and zmm and at 1-3 threads (each tile computed alone, every lane the same operations),
    and the fused max-pool equal to pooling that output."""
    n, c, h, w, o, k, s, p = shape
    rng = np.random.default_rng(list(shape))
    x = (rng.random((n, c, h, w), dtype=np.float32) - 0.3).astype(np.float32)
    wt = (rng.standard_normal((o, c, k, k)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(o) * 0.3).astype(np.float32)
    expected = R.conv_float(x, wt, b, s, p)
    bound = (
        (c * k * k + 2)
        * 2.0**-24
        * (direct_float64(np.abs(x), np.abs(wt), s, p) + np.abs(b)[:, None, None])
    )
    vector = [kn for kn in NATIVE if not kn.startswith("popcount-scalar")]
    first = None
    for kernel in vector:
        with K.use_kernel(kernel):
            for threads in (1, 2, 3):
                got = K.conv_float(x, wt, b, s, p, threads=threads)
                assert np.all(np.abs(got - expected) <= bound), (kernel, threads)
                first = got if first is None else first
                np.testing.assert_array_equal(got.view(np.uint32), first.view(np.uint32))
            pooled = K.conv_float(x, wt, b, s, p, 2, pool=(3, 2, 1))
            np.testing.assert_array_equal(pooled, K.maxpool_float(got, 3, 2, 1))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", [1, 2, 8])
@pytest.mark.parametrize(
    "geom", [(5, 1, 1), (5, 1, 2), (12, 4, 1), (8, 2, 1)], ids=["run", "pool", "f23", "f24"]
)
def test_conv_float_quantize_at_rounding_steps(kernel, bits, geom):
    """Biases put one pooled value of every channel on a code step (pooled + b = (q + 1/2) /
    levels), where a float32 sum in another order can round the other way: the codes still
    equal the spec's (a float32 path proves each code or recomputes it in the spec's order),
    in a run of 4 pixels (no pool), in a pooling window and in Winograd tiles of both sizes.
    (kernel, stride, pool)"""
    k, stride, pool = geom
    n, c, o, side = 2, 3, 40, 8
    h = w = (side * pool - 1) * stride + k
    rng = np.random.default_rng(bits)
    x = rng.random((n, c, h, w), dtype=np.float32)
    wt = (rng.standard_normal((o, c, k, k)) * 0.3).astype(np.float32)
    conv = direct_float64(x, wt, stride, 0).astype(np.float32)
    pooled = conv.reshape(n, o, side, pool, side, pool).max(axis=(3, 5))
    levels = (1 << bits) - 1
    step = (np.arange(o) % levels + 0.5) / levels
    for py, px in [(0, 0), (1, 2), (3, 3), (side - 1, side - 2)]:
        b = (step - pooled[py % n, :, py, px]).astype(np.float32)
        expected = R.conv_float_quantize(x, wt, b, stride, 0, pool, bits)
        with K.use_kernel(kernel):
            got = K.conv_float_quantize(x, wt, b, stride, 0, pool, bits, threads=2)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("geom", [(5, 1, 1), (5, 1, 2), (3, 2, 3)], ids=["run", "pool2", "pool3"])
def test_conv_float_quantize_near_steps_beside_an_outlier(kernel, geom):
    """One huge input value in another image makes the bound from max|x| useless, so the codes
    near a step are proved (or not) by the per-window bound ||w_o||_2 ||x_win||_2: pooled values
    put at a code step plus offsets from -1e-4 to 1e-4 (about the window bound's size) still
    give the spec's codes. (kernel, stride, pool)"""
    k, stride, pool = geom
    n, c, o, side, bits = 3, 3, 40, 6, 8
    h = w = (side * pool - 1) * stride + k
    rng = np.random.default_rng(7)
    x = rng.random((n, c, h, w), dtype=np.float32)
    x[2, 1, h // 2, w // 2] = 1e4
    wt = (rng.standard_normal((o, c, k, k)) * 0.3).astype(np.float32)
    conv = direct_float64(x, wt, stride, 0).astype(np.float32)
    pooled = conv.reshape(n, o, side, pool, side, pool).max(axis=(3, 5))
    levels = (1 << bits) - 1
    step = (np.arange(o) % levels + 0.5) / levels + np.linspace(-1e-4, 1e-4, o)
    for py, px in [(0, 0), (2, 3), (side - 1, side - 1)]:
        b = (step - pooled[py % 2, :, py, px]).astype(np.float32)
        expected = R.conv_float_quantize(x, wt, b, stride, 0, pool, bits)
        with K.use_kernel(kernel):
            got = K.conv_float_quantize(x, wt, b, stride, 0, pool, bits, threads=2)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kernel", KERNELS)
def test_winograd_plan_follows_the_weights(kernel):
    """The Winograd plan is kept between calls with the same weights (csrc/conv_float.cpp):
    weights changed in place (the same array), a changed bias and another geometry are seen."""
    rng = np.random.default_rng(3)
    x = rng.random((1, 3, 52, 52), dtype=np.float32)
    wt = (rng.standard_normal((24, 3, 12, 12)) * 0.1).astype(np.float32)
    b = (rng.standard_normal(24) * 0.3).astype(np.float32)
    with K.use_kernel(kernel):
        for step in range(4):
            if step == 1:
                wt[5, 1, 3, 7] += 1.0
            if step == 2:
                b[3] -= 0.5
            xs = x if step < 3 else x[:, :, :48, :44]
            got = K.conv_float_quantize(xs, wt, b, 4, 0, 1, 2)
            np.testing.assert_array_equal(got, R.conv_float_quantize(xs, wt, b, 4, 0, 1, 2))
            out = K.conv_float(xs, wt, b, 4, 0)
            bound = (
                (3 * 144 + 2)
                * 2.0**-24
                * (direct_float64(np.abs(xs), np.abs(wt), 4, 0) + np.abs(b)[:, None, None])
            )
            assert np.all(np.abs(out - R.conv_float(xs, wt, b, 4, 0)) <= bound)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scale", [1e16, np.inf])
@pytest.mark.parametrize("geom", [(5, 1, 2), (12, 4, 1)], ids=["direct", "winograd"])
def test_conv_float_quantize_without_a_sum_error_bound(kernel, scale, geom):
    """|x| > 1e15 or an infinite x: no error bound for float32 sums, every code from the
    spec's double sums (an Inf input gives +-Inf or NaN sums: NaN pools as the spec's max), on
    the direct and the Winograd layers. (kernel, stride, pool)"""
    k, stride, pool = geom
    rng = np.random.default_rng(7)
    side = 9 * stride + k
    x = rng.random((2, 1, side, side), dtype=np.float32)
    x[0, 0, 3, 4] = scale
    wt = rng.standard_normal((20, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    with np.errstate(invalid="ignore"):
        expected = R.conv_float_quantize(x, wt, b, stride, 0, pool, 2)
    with K.use_kernel(kernel):
        got = K.conv_float_quantize(x, wt, b, stride, 0, pool, 2)
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    o=st.integers(1, 130),
    k=st.integers(1, 12),
    stride=st.integers(1, 4),
    padding=st.integers(0, 3),
    pool=st.integers(1, 3),
    bits=st.sampled_from([1, 2, 4, 8]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_first_layer(n, c, h, w, o, k, stride, padding, pool, bits, seed):
    """The float first layer on random shapes (channel groups of every width, short runs, pools
    at the edges): codes equal the spec's on every kernel; the float output equal on every
    vector path to the bit and within float32 rounding of the spec's."""
    oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    if min(oh, ow) < pool:
        return
    rng = np.random.default_rng(seed)
    x = (rng.random((n, c, h, w), dtype=np.float32) * 2 - 0.5).astype(np.float32)
    wt = (rng.standard_normal((o, c, k, k)) * 0.4).astype(np.float32)
    b = (rng.standard_normal(o) * 0.3 + 0.3).astype(np.float32)
    expected = R.conv_float_quantize(x, wt, b, stride, padding, pool, bits)
    spec = R.conv_float(x, wt, b, stride, padding)
    bound = direct_float64(np.abs(x), np.abs(wt), stride, padding) + np.abs(b)[:, None, None]
    first = None
    for kernel in NATIVE:
        with K.use_kernel(kernel):
            got = K.conv_float_quantize(x, wt, b, stride, padding, pool, bits, threads=1 + seed % 2)
            out = K.conv_float(x, wt, b, stride, padding, threads=1 + seed % 2)
        np.testing.assert_array_equal(got, expected, err_msg=kernel)
        assert np.all(np.abs(out - spec) <= (c * k * k + 2) * 2.0**-24 * bound), kernel
        if not kernel.startswith("popcount-scalar"):  # the vector paths: one FMA order
            first = out if first is None else first
            np.testing.assert_array_equal(out.view(np.uint32), first.view(np.uint32), kernel)


@pytest.mark.parametrize("kernel", KERNELS)
def test_conv_float_quantize_nan_in_a_pooling_window(kernel):
    """+inf beside -inf makes NaN sums (inf - inf) at the first and at a later position of a
    pooling window: the pooled value is NaN wherever one is (numpy's max, the spec), code 0."""
    x = np.zeros((1, 1, 8, 8), np.float32)
    x[0, 0, 1, 1], x[0, 0, 1, 2] = np.inf, -np.inf  # NaN at window position (0, 1)
    x[0, 0, 4, 4], x[0, 0, 4, 5] = -np.inf, np.inf  # NaN at window position (0, 0)
    w = np.ones((3, 1, 2, 2), np.float32)
    w[1] = -1
    w[2, 0, 0, 0] = 0.5
    b = np.full(3, 0.5, np.float32)
    with np.errstate(invalid="ignore"):
        expected = R.conv_float_quantize(x, w, b, 1, 0, 2, 2)
        assert np.isnan(direct_float64(x, w, 1, 0)).any()
        with K.use_kernel(kernel):
            got = K.conv_float_quantize(x, w, b, 1, 0, 2, 2)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 1)])
def test_maxpool_codes(kernel, size, stride, padding):
    x = np.random.default_rng(size).integers(0, 256, (2, 5, 7, 9), dtype=np.uint8)
    expected = R.maxpool_codes(x, size, stride, padding)
    with K.use_kernel(kernel):
        np.testing.assert_array_equal(K.maxpool_codes(x, size, stride, padding), expected)


# The 3 x 3 / 2 path reads rows 16 bytes at a time (never past the input's end) and writes a
# plane's last outputs 8 at a time into the next plane's (not past the output's end): planes
# narrower and wider than 16 and 32, odd and even sizes, outputs of fewer than 8 codes, one plane.
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 9),
    h=st.integers(1, 40),
    w=st.integers(1, 70),
    k=st.sampled_from([2, 3]),
    s=st.integers(1, 3),
    p=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_maxpool_codes_hypothesis_shapes(n, c, h, w, k, s, p, seed):
    p = min(p, k // 2)  # torch's bound, which the native pools check
    if h + 2 * p < k or w + 2 * p < k:
        return
    x = np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)
    expected = R.maxpool_codes(x, k, s, p)
    for kernel in NATIVE:
        with K.use_kernel(kernel):
            np.testing.assert_array_equal(K.maxpool_codes(x, k, s, p), expected)


# The 2 x 2 / 2 path pools 8 outputs a step from 16 bytes of two rows, its last step moved
# back to end at the row's last output: widths with fewer than 8 outputs, exactly 8, one more
# than a step, odd widths (the last column unused), and one or several planes.
@pytest.mark.parametrize("w", [2, 3, 14, 15, 16, 17, 18, 19, 31, 32, 33, 34, 50, 65])
@pytest.mark.parametrize("n,c,h", [(1, 1, 2), (2, 3, 5), (1, 7, 18)])
def test_maxpool_codes_2x2_stride_2_widths(w, n, c, h):
    x = np.random.default_rng(w * 100 + h).integers(0, 256, (n, c, h, w), dtype=np.uint8)
    expected = R.maxpool_codes(x, 2, 2, 0)
    for kernel in NATIVE:
        for threads in (1, 2):
            with K.use_kernel(kernel):
                got = K.maxpool_codes(x, 2, 2, 0, threads)
            np.testing.assert_array_equal(got, expected, err_msg=f"{kernel} {threads}")


# (N, C, H, W, O, K, stride, padding, pool k, pool s, pool p): ResNet's stem in small, windows
# wider than their stride, strides above the window, pools whose rows start in the padding.
FUSED_POOL_SHAPES = [
    (1, 3, 30, 30, 64, 7, 2, 3, 3, 2, 1),
    (2, 2, 13, 11, 20, 3, 1, 1, 3, 2, 1),
    (3, 1, 9, 9, 17, 3, 1, 0, 2, 2, 0),
    (1, 4, 12, 10, 33, 5, 1, 2, 2, 3, 1),
    (2, 3, 16, 16, 96, 3, 2, 1, 5, 1, 2),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", FUSED_POOL_SHAPES, ids=str)
@pytest.mark.parametrize("special", [False, True], ids=["finite", "nan-inf"])
def test_conv_float_with_a_fused_max_pool(kernel, shape, special):
    """The fused pool gives exactly the pooled output of the unfused conv, on every thread
    count (bands of rows split differently), NaN and inf included."""
    n, c, h, w, o, k, s, p, pk, ps, pp = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    if special:
        x[0, 0, h // 2, w // 3] = np.nan
        x[-1, -1, 0, -1] = np.inf
    wt = (rng.standard_normal((o, c, k, k)) * 0.3).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    with K.use_kernel(kernel), np.errstate(invalid="ignore"):
        conv = K.conv_float(x, wt, b, s, p)
        expected = K.maxpool_float(conv, pk, ps, pp)
        for threads in (1, 2, 3):
            got = K.conv_float(x, wt, b, s, p, threads, pool=(pk, ps, pp))
            np.testing.assert_array_equal(got, expected)


# The 3 x 3 / 2 float rows run 4 floats a step with a scalar tail, and fall back to the
# NaN-aware max for a row whose window holds a NaN or inf: widths around multiples of 4 and 8.
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=st.integers(1, 4),
    h=st.integers(1, 20),
    w=st.integers(1, 40),
    k=st.sampled_from([2, 3]),
    s=st.integers(1, 3),
    p=st.integers(0, 1),
    specials=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_maxpool_float_hypothesis_shapes(c, h, w, k, s, p, specials, seed):
    p = min(p, k // 2)
    if h + 2 * p < k or w + 2 * p < k:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    for v in (np.nan, np.inf, -np.inf)[:specials]:
        x[rng.integers(2), rng.integers(c), rng.integers(h), rng.integers(w)] = v
    expected = R.maxpool_float(x, k, s, p)
    for kernel in NATIVE:
        with K.use_kernel(kernel):
            np.testing.assert_array_equal(K.maxpool_float(x, k, s, p, 1 + seed % 2), expected)


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("geom", [(3, 2, 1), (3, 2, 0), (2, 2, 0), (3, 1, 1)])
@pytest.mark.parametrize("hw", [(54, 54), (27, 13), (5, 3)])
def test_maxpool_codes_split_over_threads(kernel, geom, hw):
    """Planes split over 2 and 3 threads (inputs above 64 KB a thread): the 3x3/2 rows that
    write past their outputs stay inside their thread's planes; the same codes as one thread."""
    k, s, p = geom
    h, w = hw
    if h + 2 * p < k or w + 2 * p < k:
        return
    x = np.random.default_rng(h * w + k).integers(0, 256, (3, 400, h, w), dtype=np.uint8)
    expected = R.maxpool_codes(x, k, s, p)
    with K.use_kernel(kernel):
        for threads in (1, 2, 3):
            np.testing.assert_array_equal(K.maxpool_codes(x, k, s, p, threads), expected)


# The float first layer's products in training (csrc/conv_float_train.h): (N, C, H, W, O, K,
# padding): svhn's 1->48 5x5 in small, 3x3 and 5x5 with and without padding, up to 4 input
# channels, maps that end mid-vector, a map smaller than the kernel's reach.
FLOAT_WGRAD_SHAPES = [
    (3, 1, 40, 40, 48, 5, 0),
    (2, 3, 11, 9, 7, 3, 1),
    (2, 4, 6, 7, 20, 5, 2),
    (1, 1, 3, 3, 2, 3, 0),
    (4, 2, 13, 5, 17, 3, 0),
    (2, 1, 2, 3, 3, 5, 2),
]
HAS_AVX512 = any(backend_of(k) == "avx512" for k in NATIVE)


def _float_wgrad_spec(x, dy, k, p):
    """(dW, db) summed in float64, and per output the float32 summation bound: gamma_m times
    the sum of |terms|, m = the longest chain of float32 adds (N (vectors + K) + 16 lanes)."""
    n, oh, ow = x.shape[0], dy.shape[2], dy.shape[3]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    d = dy.astype(np.float64)
    dw = np.empty((dy.shape[1], x.shape[1], k, k))
    mag = np.empty_like(dw)
    for ky in range(k):
        for kx in range(k):
            win = xp[:, :, ky : ky + oh, kx : kx + ow]
            dw[:, :, ky, kx] = np.einsum("nohw,nchw->oc", d, win)
            mag[:, :, ky, kx] = np.einsum("nohw,nchw->oc", np.abs(d), np.abs(win))
    m = n * ((oh * ow + (k - 1) * ow) // 16 + 2) + 16
    gamma = m * 2.0**-24 / (1 - m * 2.0**-24)
    return dw, d.sum((0, 2, 3)), gamma * mag, gamma * np.abs(d).sum((0, 2, 3))


@pytest.mark.parametrize("shape", FLOAT_WGRAD_SHAPES)
def test_conv_float_weight_grad_within_float32_rounding(shape):
    """The native weight and bias gradients of a float first layer: within the float32
    summation bound of the float64 sums (no one CPU's rounding assumed), the same floats at 1
    and 2 threads; where the CPU has no AVX-512 the call declines (None: torch's runs)."""
    n, c, h, w, o, k, p = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal((n, o, h + 2 * p - k + 1, w + 2 * p - k + 1)).astype(np.float32)
    got = K._native.conv_float_weight_grad(x, dy, k, k, p, True, 1)
    if not HAS_AVX512:
        assert got is None
        return
    dw, db = got
    want_w, want_b, bound_w, bound_b = _float_wgrad_spec(x, dy, k, p)
    assert dw.shape == (o, c, k, k) and db.shape == (o,)
    assert (np.abs(dw - want_w) <= bound_w).all() and (np.abs(db - want_b) <= bound_b).all()
    dw2, db2 = K._native.conv_float_weight_grad(x, dy, k, k, p, True, 2)
    assert np.array_equal(dw, dw2) and np.array_equal(db, db2)
    dw3, none = K._native.conv_float_weight_grad(x, dy, k, k, p, False, 1)
    assert none is None and np.array_equal(dw3, dw)


@pytest.mark.parametrize("shape", FLOAT_WGRAD_SHAPES)
def test_conv_float_train_forward_within_float32_rounding(shape):
    """The native training forward of a float first layer: within the float32 summation bound
    of the float64 convolution (C K K + 1 terms an output), the same floats at 1 and 2
    threads; None where the CPU has no AVX-512."""
    n, c, h, w, o, k, p = shape
    rng = np.random.default_rng(sum(shape) + 1)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    got = K._native.conv_float_train_forward(x, wt, b, p, 1)
    if not HAS_AVX512:
        assert got is None
        return
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = h + 2 * p - k + 1, w + 2 * p - k + 1
    want = np.broadcast_to(b.astype(np.float64)[None, :, None, None], (n, o, oh, ow)).copy()
    mag = np.broadcast_to(np.abs(b.astype(np.float64))[None, :, None, None], want.shape).copy()
    for ky in range(k):
        for kx in range(k):
            win = xp[:, :, ky : ky + oh, kx : kx + ow]
            want += np.einsum("oc,nchw->nohw", wt[:, :, ky, kx].astype(np.float64), win)
            mag += np.einsum(
                "oc,nchw->nohw", np.abs(wt[:, :, ky, kx]).astype(np.float64), np.abs(win)
            )
    terms = c * k * k + 1
    gamma = terms * 2.0**-24 / (1 - terms * 2.0**-24)
    assert got.shape == want.shape and (np.abs(got - want) <= gamma * mag).all()
    assert np.array_equal(got, K._native.conv_float_train_forward(x, wt, b, p, 2))


_FLOAT_WGRAD_DECLINES = """
import numpy as np
from dorefa.kernels.extension import native
x, dy = np.ones((2, 1, 8, 8), np.float32), np.ones((2, 3, 6, 6), np.float32)
w, b = np.ones((3, 1, 3, 3), np.float32), np.ones(3, np.float32)
print(native.conv_float_weight_grad(x, dy, 3, 3, 0, True, 1) is None)
print(native.conv_float_train_forward(x, w, b, 0, 1) is None)
"""


def test_conv_float_training_kernels_decline_what_they_do_not_run():
    """Kernels other than 3x3 and 5x5, more than 4 input channels, and an AVX2-only CPU: None
    (the engine keeps conv_float and torch's gradients); operands that do not fit are errors."""
    for x, dy, k in [
        (np.ones((2, 1, 9, 9)), np.ones((2, 3, 3, 3)), 7),
        (np.ones((2, 5, 8, 8)), np.ones((2, 3, 6, 6)), 3),
        (np.ones((2, 1, 8, 8)), np.ones((2, 3, 8, 8)), 1),
    ]:
        args = (x.astype(np.float32), dy.astype(np.float32), k, k, 0, True, 1)
        assert K._native.conv_float_weight_grad(*args) is None
    with pytest.raises(ValueError, match="dy does not fit"):
        K._native.conv_float_weight_grad(
            np.ones((2, 1, 8, 8)), np.ones((2, 3, 5, 6)), 3, 3, 0, True, 1
        )
    for w in (np.ones((3, 1, 7, 7)), np.ones((3, 5, 3, 3))):
        x = np.ones((2, w.shape[1], 8, 8), np.float32)
        assert K._native.conv_float_train_forward(x, w.astype(np.float32), np.ones(3), 0, 1) is None
    with pytest.raises(ValueError, match="weight / bias do not fit"):
        K._native.conv_float_train_forward(
            np.ones((2, 2, 8, 8)), np.ones((3, 1, 3, 3)), np.ones(3), 0, 1
        )
    assert fresh_process(_FLOAT_WGRAD_DECLINES, DOREFA_CPU_FEATURES="avx2,fma") == ["True", "True"]
