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
        with pytest.raises(ValueError, match="stride must be an int in 1.."):
            K.bitconv2d(x, w, 2, 1, stride=0)
        with pytest.raises(ValueError, match="padding must be an int in 0.."):
            K.bitconv2d(x, w, 2, 1, padding=-1)
        with pytest.raises(ValueError, match="threads must be an int in 1..1024"):
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


# ------------------------------------------------------------ empty inputs, huge paddings
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(1, 3, 8, 0), (1, 3, 0, 8), (0, 3, 8, 8)])
def test_empty_inputs_give_what_the_reference_gives(kernel, shape):
    """A map of width or height 0 padded to a real size (the int8 packer divided by the width:
    SIGFPE), and a batch of 0 images (a thread split clamped to 0 images: undefined)."""
    x = np.zeros(shape, np.uint8)
    w = np.random.default_rng(0).integers(0, 4, (4, 3, 3, 3), dtype=np.uint8)
    pw = K.pack_weights(w, 2)
    th = np.tile(np.array([[-5, 0, 5]], np.int32), (4, 1))
    d = np.ones(4, np.int8)
    want = R.bitconv2d_requant(x, pw, 2, 1, 5, th, d)
    with K.use_kernel(kernel):
        for threads in (1, 2):
            got = K.bitconv2d(x, w, 2, 2, padding=5, threads=threads)
            assert got.shape == want.shape and not got.any()
            signed = K.bitconv2d_signed(x, pw, 2, 1, 5, threads)
            assert np.array_equal(signed, R.bitconv2d_signed(x, pw, 2, 1, 5))
            assert np.array_equal(K.bitconv2d_requant(x, pw, 2, 1, 5, th, d, threads), want)


@pytest.mark.parametrize("kernel", NATIVE)
def test_a_padding_that_overflows_the_padded_size_is_refused(kernel):
    """(H + 2p)(W + 2p) at p = 2**31 - 4 is 2**64: it wrapped to 0, and the packing wrote past
    a buffer of that size (segfault)."""
    x = np.ones((1, 3, 8, 8), np.uint8)
    w = np.ones((4, 3, 3, 3), np.uint8)
    with K.use_kernel(kernel):
        for pad in (2**31 - 4, 2**61 - 4):
            with pytest.raises(ValueError, match=r"larger than 2\*\*40 elements"):
                K.bitconv2d(x, w, 2, 1, stride=2**32, padding=pad)
        if kernel.startswith("popcount"):  # the float layers run beside the popcount kernels
            xf = np.ones((1, 3, 8, 8), np.float32)
            wf, b = np.ones((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)
            with pytest.raises(ValueError, match=r"larger than 2\*\*40 elements"):
                K.conv_float(xf, wf, b, 2**32, 2**31 - 4)
            with pytest.raises(ValueError, match=r"larger than 2\*\*40 elements"):
                K.conv_float_quantize(xf, wf, b, 2**32, 2**31 - 4, 1, 2)


@pytest.mark.parametrize("kernel", KERNELS)
def test_ints_past_int64_are_refused_by_name(kernel):
    """Threads, strides and paddings at 2**63 and past reached pybind, whose TypeError listed
    the binding's signature; every entry point names the argument and its range."""
    from dorefa.kernels import training as T

    x, w = np.ones((2, 4, 5, 5), np.uint8), np.ones((2, 4, 3, 3), np.uint8)
    c = np.ones((2, 2, 5, 5), np.uint8)
    calls = {
        "bitconv2d": lambda **kw: K.bitconv2d(x, w, 2, 1, **kw),
        "input_grad_codes": lambda **kw: T.input_grad_codes(c, 6, w, 1, input_hw=(5, 5), **kw),
        "weight_grad_codes": lambda **kw: T.weight_grad_codes(c, 6, x, 2, kernel=(3, 3), **kw),
    }
    with K.use_kernel(kernel):
        for name, call in calls.items():
            for arg, value, bound in (
                ("threads", 2**63, "1..1024"),
                ("threads", 2**31, "1..1024"),
                ("stride", 2**63, "1..4611686018427387904"),
                ("padding", 2**64, "0..4611686018427387904"),
            ):
                kw = {"stride": 1, "padding": 1, "threads": 1, arg: value}
                with pytest.raises(ValueError, match=rf"^{arg} must be an int in {bound}, got"):
                    call(**kw)
                assert name


def test_float_helpers_refuse_what_they_would_cast():
    d = np.zeros((1, 2, 3, 3), np.int64)
    ones = np.ones(2, np.float32)
    for kernel in ("reference", *NATIVE[:1]):
        with K.use_kernel(kernel):
            for bad in (d + 2**31 + 5, d.astype(np.float32) + 2.7, d.astype(np.uint32)):
                with pytest.raises(TypeError, match="d must be an int32 array"):
                    K.scale_int_float(bad, ones, ones, False)
            x = np.ones((1, 2, 6, 6), np.float32)
            w, b = np.ones((3, 2, 3, 3), np.float32), np.zeros(3, np.float32)
            for pool, match in (((0, 1, 0), "pool kernel must be an int in 1.."),
                                ((2, 0, 0), "pool stride must be an int in 1.."),
                                ((2, 2, 2), "more than half the pool kernel")):  # fmt: skip
                with pytest.raises((TypeError, ValueError), match=match):
                    K.conv_float(x, w, b, 1, 0, pool=pool)
            with pytest.raises(ValueError, match="pool kernel must be an int in 1.."):
                K.maxpool_codes(np.zeros((1, 2, 4, 4), np.uint8), 0, 1, 0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_requant_thresholds_at_the_int32_ends(kernel):
    """All thresholds INT32_MIN (every code the top) or INT32_MAX (every code 0): the table's
    line fit added 1 to INT32_MAX in int32 (undefined; the sanitizer build stopped there)."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (2, 5, 6, 6), dtype=np.uint8)
    pw = K.pack_weights(rng.integers(0, 2, (3, 5, 3, 3), dtype=np.uint8), 1)
    d = np.array([1, -1, 1], np.int8)
    for end in (np.iinfo(np.int32).min, np.iinfo(np.int32).max):
        th = np.full((3, 3), end, np.int32)
        want = R.bitconv2d_requant(x, pw, 2, 1, 1, th, d)
        with K.use_kernel(kernel):
            assert np.array_equal(K.bitconv2d_requant(x, pw, 2, 1, 1, th, d), want)


def test_found_by_a_hostile_review_of_the_kernel_api():
    """An empty batch's input gradient when one output pixel sees the whole input (a reshape
    had nothing to infer -1 from); arguments every path now checks alike (some had met a raw
    pybind11 TypeError, others garbage under the reference kernel)."""
    from dorefa.kernels import training as T

    c, w = np.zeros((0, 2, 1, 1), np.uint8), np.ones((2, 3, 3, 3), np.uint8)
    for kernel in K.available_kernels():
        with K.use_kernel(kernel):
            assert T.input_grad_codes(c, 2, w, 1, 1, 0, (3, 3)).shape == (0, 3, 3, 3)
            m = np.zeros(0, np.float32)
            assert T.conv_input_grad(c, m, 2, w, 1.0, 1, 1, 0, (3, 3)).shape == (0, 3, 3, 3)
    codes = np.zeros((1, 2, 3, 3), np.uint8)
    for bad in (1.0, True, 2**63):
        with pytest.raises(ValueError, match="w_bits must be an int in 1..8"):
            T.input_grad_codes(codes, 2, w, bad, 1, 0, (5, 5))
    with pytest.raises(ValueError, match="threads must be an int in 1..1024"):
        K.prepare_conv(K.pack_weights(np.ones((2, 2, 3, 3), np.uint8), 1), 2)(
            np.zeros((1, 2, 5, 5), np.uint8), 2**40
        )
    with pytest.raises(ValueError, match="a kernel is named by a string"):
        K.set_backend(1)
    x = np.ones((1, 1, 4, 4), np.float32)
    for kernel in ("reference", K.available_kernels()[0]):
        with K.use_kernel(kernel):
            with pytest.raises(ValueError, match="pool kernel must be an int"):
                K.avgpool_float(x, 0, 1, 0)
            with pytest.raises(ValueError, match="pool padding 100 is more than half"):
                K.avgpool_float(x, 3, 1, 100)
            with pytest.raises(ValueError, match="bits must be an int in 1..8, got 9"):
                K.conv_float_quantize(x, np.ones((1, 1, 1, 1), np.float32), np.zeros(1), 1, 0, 1, 9)
            a, g = np.zeros((1, 3, 5, 5), np.uint8), np.zeros((2, 2, 3, 3), np.uint8)
            with pytest.raises(ValueError, match="same batch size, got 2 and 1"):
                T.weight_grad_codes(g, 2, a, 2, 1, 0, (3, 3))
            with pytest.raises(ValueError, match=r"kernel\[0\] must be an int"):
                T.weight_grad_codes(g[:1], 2, a, 2, 1, 0, (3.9, 3))


def test_an_empty_batch_on_two_threads():
    """Batch 0 with threads >= 2: the float first layer's band split divided by the batch
    size (SIGFPE killed the interpreter on AlexNet's and ResNet-18's stems)."""
    x, b = np.zeros((0, 3, 50, 50), np.float32), np.zeros(8, np.float32)
    for kernel in K.available_kernels():
        with K.use_kernel(kernel):
            w = np.ones((8, 3, 12, 12), np.float32)
            assert K.conv_float_quantize(x, w, b, 4, 0, 2, 2, 2).shape == (0, 8, 5, 5)
            w = np.ones((8, 3, 7, 7), np.float32)
            assert K.conv_float(x, w, b, 2, 3, 2).shape == (0, 8, 25, 25)
            w = np.ones((8, 3, 11, 11), np.float32)
            assert K.conv_float(x, w, b, 4, 0, 2).shape == (0, 8, 10, 10)
            codes = np.zeros((0, 16, 9, 9), np.uint8)
            assert K.bitconv2d(codes, np.ones((8, 16, 3, 3), np.uint8), 8, 8, 1, 1, 2).shape == (
                0, 8, 9, 9,
            )  # fmt: skip


@pytest.mark.parametrize("kernel", KERNELS)
def test_float_entry_points_refuse_what_does_not_fit_on_every_kernel(kernel):
    """Found by a hostile review: the reference kernel (what runs when the extension cannot
    load) computed a conv whose weight had more channels than x, took a bias of the wrong
    length, a pool wider than its input and 0 threads, where the native kernels refuse them;
    every path took string arrays and bool threads."""
    x = np.random.default_rng(0).random((1, 2, 5, 5), np.float32)
    w, b = np.ones((4, 2, 3, 3), np.float32), np.zeros(4, np.float32)
    bad = [
        (lambda: K.conv_float(x, np.ones((4, 3, 3, 3), np.float32), b, 1, 1), "3 input channels"),
        (lambda: K.conv_float(x, w, b[:1], 1, 1), r"one value per output channel \(4,\)"),
        (lambda: K.conv_float(x, np.ones((4, 2, 9, 9), np.float32), b, 1, 1), "kernel 9x9 is"),
        (lambda: K.conv_float(x, w, b, 1, 1, pool=(7, 7, 0)), "pool 7x7 is larger"),
        (lambda: K.conv_float_quantize(x, w, b, 1, 1, 9, 4), "pool 9 is larger than"),
        (lambda: K.maxpool_codes(np.ones((1, 1, 1, 1), np.uint8), 2, 2, 0), "larger than its"),
        (lambda: K.maxpool_float(x, 8, 1, 1), "pool 8x8 is larger than its input 5x5"),
        (lambda: K.avgpool_float(x, 8, 1, 1), "pool 8x8 is larger than its input 5x5"),
        (lambda: K.linear_float(x[0, 0], w[:, 0, 0], b[:1]), r"must agree"),
        (lambda: K.quantize_float(x, 2, threads=0), "threads must be an int in 1"),
        (lambda: K.maxpool_float(x, 2, 2, 0, threads=True), "threads must be an int in 1"),
    ]
    with K.use_kernel(kernel):
        for call, message in bad:
            with pytest.raises(ValueError, match=message):
                call()
        for call in (
            lambda: K.quantize_float(x.astype(str), 2),
            lambda: K.affine_float(x.astype(complex), np.ones(2), np.zeros(2)),
            lambda: K.conv_float(x > 0.5, w, b, 1, 1),
        ):
            with pytest.raises(TypeError, match="must hold real numbers"):
                call()
        y = K.conv_float(x.astype(np.float64), w, b, 1, 1)  # numbers of another type: cast
        assert y.shape == (1, 4, 5, 5) and y.dtype == np.float32
