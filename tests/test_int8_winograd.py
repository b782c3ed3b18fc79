"""int8-winograd-avx2: Winograd F(2x2, 3x3) and F(2x4, 3x3) on integers
(csrc/int8conv_winograd_avx2.cpp) on the 3x3 stride-1 layers whose int8-avx2 tiles cannot sum
two products in int16 (x_bits 8 with w_bits >= 7, x_bits 6-7 with w_bits 8), the tiles
elsewhere. Every output mode equals the NumPy reference bit for bit: output sizes on and off
the tiles (a last tile partly outside; widths that take tiles of 2 and of 4 columns), paddings
0-2, channel counts off the 16-channel vectors, output channels off the 16-lane blocks, bands
split over images and threads, and the sums at the edge of both exactness bounds."""

from __future__ import annotations

import numpy as np
import pytest

from dorefa import kernels as K
from dorefa.kernels import reference as R

KERNEL = "int8-winograd-avx2"
pytestmark = pytest.mark.skipif(
    KERNEL not in K.available_kernels(), reason="this CPU (or build) has no AVX2 int8 kernels"
)

# (N, C, H, W, O, padding): odd / even outputs, 1-pixel outputs, channel tails, 5 x 5 valid.
SHAPES = [
    (1, 16, 6, 6, 16, 1),
    (2, 53, 7, 9, 20, 1),
    (3, 5, 5, 4, 3, 0),
    (1, 1, 3, 3, 1, 0),
    (2, 37, 11, 13, 70, 2),
    (1, 4, 1, 1, 4, 1),
    (4, 130, 5, 5, 33, 0),
    (1, 64, 18, 18, 64, 1),
]
# Bit pairs (x_bits, w_bits) Winograd runs on, and one that stays on the tiles.
BITS = [(8, 8), (8, 7), (7, 8), (6, 8), (4, 4)]


def _case(shape, bits, seed=0):
    n, c, h, w, o, p = shape
    xb, wb = bits
    rng = np.random.default_rng([seed, *shape, xb, wb])
    x = rng.integers(0, 1 << xb, (n, c, h, w), dtype=np.uint8)
    wc = rng.integers(0, 1 << wb, (o, c, 3, 3), dtype=np.uint8)
    wc[0] = (1 << wb) - 1  # one channel at the largest weights
    return x, R.pack_weights(wc, wb), wc


def _ids(shape):
    return "n{}c{}h{}w{}o{}p{}".format(*shape)


@pytest.mark.parametrize("bits", BITS, ids=lambda b: f"a{b[0]}w{b[1]}")
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_every_output_mode_equals_the_reference(shape, bits):
    x, pw, _ = _case(shape, bits)
    xb, p = bits[0], shape[5]
    acc = R.bitconv2d_packed(x, pw, xb, 1, p)
    signed = R.bitconv2d_signed(x, pw, xb, 1, p)
    o = shape[4]
    rng = np.random.default_rng(1)
    th = np.sort(rng.choice(np.unique(signed), size=(o, 3)), axis=1).astype(np.int32)
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    th[direction < 0] = th[direction < 0, ::-1]
    codes = R.bitconv2d_requant(x, pw, xb, 1, p, th, direction)
    with K.use_kernel(KERNEL):
        np.testing.assert_array_equal(K.bitconv2d_packed(x, pw, xb, 1, p, threads=1), acc)
        np.testing.assert_array_equal(K.bitconv2d_signed(x, pw, xb, 1, p, threads=2), signed)
        got = K.bitconv2d_requant(x, pw, xb, 1, p, th, direction, threads=3)
    np.testing.assert_array_equal(got, codes)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 5, 9])
@pytest.mark.parametrize("image", [(24, 17, 15, 40, 1), (20, 7, 5, 24, 1), (33, 9, 8, 17, 0)])
def test_bands_over_images_and_threads(image, n, threads):
    """Bands of output tile rows of one image (large outputs: several per image at small
    batches, two a thread), or of whole images (small outputs: 7x5 and 7x6 here); in every band
    the last tile column, row and corner run only the positions they need. The results do not
    depend on the split."""
    x, pw, _ = _case((n, *image), (8, 8), seed=n)
    p = image[-1]
    expected = R.bitconv2d_signed(x, pw, 8, 1, p)
    with K.use_kernel(KERNEL):
        got = K.bitconv2d_signed(x, pw, 8, 1, p, threads=threads)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("code", [0, 255])
@pytest.mark.parametrize("c, w", [(1824, 4), (1828, 4), (456, 10), (460, 10)])
def test_sums_at_the_exactness_bound(c, w, code):
    """Tiles of 2 output columns (a 2-wide output) are exact while 4 |sum| < 2^31: up to 1824
    channels at W8A8 (4 * 9 * cp * 128 * 255); tiles of 4 (an 8-wide output) while 16 |sum| <
    2^31: up to 456. There Winograd runs with every code at an extreme (x' = -128 or 127, w =
    255); past 456 the 8-wide output takes tiles of 2, past 1824 the weights carry no transform
    and the int8 tiles run."""
    x = np.full((1, c, 4, w), code, np.uint8)
    wc = np.full((2, c, 3, 3), 255, np.uint8)
    wc[1, ::2] = 0
    pw = R.pack_weights(wc, 8)
    with K.use_kernel(KERNEL):
        got = K.bitconv2d_signed(x, pw, 8, 1, 0)
        acc = K.bitconv2d_packed(x, pw, 8, 1, 0)
    np.testing.assert_array_equal(got, R.bitconv2d_signed(x, pw, 8, 1, 0))
    np.testing.assert_array_equal(acc, R.bitconv2d_packed(x, pw, 8, 1, 0))


def test_int8wino_layout_is_the_int8_layout_and_the_transform_for_3x3_kernels():
    """The int8 words come first (what the tiles read on the layers Winograd does not run);
    3x3 kernels add 16 + 24 positions (tiles of 2 and of 4 output columns) x O (to 16) x C
    (to 4) int16, other kernels nothing."""
    from dorefa.kernels import _native, selection

    rng = np.random.default_rng(0)
    for o, c, k in [(20, 53, 3), (20, 53, 5), (3, 3, 1)]:
        w = rng.integers(0, 256, (o, c, k, k), dtype=np.uint8)
        int8 = _native.pack_weights(w, 8, "int8-avx2")
        wino = _native.pack_weights(w, 8, KERNEL)
        np.testing.assert_array_equal(wino[: int8.size], int8)
        extra = (16 + 24) * (-(-o // 16) * 16) * (-(-c // 4) * 4) * 2 // 8 if k == 3 else 0
        assert wino.size == int8.size + extra
    assert selection.weight_layout(KERNEL) == "int8wino"


@pytest.mark.parametrize("image", [(8, 3, 3, 5, 0), (8, 3, 6, 5, 0), (8, 4, 3, 5, 0)])
def test_outputs_of_one_tile_row_or_column(image):
    """1x1, 1x4 and 2x1 outputs over 13 images: bands of 12-48 whole images whose tiles are
    all edge classes (a band's class 0 empty; the 1x1 outputs' tiles corners only)."""
    x, pw, _ = _case((13, *image), (8, 8), seed=3)
    expected = R.bitconv2d_signed(x, pw, 8, 1, 0)
    with K.use_kernel(KERNEL):
        for threads in (1, 2):
            got = K.bitconv2d_signed(x, pw, 8, 1, 0, threads=threads)
            np.testing.assert_array_equal(got, expected)
