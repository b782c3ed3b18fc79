"""Prepared convolutions (dorefa.kernels.prepare_conv): checked once, called per batch, on
every kernel; the same results as the reference, the same errors as the one-shot calls."""

from __future__ import annotations

import numpy as np
import pytest

from dorefa import kernels as K
from dorefa.kernels import reference as R
from kernel_cases import FEW_SHAPES, KERNELS, case, ids


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", FEW_SHAPES, ids=ids)
def test_prepared_conv_matches_the_reference(kernel, shape):
    x, w, acc = case(shape, 2, 1)
    s, p, o = shape[6], shape[7], shape[4]
    rng = np.random.default_rng(11)
    with K.use_kernel(kernel):
        pw = K.pack_weights(w, 1)
        signed = R.bitconv2d_signed(x, pw, 2, s, p)
        th = np.sort(rng.choice(np.unique(signed), (o, 3)), axis=1).astype(np.int32)
        direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
        codes = R.bitconv2d_requant(x, pw, 2, s, p, th, direction)
        convs = {
            "acc": (K.prepare_conv(pw, 2, s, p), acc),
            "signed": (K.prepare_conv(pw, 2, s, p, out="signed"), signed),
            "requant": (K.prepare_conv(pw, 2, s, p, "requant", th, direction), codes),
        }
        for conv, expected in convs.values():
            for threads in (1, 2):
                np.testing.assert_array_equal(conv(x, threads), expected)
            # Inputs the native kernels do not take as they are: checked and converted first.
            np.testing.assert_array_equal(conv(np.asfortranarray(x), np.int64(2)), expected)
            assert K.last_kernel() == kernel


def test_prepare_conv_checks_everything_but_the_input_once():
    w = np.ones((2, 4, 3, 3), np.uint8)
    pw = K.pack_weights(w, 1)
    th, ones = np.zeros((2, 1), np.int32), np.ones(2, np.int8)
    with pytest.raises(ValueError, match="out must be one of acc, signed, requant, got 'codes'"):
        K.prepare_conv(pw, 2, out="codes")
    with pytest.raises(ValueError, match="out='requant' needs thresholds"):
        K.prepare_conv(pw, 2, out="requant")
    with pytest.raises(ValueError, match="thresholds and direction belong to out='requant'"):
        K.prepare_conv(pw, 2, out="signed", thresholds=th, direction=ones)
    with pytest.raises(ValueError, match="direction values must be"):
        K.prepare_conv(pw, 2, out="requant", thresholds=th, direction=ones * 0)
    with pytest.raises(ValueError, match="x_bits must be an int in 1..8, got 9"):
        K.prepare_conv(pw, 9)
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        K.prepare_conv(pw, 2, stride=0)
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        K.prepare_conv(pw, 2, padding=-1)
    with pytest.raises(TypeError, match="pack_weights"):
        K.prepare_conv(w, 2)
    with pytest.raises(ValueError, match="exceeds int32"):
        K.prepare_conv(K.pack_weights(np.zeros((1, 4096, 3, 3), np.uint8), 8), 8)
    conv = K.prepare_conv(pw, 2, padding=1)
    assert repr(conv) == "PreparedConv(4->2 3x3 /1 pad 1 W1 A2 -> acc)"
    for kernel in KERNELS:
        with K.use_kernel(kernel):
            with pytest.raises(ValueError, match="x_codes has 3 channels but the weights expect 4"):
                conv(np.ones((1, 3, 5, 5), np.uint8))
            with pytest.raises(ValueError, match="x_codes must be 4-D"):
                conv(np.ones((4, 5, 5), np.uint8))
            with pytest.raises(ValueError, match=r"x_codes holds code 4 >= 2\*\*2"):
                conv(np.full((1, 4, 5, 5), 4, np.uint8))
            with pytest.raises(TypeError, match="uint8"):
                conv(np.ones((1, 4, 5, 5), np.int32))
