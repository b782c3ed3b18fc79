"""Bit-convolution kernels: the requant epilogue fused into the tile kernels, bit-exact against
the NumPy reference (the spec) on every kernel of this CPU over the awkward shapes and over
planes longer than the output passes' runs, and the int8 weight layout the int8 kernels read
(blocks padded with zeros to whole AMX tiles). The other outputs: test_kernels.py. No torch
here: the kernels serve the torch-free runtime.
"""

from __future__ import annotations

import numpy as np
import pytest

from dorefa import kernels as K
from dorefa.kernels import reference as R
from kernel_cases import KERNELS, NATIVE, SHAPES, case, ids


# ------------------------------------------------------------------------- fused epilogue
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_requant_all_shapes(kernel, shape):
    """The requant epilogue fused into the tile kernels, over the awkward shapes."""
    x, w, _ = case(shape, 2, 1)
    pw = R.pack_weights(w, 1)
    o = w.shape[0]
    d = R.bitconv2d_signed(x, pw, 2, shape[6], shape[7])
    rng = np.random.default_rng(7)
    th = np.sort(rng.choice(np.unique(d), size=(o, 3)), axis=1).astype(np.int32)
    th[0] = [np.iinfo(np.int32).min, 0, np.iinfo(np.int32).max]  # extremes fold exactly
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    expected = R.bitconv2d_requant(x, pw, 2, shape[6], shape[7], th, direction)
    with K.use_kernel(kernel):
        got = K.bitconv2d_requant(x, pw, 2, shape[6], shape[7], th, direction)
        signed = K.bitconv2d_signed(x, pw, 2, shape[6], shape[7])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(signed, d)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("out_bits", [2, 4])
def test_transforms_over_long_planes(kernel, out_bits):
    """Signed and requant outputs of planes longer than the output passes' runs (64 and 256
    outputs): 342 outputs a plane, two images, thresholds of both directions."""
    shape = (2, 5, 19, 18, 7, 3, 1, 1)
    x, w, _ = case(shape, 2, 1)
    pw = R.pack_weights(w, 1)
    d = R.bitconv2d_signed(x, pw, 2, 1, 1)
    rng = np.random.default_rng(out_bits)
    th = np.sort(rng.choice(np.unique(d), size=(7, (1 << out_bits) - 1)), axis=1)
    direction = np.where(np.arange(7) % 2 == 0, 1, -1).astype(np.int8)
    th = np.where(direction[:, None] < 0, th[:, ::-1], th).astype(np.int32)
    expected = R.bitconv2d_requant(x, pw, 2, 1, 1, th, direction)
    with K.use_kernel(kernel):
        np.testing.assert_array_equal(K.bitconv2d_signed(x, pw, 2, 1, 1), d)
        np.testing.assert_array_equal(K.bitconv2d_requant(x, pw, 2, 1, 1, th, direction), expected)


@pytest.mark.skipif(
    not any(k.startswith("int8-") for k in NATIVE), reason="no int8 kernel in this build"
)
def test_int8_weight_layout_pads_each_block_to_whole_amx_tiles():
    """The int8 layout (csrc/int8conv.h) on every CPU that runs an int8 kernel: per block of 16
    output channels, gstride = groups rounded up to 16 groups of 4 channels (one AMX B tile
    each, int8conv_amx.cpp), the codes at [block][group][lane][channel % 4], zeros elsewhere;
    then Wsum and the per-tap sums. int8-amx reads whole tiles, so its exactness rests on the
    padding being zero; this pins the layout where no AMX runs too."""
    kernel = next(k for k in NATIVE if k.startswith("int8-"))
    rng = np.random.default_rng(3)
    o, c, kh, kw = 20, 5, 3, 3
    w = rng.integers(1, 256, (o, c, kh, kw), dtype=np.uint8)  # no zero codes
    words = K.weight_words(K.pack_weights(w, 8), kernel)
    cp = 8  # channels padded to a multiple of 4
    groups, blocks, taps = kh * kw * cp // 4, 2, kh * kw
    gstride = (groups + 15) // 16 * 16
    assert (groups, gstride) == (18, 32)
    body = words.view(np.uint8)[: blocks * gstride * 64].reshape(blocks, gstride, 16, 4)
    expect = np.zeros_like(body)
    wp = np.zeros((blocks * 16, cp, kh, kw), np.uint8)
    wp[:o, :c] = w
    # group j = tap * cp / 4 + channel / 4, byte i = channel % 4
    per_tap = wp.transpose(0, 2, 3, 1).reshape(blocks, 16, taps * cp // 4, 4)
    expect[:, :groups] = per_tap.transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(body, expect)
    sums = words.view(np.uint8)[blocks * gstride * 64 :].view(np.int32)
    assert len(sums) == blocks * 16 * (1 + taps)
    np.testing.assert_array_equal(sums[:o], w.reshape(o, -1).sum(axis=1, dtype=np.int64))
