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


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k != "reference"])
def test_codes_chain_equals_its_calls(kernel):
    """native.CodesChain (the runtime's code runs): two requantizing convolutions around a
    max-pool in one call equal the three calls one by one; a bad code or a wrong channel count
    in its input raises as the first call would."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, (2, 6, 11, 11), dtype=np.uint8)
    layers = []
    for c, o, pad in ((6, 8, 1), (8, 5, 0)):
        pw = K.pack_weights(rng.integers(0, 2, (o, c, 3, 3), dtype=np.uint8), 1)
        th = np.sort(rng.integers(-30, 30, (o, 3)), axis=1).astype(np.int32)
        direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
        layers.append((K.prepare_conv(pw, 2, 1, pad, "requant", th, direction), pad))
    (first, _), (second, _) = layers
    chain = K._native.CodesChain([first.bound_call(kernel), (2, 2, 0), second.bound_call(kernel)])
    with K.use_kernel(kernel):
        expected = second(K.maxpool_codes(first(x), 2, 2, 0))
    for threads in (1, 2):
        np.testing.assert_array_equal(chain(x, threads), expected)
    with pytest.raises(ValueError, match="code 4"):
        chain(np.full_like(x, 4), 1)
    wide = K._native.CodesChain([first.bound_call(kernel), second.bound_call(kernel)])
    with pytest.raises(ValueError, match="channels"):
        wide(x[:, :5].copy(), 1)


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
    with pytest.raises(ValueError, match="stride must be an int in 1.."):
        K.prepare_conv(pw, 2, stride=0)
    with pytest.raises(ValueError, match="padding must be an int in 0.."):
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
