"""Bit-convolution kernels: the argument checks of every kernel's entry points and of the
native extension called directly (wrong types, codes, bits, shapes, strides, paddings, threads,
thresholds, kernel names: each raises, never crashes). Exactness: test_kernels.py. No torch
here: the kernels serve the torch-free runtime.
"""

from __future__ import annotations

import numpy as np
import pytest

from dorefa import kernels as K
from dorefa.kernels import reference as R
from kernel_cases import KERNELS, NATIVE


# ------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kernel", KERNELS)
def test_errors(kernel):
    x = np.ones((1, 4, 5, 5), np.uint8)
    w = np.ones((2, 4, 3, 3), np.uint8)
    with K.use_kernel(kernel):
        with pytest.raises(TypeError, match="uint8"):
            K.bitconv2d(x.astype(np.int32), w, 2, 1)
        with pytest.raises(TypeError, match="uint8"):
            K.bitconv2d(x, w.astype(np.float32), 2, 1)
        with pytest.raises(TypeError, match="numpy uint8 array"):
            K.bitconv2d(x.tolist(), w, 2, 1)
        with pytest.raises(ValueError, match=r"x_codes holds code 4 >= 2\*\*2"):
            K.bitconv2d(x * 4, w, 2, 1)
        with pytest.raises(ValueError, match=r"w_codes holds code 2 >= 2\*\*1"):
            K.bitconv2d(x, w * 2, 2, 1)
        with pytest.raises(ValueError, match=r"w_codes holds code 2 >= 2\*\*1"):
            K.bitconv2d(x, w[:, :, :1, :1] * 2, 2, 1)  # 1x1 (the int8 packers' 1x1 path)
        for bad in (0, 9):
            with pytest.raises(ValueError, match=rf"x_bits must be an int in 1..8, got {bad}"):
                K.bitconv2d(x, w, bad, 1)
            with pytest.raises(ValueError, match=rf"w_bits must be an int in 1..8, got {bad}"):
                K.bitconv2d(x, w, 1, bad)
        with pytest.raises(TypeError, match="x_bits must be an int"):
            K.bitconv2d(x, w, 2.0, 1)
        with pytest.raises(ValueError, match="x_codes has 3 channels but the weights expect 4"):
            K.bitconv2d(x[:, :3], w, 2, 1)
        with pytest.raises(ValueError, match="kernel 3x3 larger than the padded input 2x2"):
            K.bitconv2d(x[:, :, :2, :2], w, 2, 1)
        with pytest.raises(ValueError, match="4-D"):
            K.bitconv2d(x[0], w, 2, 1)
        with pytest.raises(ValueError, match="stride must be an int >= 1"):
            K.bitconv2d(x, w, 2, 1, stride=0)
        with pytest.raises(ValueError, match="padding must be an int >= 0"):
            K.bitconv2d(x, w, 2, 1, padding=-1)
        with pytest.raises(ValueError, match="threads must be an int >= 1"):
            K.bitconv2d(x, w, 2, 1, threads=0)
        with pytest.raises(ValueError, match="exceeds int32"):
            big = np.zeros((1, 4096, 3, 3), np.uint8)
            K.bitconv2d(big, np.zeros((1, 4096, 3, 3), np.uint8), 8, 8)
        pw = K.pack_weights(w, 1)
        th = np.zeros((2, 3), np.int32)
        with pytest.raises(ValueError, match="direction values must be"):
            K.bitconv2d_requant(x, pw, 2, 1, 0, th, np.zeros(2, np.int8))
        with pytest.raises(ValueError, match=r"thresholds must have shape \(2, T\)"):
            K.bitconv2d_requant(x, pw, 2, 1, 0, th[:1], np.ones(2, np.int8))
        with pytest.raises(TypeError, match="thresholds must be a numpy int32"):
            K.bitconv2d_requant(x, pw, 2, 1, 0, th.astype(np.int64), np.ones(2, np.int8))
        with pytest.raises(TypeError, match="pack_weights"):
            K.bitconv2d_packed(x, w, 2)


def test_native_rejects_bad_direct_calls():
    """The extension validates on its own too: wrong sizes raise, never crash."""
    if not NATIVE:
        pytest.skip("no native kernel")
    x = np.ones((1, 4, 5, 5), np.uint8)
    words = K.pack_weights(np.ones((2, 4, 3, 3), np.uint8), 1).words
    scalar = NATIVE[-1]
    with pytest.raises(ValueError, match="packed weights do not match"):
        K._native.bitconv(scalar, x, words, 2, 4, 3, 5, 1, 1, 1, 0, 1, "acc")
    with pytest.raises(ValueError, match="channels"):
        K._native.bitconv(scalar, x, words, 2, 8, 3, 3, 1, 1, 1, 0, 1, "acc")
    with pytest.raises(ValueError, match="mode must be acc, signed or requant"):
        K._native.bitconv(scalar, x, words, 2, 4, 3, 3, 1, 1, 1, 0, 1, "codes")
    with pytest.raises(ValueError, match="requant needs thresholds and direction"):
        K._native.bitconv(scalar, x, words, 2, 4, 3, 3, 1, 1, 1, 0, 1, "requant")
    with pytest.raises(ValueError, match="unknown kernel backend 'neon'"):
        K._native.bitconv("neon", x, words, 2, 4, 3, 3, 1, 1, 1, 0, 1, "acc")
    with pytest.raises(ValueError, match="'reference' is the NumPy kernel"):
        K._native.bitconv("reference", x, words, 2, 4, 3, 3, 1, 1, 1, 0, 1, "acc")


def test_prepared_native_call():
    """native.PreparedBitConv (a prepared layer's bound call): an unknown kernel fails when it is
    made; it checks each input as bitconv does; it keeps its RequantTable alive; its results are
    bitconv's."""
    if not NATIVE:
        pytest.skip("no native kernel")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (2, 4, 5, 5), dtype=np.uint8)
    pw = K.pack_weights(rng.integers(0, 2, (2, 4, 3, 3), dtype=np.uint8), 1)
    scalar = NATIVE[-1]
    with pytest.raises(ValueError, match="unknown kernel backend 'neon'"):
        K._native.PreparedBitConv("neon", pw.words, 2, 4, 3, 3, 2, 1, 1, 0, "acc")
    call = K._native.PreparedBitConv(scalar, pw.words, 2, 4, 3, 3, 2, 1, 1, 0, "signed")
    np.testing.assert_array_equal(call(x, 1), K._native.bitconv(
        scalar, x, pw.words, 2, 4, 3, 3, 2, 1, 1, 0, 1, "signed"))  # fmt: skip
    with pytest.raises(ValueError, match="channels"):
        call(np.ones((1, 3, 5, 5), np.uint8), 1)
    with pytest.raises(ValueError, match="code 4"):
        call(np.full((1, 4, 5, 5), 4, np.uint8), 1)
    th = np.array([[-3, 0, 4], [-1, 2, 6]], np.int32)
    direction = np.array([1, -1], np.int8)
    table = K._native.RequantTable(th, direction)
    codes = K._native.PreparedBitConv(scalar, pw.words, 2, 4, 3, 3, 2, 1, 1, 0, "requant", table)
    del table
    np.testing.assert_array_equal(codes(x, 2), R.bitconv2d_requant(x, pw, 2, 1, 0, th, direction))
