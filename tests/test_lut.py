"""The table-lookup kernels' own edge cases (csrc/lut.h, lut_tile.h); their bit-exactness over
the shared matrix of shapes and bit pairs is in test_kernels.py, as for every kernel.

- Long receptive fields: byte sums are widened to 16-bit counters every 255 // maxv lookups and
  those, their vector lanes added in 16 bits, to 32 bits every 65535 // (lanes maxv) steps,
  within a kernel row when one row is longer than that (6-bit codes: 65 zmm steps of 16
  channels, 130 ymm steps of 8).
- Codes of 7 and 8 bits run as two slices with their own tables.
- lut-vnni stores its sums in one pass (no zeroing) when a call has one slice, one weight plane
  and one chunk of kernel rows (the shared matrix's W1 layers), and adds them otherwise: more
  planes or slices (below) or rows in several chunks (the 3x3 long fields).
- All-maximum operands: every table entry and byte counter at its bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from dorefa import kernels as K
from dorefa.kernels import choose
from dorefa.kernels import reference as R

LUT = [k for k in K.available_kernels() if k.startswith("lut-")]
pytestmark = pytest.mark.skipif(not LUT, reason="no lut kernel on this CPU (x86 builds only)")


def _check(kernel, x, w, x_bits, w_bits, stride, padding, threads=1):
    expected = R.bitconv2d(x, w, x_bits, w_bits, stride, padding)
    with K.use_kernel(kernel):
        got = K.bitconv2d(x, w, x_bits, w_bits, stride=stride, padding=padding, threads=threads)
        signed = K.bitconv2d_signed(x, K.pack_weights(w, w_bits), x_bits, stride, padding)
    np.testing.assert_array_equal(got, expected)
    n_w = (1 << w_bits) - 1
    ones = np.ones((1, *w.shape[1:]), np.uint8)
    field = R.bitconv2d(x, ones, x_bits, 1, stride, padding)  # S, the field's code sum
    np.testing.assert_array_equal(signed, 2 * expected - n_w * field)


@pytest.mark.parametrize("kernel", LUT)
@pytest.mark.parametrize(
    "c, k, x_bits",
    [(4200, 1, 6), (720, 3, 6), (1100, 3, 4), (4200, 1, 8)],
    ids=["1x1-c4200-a6", "3x3-c720-a6", "3x3-c1100-a4", "1x1-c4200-a8"],
)
def test_long_fields_cross_the_16_bit_flush(kernel, c, k, x_bits):
    rng = np.random.default_rng(c + k)
    x = rng.integers(0, 1 << x_bits, (1, c, 3, 4), dtype=np.uint8)
    w = rng.integers(0, 2, (20, c, k, k), dtype=np.uint8)
    _check(kernel, x, w, x_bits, 1, 1, k // 2)


@pytest.mark.parametrize("kernel", LUT)
@pytest.mark.parametrize("bits", [(1, 6), (2, 7), (3, 8), (8, 8)], ids=lambda b: f"w{b[0]}a{b[1]}")
def test_all_maximum_codes(kernel, bits):
    w_bits, x_bits = bits
    x = np.full((2, 300, 5, 5), (1 << x_bits) - 1, np.uint8)
    w = np.full((37, 300, 3, 3), (1 << w_bits) - 1, np.uint8)
    w[5] = 0  # one channel of zeros beside the maxima
    _check(kernel, x, w, x_bits, w_bits, 1, 1, threads=2)


def test_lut_cost_grows_with_weight_planes_and_slices():
    assert choose.lut_slices(6) == [6] and choose.lut_slices(7) == [4, 3]
    assert choose.lut_slices(8) == [4, 4]
    w1a2, w1a4, w2a4 = (choose.lut_lookups(w, a) for w, a in ((1, 2), (1, 4), (2, 4)))
    assert w1a2 < w1a4 < w2a4 == 2 * w1a4
    assert choose.lut_lookups(1, 8) > choose.lut_lookups(1, 6) > w1a4
