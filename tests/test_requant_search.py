"""Re-quantisation with many thresholds (5- to 8-bit outputs), on every kernel.

From 32 thresholds on, the native kernels find a code by a search over each channel's sorted,
sign-folded thresholds (src/dorefa/csrc/requant_table.h) instead of counting them; rows that
are not sorted (the reference accepts any order) are counted. Both must equal the reference
``#{j : D >= t_j}`` (direction +1) / ``#{j : D <= t_j}`` (-1) exactly, including D equal to a
threshold and the codes 0 and T at both ends.
"""

from __future__ import annotations

import numpy as np
import pytest

from dorefa import kernels as K
from dorefa.exporter.folding import fold_thresholds
from dorefa.kernels import reference as R
from kernel_cases import KERNELS, NATIVE, SHAPES, case, ids

INT32 = np.iinfo(np.int32)


def thresholds(d: np.ndarray, t: int, order: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(O, t) thresholds drawn from each channel's observed D above its minimum, so that the
    minimum gets code 0, the maximum code t, and many outputs tie with a threshold; rows rise
    for direction +1 and fall for -1 as the exporter writes them, or are shuffled."""
    rng = np.random.default_rng(seed)
    o = d.shape[1]
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    th = np.empty((o, t), np.int32)
    for c in range(o):
        v = np.unique(d[:, c])
        pool = v[1:] if direction[c] > 0 else v[:-1]  # the other end stays outside
        row = np.sort(rng.choice(pool if pool.size else v, size=t))
        th[c] = row if direction[c] > 0 else row[::-1]
    # Channel 0 as the exporter writes a constant code: thresholds always / never met.
    k = t // 3
    th[0] = np.r_[np.full(k, INT32.min + 1), np.full(t - k, INT32.max)].astype(np.int32)
    direction[0] = 1
    if order == "shuffled":
        th = rng.permuted(th, axis=1)
    return np.ascontiguousarray(th), direction


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("t", [255, 63, 32, 31])
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("shape", [SHAPES[3], SHAPES[6], SHAPES[7]], ids=ids)
def test_requant_many_thresholds(kernel, t, order, shape):
    x, w, _ = case(shape, 3, 2)
    pw = R.pack_weights(w, 2)
    s, p = shape[6], shape[7]
    d = R.bitconv2d_signed(x, pw, 3, s, p)
    th, direction = thresholds(d, t, order, seed=t)
    expected = R.bitconv2d_requant(x, pw, 3, s, p, th, direction)
    # The case covers what it claims: both end codes, and D equal to a threshold.
    live = expected[:, 1:]
    assert live.min() == 0 and live.max() == t
    assert np.isin(d[:, 1:], th[1:]).any()
    with K.use_kernel(kernel):
        for threads in (1, 2):
            got = K.bitconv2d_requant(x, pw, 3, s, p, th, direction, threads=threads)
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kernel", KERNELS)
def test_threshold_tables_are_cached_by_value(kernel):
    """The native kernels keep the last 8 threshold tables per thread (matched by value, not by
    address): the same array rewritten in place, and ten different tables in turn, each give
    their own codes."""
    x, w, _ = case(SHAPES[6], 3, 2)
    pw = R.pack_weights(w, 2)
    s, p = SHAPES[6][6], SHAPES[6][7]
    d = R.bitconv2d_signed(x, pw, 3, s, p)
    tables = [thresholds(d, 63, "sorted", seed) for seed in range(10)]
    th = tables[0][0].copy()
    with K.use_kernel(kernel):
        for _ in range(2):
            for i, (t_i, direction) in enumerate(tables):
                th[:] = t_i  # one array, new values
                want = R.bitconv2d_requant(x, pw, 3, s, p, t_i, direction)
                got = K.bitconv2d_requant(x, pw, 3, s, p, th, direction)
                assert np.array_equal(got, want), i


def folded(d: np.ndarray, t: int, seed: int, pure: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(O, t) thresholds as the exporter folds them (exporter/folding.py) from a per-channel
    affine map that spreads each channel's observed D over a little more than the codes 0..t,
    in either direction; then rows nudged by +-1 (a row must still rise or fall), a constant-code
    row and a row clipped at +-(dmax + 1). The native kernels compute the affine rows' codes on
    their line (requant_table.h) and must fall back to the search for the others. ``pure``:
    only affine rows (a table with a line on every row: int8-vnni's vector store)."""
    rng = np.random.default_rng(seed)
    o = d.shape[1]
    lo, hi = d.min(axis=(0, 2, 3)).astype(np.float64), d.max(axis=(0, 2, 3)).astype(np.float64)
    span = np.maximum(hi - lo, 1.0) * rng.uniform(0.8, 0.9, o)
    sign = np.where(rng.random(o) < 0.5, 1.0, -1.0)
    alpha = sign / span
    beta = np.where(sign > 0, -lo / span, hi / span) + rng.uniform(-0.08, 0.0, o)
    if not pure:
        alpha[1] = 0.0  # constant code
        alpha[2] = 1e-9  # thresholds clipped at both ends
    dmax = int(np.abs(d).max()) + 1
    th, direction = fold_thresholds(alpha, beta, int(np.log2(t + 1)), dmax)
    for c in range(3, o if not pure else 0, 4):  # nudged rows, still monotone
        row = th[c].astype(np.int64) + rng.integers(-1, 2, t)
        row = np.sort(row) if direction[c] > 0 else np.sort(row)[::-1]
        th[c] = row.astype(np.int32)
    return np.ascontiguousarray(th), direction


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("t", [255, 63, 31, 3])
@pytest.mark.parametrize("bits", [8, 3])
@pytest.mark.parametrize("pure", [False, True], ids=["mixed", "pure"])
@pytest.mark.parametrize("shape", [SHAPES[3], SHAPES[7], SHAPES[10]], ids=ids)
def test_requant_exporter_thresholds(kernel, t, bits, pure, shape):
    x, w, _ = case(shape, bits, bits)
    pw = R.pack_weights(w, bits)
    s, p = shape[6], shape[7]
    d = R.bitconv2d_signed(x, pw, bits, s, p)
    th, direction = folded(d, t, seed=t, pure=pure)
    expected = R.bitconv2d_requant(x, pw, bits, s, p, th, direction)
    live = expected[:, 3:]
    assert live.min() == 0 and live.max() == t  # both end codes are reached
    if bits == 3:  # thresholds closer than the D steps: outputs equal to a threshold
        assert np.isin(d[:, 3:], th[3:]).any()
    with K.use_kernel(kernel):
        for threads in (1, 2):
            got = K.bitconv2d_requant(x, pw, bits, s, p, th, direction, threads=threads)
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("t", [255, 32, 3, 1])
def test_requant_lines_of_any_step(kernel, t):
    """Rows t_j = ceil(rho + j step) with steps from 0.05 (runs of equal thresholds: codes no D
    reaches) to 1e7 (lines far wider than D, clipped to int32), rho anywhere around D's range,
    both directions: every row's line, or its search when the fit is refused, equals the
    reference on 8-bit outputs of a layer whose D spans about +-2^27."""
    shape = (2, 130, 5, 5, 40, 5, 1, 2)
    x, w, _ = case(shape, 8, 8)
    pw = R.pack_weights(w, 8)
    d = R.bitconv2d_signed(x, pw, 8, 1, 2)
    rng = np.random.default_rng(t)
    o = d.shape[1]
    step = np.exp(rng.uniform(np.log(0.05), np.log(1e7), o))
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    sd = d * direction[None, :, None, None]  # D sign-folded: the rows rise in it
    centre = rng.uniform(sd.min(axis=(0, 2, 3)), sd.max(axis=(0, 2, 3)))
    rho = centre - step * rng.uniform(0, t, o)
    j = np.arange(t)
    th = np.ceil(rho[:, None] + j[None, :] * step[:, None])
    th = np.where(direction[:, None] > 0, th, -th)  # falling rows for direction -1
    th = np.clip(th, INT32.min, INT32.max).astype(np.int32)
    expected = R.bitconv2d_requant(x, pw, 8, 1, 2, th, direction)
    assert len(np.unique(expected)) >= min(t + 1, 4)  # the rows cut through D
    with K.use_kernel(kernel):
        got = K.bitconv2d_requant(x, pw, 8, 1, 2, th, direction, threads=2)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("t", [255, 31])
def test_prepared_layers_build_their_table_once(kernel, t):
    """A prepared layer (the runtime's) hands the native call a RequantTable built at its first
    call, not the arrays to match by value: the same codes as the reference on every kernel, the
    thresholds frozen (the table would not see a change), and mixed or mismatched arguments
    refused."""
    from dorefa.kernels.extension import native

    shape = SHAPES[7]
    x, w, _ = case(shape, 8, 8)
    pw = R.pack_weights(w, 8)
    s, p = shape[6], shape[7]
    d = R.bitconv2d_signed(x, pw, 8, s, p)
    th, direction = folded(d, t, seed=t)
    expected = R.bitconv2d_requant(x, pw, 8, s, p, th, direction)
    layer = K.prepare_conv(pw, 8, s, p, "requant", th, direction)
    for threads in (1, 2, 1):
        np.testing.assert_array_equal(layer.run_on(kernel, x, threads), expected)
    assert layer._table is not None and layer._table.t == t
    with pytest.raises(ValueError, match="read-only"):
        layer.thresholds[0, 0] = 0
    th[0, 0] += 1  # the caller's array is not the layer's
    np.testing.assert_array_equal(layer.run_on(kernel, x, 1), expected)

    o, c, kh, kw = pw.shape
    words = K.weight_words(pw, kernel)
    args = (kernel, x, words, o, c, kh, kw, 8, 8, s, p, 1, "requant")
    with pytest.raises(ValueError, match="either table or thresholds"):
        native.bitconv(*args, th, direction, table=layer._table)
    other = native.RequantTable(np.zeros((o + 1, t), np.int32), np.ones(o + 1, np.int8))
    with pytest.raises(ValueError, match="another number of channels"):
        native.bitconv(*args, table=other)
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        native.RequantTable(th, np.zeros(o, np.int8))


def _line_rows(sd: np.ndarray, t: int, step: np.ndarray, rng) -> np.ndarray:
    """Rows u_j = ceil(rho + j step) (rising in sign-folded D) centred in each channel's D."""
    low, high = np.percentile(sd, [30, 70], axis=(0, 2, 3))
    centre = rng.uniform(low, high)
    rho = centre - step * t / 2
    return np.ceil(rho[:, None] + np.arange(t)[None, :] * step[:, None])


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("t", [255, 15, 3])
def test_requant_float32_and_float64_lines(kernel, t):
    """The vector stores take a block of rows' codes from the float32 line (3 operations a
    vector) when every row of the block has one, else from the float64 line, and search the rows
    without a line (requant_table.h). Rows 0-15 here have float32 lines (small steps), rows 16-31
    mix the three kinds, rows 32-39 have none; every kernel equals the reference, and the table
    reports each kind present."""
    from dorefa.kernels.extension import native

    shape = (2, 130, 5, 5, 40, 5, 1, 2)  # D spans about +-2^27
    x, w, _ = case(shape, 8, 8)
    pw = R.pack_weights(w, 8)
    d = R.bitconv2d_signed(x, pw, 8, 1, 2)
    rng = np.random.default_rng(t)
    o = d.shape[1]
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    sd = d * direction[None, :, None, None]
    span = np.percentile(sd, 99, axis=(0, 2, 3)) - np.percentile(sd, 1, axis=(0, 2, 3))
    kind = np.array([0] * 16 + [0, 1, 2] * 5 + [1] + [1, 2] * 4)  # 0 float32, 1 float64, 2 none
    # float64-only rows: at T = 255 a float32 line misses codes by a rounding; at T = 3 and 15
    # their lines span more than 2^24 (x not exact in float32)
    step = np.where(kind == 0, 2.0 if t == 255 else 4e3, np.maximum(span / t, 2**25 / (t - 1)))
    th = _line_rows(sd, t, step, rng)
    th[kind == 2] += rng.integers(-2, 3, (int((kind == 2).sum()), t))  # no line fits
    th[kind == 2] = np.sort(th[kind == 2], axis=1)
    th = np.where(direction[:, None] > 0, th, -th)
    th = np.clip(th, INT32.min, INT32.max).astype(np.int32)
    table = native.RequantTable(th, direction)
    lines, floats = table.lines
    assert floats >= 16 and lines - floats >= 1 and o - lines >= 1, (lines, floats)
    expected = R.bitconv2d_requant(x, pw, 8, 1, 2, th, direction)
    assert len(np.unique(expected)) > min(t, 3)
    with K.use_kernel(kernel):
        for threads in (1, 2):
            got = K.bitconv2d_requant(x, pw, 8, 1, 2, th, direction, threads=threads)
            np.testing.assert_array_equal(got, expected)
