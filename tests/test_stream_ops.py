"""The runtime's float-stream operations (quantize to codes, per-channel affine, a bit
convolution's float output): every kernel gives the NumPy reference's float32 bits, which are
torch's operations in torch's order (kernels/reference.py), including ties, NaN, infinities,
-0, and lengths that are not a multiple of the vector width."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dorefa import kernels as K
from dorefa.kernels import reference as R
from kernel_cases import KERNELS

SPECIAL = np.array(
    [
        np.nan,
        np.inf,
        -np.inf,
        -0.0,
        0.0,
        1.0,
        -1.0,
        1e-45,
        -1e-45,
        0.5,
        1.0000001,
        0.99999994,
        3e38,
    ],
    np.float32,
)


def _stream(bits: int, size: int, seed: int) -> np.ndarray:
    """Specials, every tie (q + 1/2) / n of the bit width, then random values in and around
    [0, 1], cut to ``size`` values."""
    n = (1 << bits) - 1
    ties = ((np.arange(2 * n + 1) + 0.5) / (2 * n)).astype(np.float32)
    rng = np.random.default_rng(seed)
    rest = (rng.standard_normal(size) * 0.7 + 0.4).astype(np.float32)
    return np.concatenate([SPECIAL, ties, rest])[:size]


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("size", [1, 15, 16, 17, 1000, 4099])
def test_quantize_float(kernel, bits, size):
    x = _stream(bits, size, bits * 7 + size).reshape(1, 1, -1)
    with K.use_kernel(kernel):
        got = K.quantize_float(x, bits)
    _same_bits(got, R.quantize_float(x, bits))


@pytest.mark.parametrize("kernel", KERNELS)
def test_stream_ops_at_any_thread_count(kernel):
    """Large enough to be split over threads (and with a ragged last share): the same bits
    at 1, 2 and 3 threads, for every operation."""
    shape = (3, 5, 97, 89)
    rng = np.random.default_rng(3)
    x = _stream(6, int(np.prod(shape)), 5).reshape(shape)
    d = rng.integers(-(2**20), 2**20, shape, dtype=np.int64).astype(np.int32)
    a, b = (rng.standard_normal(5).astype(np.float32) for _ in range(2))
    with K.use_kernel(kernel), np.errstate(invalid="ignore"):  # inf + -inf in a window
        runs = [
            (
                K.quantize_float(x, 6, t),
                K.affine_float(x, a, b, t),
                K.scale_int_float(d, a, b, True, t),
                K.avgpool_float(x, 3, 2, 1, t),
            )
            for t in (1, 2, 3)
        ]
    for other in runs[1:]:
        for one, two in zip(runs[0], other, strict=True):
            _same_bits(one, two)


def test_quantize_float_is_torchs_f_a():
    """The spec is torch's f_a in float32 (clamp, * n, round half to even) off NaN."""
    x = _stream(3, 5000, 1)
    x = x[~np.isnan(x)]
    t = torch.from_numpy(x)
    want = torch.round(torch.clamp(t, 0, 1) * 7).to(torch.uint8).numpy()
    np.testing.assert_array_equal(R.quantize_float(x, 3), want)
    assert R.quantize_float(np.array([np.nan], np.float32), 3)[0] == 0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(1, 3), (2, 5, 1, 1), (3, 7, 5, 9), (2, 4, 33)])
def test_affine_float(kernel, shape):
    rng = np.random.default_rng(sum(shape))
    with np.errstate(over="ignore"):  # 3e38 * 50: inf, on purpose
        x = _stream(8, int(np.prod(shape)), 3).reshape(shape) * np.float32(50)
    scale = rng.standard_normal(shape[1]).astype(np.float32)
    shift = rng.standard_normal(shape[1]).astype(np.float32)
    with K.use_kernel(kernel):
        got = K.affine_float(x, scale, shift)
    _same_bits(got, R.affine_float(x, scale, shift))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (3, 7, 5, 9), (2, 16, 17, 3)])
def test_scale_int_float(kernel, clip, shape):
    """Any int32 D (the float conversion rounds above 2^24), signed scales, zero products
    (-0 survives the clip as in NumPy)."""
    rng = np.random.default_rng(sum(shape) + clip)
    d = rng.integers(-(2**31), 2**31, shape, dtype=np.int64).astype(np.int32)
    d.reshape(-1)[: d.size // 3] //= 1 << 20
    d.reshape(-1)[0] = 0
    alpha = (rng.standard_normal(shape[1]) * 1e-6).astype(np.float32)
    beta = rng.standard_normal(shape[1]).astype(np.float32) * 0.5
    alpha[0], beta[0] = -1.0, -0.0
    with K.use_kernel(kernel):
        got = K.scale_int_float(d, alpha, beta, clip)
    _same_bits(got, R.scale_int_float(d, alpha, beta, clip))


@pytest.mark.parametrize("kernel", KERNELS)
def test_per_channel_ops_on_values_of_one_pixel(kernel):
    """(N, C, 1, 1) values run along the channels (stream_float.cpp PlaneRuns): enough of them
    for two threads, whose shares then start and end inside an image (33 x 2049 values)."""
    shape = (33, 2049, 1, 1)
    rng = np.random.default_rng(11)
    d = rng.integers(-(2**24), 2**24, shape, dtype=np.int32)
    x = _stream(4, int(np.prod(shape)), 13).reshape(shape)
    alpha = (rng.standard_normal(shape[1]) * 1e-6).astype(np.float32)
    beta = (rng.standard_normal(shape[1]) * 0.5).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = [
            R.scale_int_float(d, alpha, beta, True),
            R.scale_int_float(d, alpha, beta, False) + x,
            R.affine_float(x, alpha * 1e6, beta),
            R.quantize_float(R.affine_float(x, alpha * 1e6, beta), 4),
        ]
        with K.use_kernel(kernel):
            for threads in (1, 2):
                got = [
                    K.scale_int_float(d, alpha, beta, True, threads),
                    K.scale_int_float(d, alpha, beta, False, threads, x),
                    K.affine_float(x, alpha * 1e6, beta, threads),
                    K.affine_quantize_float(x, alpha * 1e6, beta, 4, threads),
                ]
                for g, e in zip(got, expected, strict=True):
                    _same_bits(g, e)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(1, 3), (2, 5, 1, 1), (3, 7, 5, 9), (1, 2, 40, 33)])
def test_affine_quantize_float_is_affine_then_quantize(kernel, bits, shape):
    """The fused BatchNorm + f_a: the codes of affine_float's output (planes longer than the
    native chunk of 1024 included), specials and ties among the inputs."""
    rng = np.random.default_rng(sum(shape) + bits)
    x = _stream(bits, int(np.prod(shape)), 5).reshape(shape)
    scale = (1 + rng.standard_normal(shape[1]) * 0.1).astype(np.float32)
    shift = (rng.standard_normal(shape[1]) * 0.1).astype(np.float32)
    scale[0], shift[0] = 1.0, 0.0  # the ties and specials themselves in channel 0
    with np.errstate(over="ignore", invalid="ignore"):
        expected = R.quantize_float(R.affine_float(x, scale, shift), bits)
        with K.use_kernel(kernel):
            for threads in (1, 2):
                _same_bits(K.affine_quantize_float(x, scale, shift, bits, threads), expected)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (3, 7, 5, 9), (2, 16, 17, 3)])
def test_scale_int_float_with_a_residual_is_the_sum(kernel, shape):
    """A residual add fused into a bit convolution's float output: float32(D) * alpha + beta,
    then + r, each step rounded (r with specials: inf, NaN, -0)."""
    rng = np.random.default_rng(sum(shape))
    d = rng.integers(-(2**20), 2**20, shape, dtype=np.int32)
    alpha = (rng.standard_normal(shape[1]) * 1e-3).astype(np.float32)
    beta = rng.standard_normal(shape[1]).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # 3e38 * 3: inf, on purpose
        r = _stream(8, int(np.prod(shape)), 9).reshape(shape) * np.float32(3)
        expected = R.scale_int_float(d, alpha, beta, False) + r
        with K.use_kernel(kernel):
            for threads in (1, 2):
                _same_bits(K.scale_int_float(d, alpha, beta, False, threads, r), expected)
    if kernel != "reference":
        with K.use_kernel(kernel), pytest.raises(ValueError, match="unclipped"):
            K.scale_int_float(d, alpha, beta, True, 1, r)
        with K.use_kernel(kernel), pytest.raises(ValueError, match="shape of d"):
            K.scale_int_float(d, alpha, beta, False, 1, r[:, :1])


@pytest.mark.parametrize("kernel", KERNELS)
def test_stream_ops_check_the_channel_vectors(kernel):
    x = np.zeros((2, 3, 4), np.float32)
    with K.use_kernel(kernel), pytest.raises(ValueError, match="C = 3"):
        K.affine_float(x, np.ones(2, np.float32), np.ones(3, np.float32))
    with K.use_kernel(kernel), pytest.raises(ValueError, match="C = 3"):
        K.scale_int_float(x.astype(np.int32), np.ones(3, np.float32), np.ones(4, np.float32), True)
    with K.use_kernel(kernel), pytest.raises(ValueError, match="bits"):
        K.quantize_float(x, 9)
    with K.use_kernel(kernel), pytest.raises(ValueError, match="C = None"):
        K.affine_float(np.zeros(3, np.float32), np.ones(3, np.float32), np.ones(3, np.float32))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("geom", [(2, 2, 0), (3, 1, 1), (3, 2, 1), (2, 1, 1), (1, 1, 0), (5, 3, 2)])
@pytest.mark.parametrize("shape", [(2, 3, 11, 9), (1, 2, 6, 21), (1, 1, 3, 1), (1, 2, 4, 2)])
def test_avgpool_float(kernel, geom, shape):
    """Window sums in float32 from 0, taps row by row (a padding tap adds 0), / k^2: the same
    bits as the reference, and torch's avg_pool2d within float rounding; NaN and inf spread."""
    k, s, p = geom
    if shape[2] + 2 * p < k or shape[3] + 2 * p < k:
        return  # the window is larger than the padded input: no such pool
    with np.errstate(over="ignore", invalid="ignore"):  # inf + -inf: NaN, on purpose
        x = _stream(8, int(np.prod(shape)), sum(geom)).reshape(shape) * np.float32(3)
        x[0, 0, 0, 0] = -0.0
        with K.use_kernel(kernel):
            got = K.avgpool_float(x, k, s, p)
        _same_bits(got, R.avgpool_float(x, k, s, p))
    finite = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    want = torch.nn.functional.avg_pool2d(torch.from_numpy(finite), k, s, p).numpy()
    with K.use_kernel(kernel):
        np.testing.assert_allclose(K.avgpool_float(finite, k, s, p), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("geom", [(3, 2, 1), (4, 2, 1), (5, 3, 2), (3, 3, 1)])
@pytest.mark.parametrize("w", [1, 2, 3])
def test_avgpool_float_narrower_than_its_window(kernel, geom, w):
    """Inputs narrower than a window's reach (k > w + p): a tap past the row's end adds
    nothing, it does not read the next row."""
    k, s, p = geom
    h = k  # enough rows for one output row
    if w + 2 * p < k:
        return
    x = np.arange(1, 2 * h * w + 1, dtype=np.float32).reshape(1, 2, h, w)
    with K.use_kernel(kernel):
        got = K.avgpool_float(x, k, s, p)
    _same_bits(got, R.avgpool_float(x, k, s, p))
    want = torch.nn.functional.avg_pool2d(torch.from_numpy(x), k, s, p).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
