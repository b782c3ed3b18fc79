"""Dense receptive fields (csrc/fields.h): a popcount convolution whose channels leave part of
each 64-bit word empty, run as a 1 x 1 convolution over each output pixel's field packed
without gaps. The same integers as the reference on every popcount kernel, every output mode,
1 and 2 threads; and the rule that picks it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dorefa import kernels as K
from dorefa.kernels import prepared
from dorefa.kernels import reference as R
from dorefa.kernels.extension import native
from kernel_cases import NATIVE

POPCOUNT = [k for k in NATIVE if k.startswith("popcount")]
BYTE_LAYOUTS = [k for k in NATIVE if not k.startswith("popcount")]  # int8 and lut: no fields


def _check(kernel, n, c, h, w, o, kh, kw, stride, padding, x_bits, w_bits, seed):
    """fields=True on `kernel` against the reference, acc / signed / requant, 1 and 2 threads."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 1 << x_bits, (n, c, h, w), dtype=np.uint8)
    pw = R.pack_weights(rng.integers(0, 1 << w_bits, (o, c, kh, kw), dtype=np.uint8), w_bits)
    words = prepared.weight_words(pw, kernel, fields=True)
    signed = R.bitconv2d_signed(x, pw, x_bits, stride, padding)
    steps = np.unique(signed) if signed.size else np.arange(-4, 5)  # (no image: any steps)
    th = np.sort(rng.choice(steps, (o, 3)), axis=1).astype(np.int32)
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    expected = {
        "acc": R.bitconv2d_packed(x, pw, x_bits, stride, padding),
        "signed": signed,
        "requant": R.bitconv2d_requant(x, pw, x_bits, stride, padding, th, direction),
    }
    head = (kernel, x, words, o, c, kh, kw, x_bits, w_bits, stride, padding)
    for mode, want in expected.items():
        req = (th, direction) if mode == "requant" else (None, None)
        for threads in (1, 2):
            got = native.bitconv(*head, threads, mode, *req, None, True)
            np.testing.assert_array_equal(got, want, err_msg=f"{kernel} {mode} {threads}")


# (N, C, H, W, O, KH, KW, stride, padding): whole-byte taps of one word (AlexNet conv1's 48
# channels, 8, 56), taps of bits (3, 20, 63), taps of several words (65, 96, 130), kernel rows
# of 1-9 taps (the VPERMB path takes up to 8), non-square kernels, strides, paddings, batches.
SHAPES = [
    (1, 48, 13, 13, 20, 5, 5, 1, 2),
    (2, 48, 9, 11, 9, 3, 3, 1, 1),
    (1, 8, 10, 7, 17, 3, 3, 2, 1),
    (1, 56, 6, 9, 8, 2, 3, 1, 0),
    (2, 3, 12, 12, 16, 3, 3, 1, 1),
    (1, 20, 8, 8, 9, 1, 5, 1, 2),
    (1, 63, 7, 6, 24, 3, 3, 3, 2),
    (1, 65, 6, 6, 8, 3, 3, 1, 1),
    (3, 96, 5, 7, 12, 3, 2, 1, 1),
    (1, 130, 5, 5, 33, 2, 2, 2, 0),
    (1, 16, 11, 14, 8, 1, 9, 1, 4),
    (1, 40, 9, 20, 8, 1, 8, 1, 0),
    (1, 24, 10, 4, 8, 5, 1, 1, 2),
    (1, 64, 3, 10, 8, 1, 8, 1, 0),  # whole words: a kernel row of 64 bytes
    (0, 48, 5, 5, 8, 3, 3, 1, 1),  # no image
]


@pytest.mark.parametrize("kernel", POPCOUNT)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n{}c{}h{}w{}o{}k{}x{}s{}p{}".format(*s))
@pytest.mark.parametrize("bits", [(2, 1), (1, 1), (3, 2), (8, 8)])
def test_dense_fields_match_the_reference(kernel, shape, bits):
    _check(kernel, *shape, *bits, seed=sum(shape) + 10 * bits[0] + bits[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 140),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    o=st.integers(1, 30),
    kh=st.integers(1, 5),
    kw=st.integers(1, 9),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
    x_bits=st.sampled_from([1, 2, 4]),
    w_bits=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_dense_fields(n, c, h, w, o, kh, kw, stride, padding, x_bits, w_bits, seed):
    if h + 2 * padding < kh or w + 2 * padding < kw:
        return
    for kernel in POPCOUNT:
        _check(kernel, n, c, h, w, o, kh, kw, stride, padding, x_bits, w_bits, seed)


def test_batches_whose_fields_pass_the_buffer_run_in_chunks_of_images():
    """With the field buffer set to less than two images' fields, a batch of 5 runs in chunks
    (csrc/run_conv.cpp RunFields): the same outputs in every mode."""
    per_image = 2 * 9 * 9 * 7 * 8  # planes x output pixels x L' words (48 x 3 x 3 bits: 7)
    old = native.field_buffer_bytes(per_image + 1)
    try:
        for kernel in POPCOUNT:
            _check(kernel, 5, 48, 9, 9, 16, 3, 3, 1, 1, 2, 1, seed=3)
        native.field_buffer_bytes(1)  # less than one image: one image at a time
        _check(POPCOUNT[0], 3, 48, 9, 9, 16, 3, 3, 1, 1, 2, 1, seed=4)
    finally:
        assert native.field_buffer_bytes(old) == 1
    assert native.field_buffer_bytes() == old


def test_the_rule_takes_dense_fields_where_they_pay():
    pay = prepared.dense_fields_pay
    assert pay((128, 48, 5, 5), 1)  # AlexNet conv1's groups: 19 words a field instead of 25
    assert pay((64, 48, 3, 3), 1)  # svhn's 48->64: 7 instead of 9
    assert pay((16, 16, 3, 3), 1)  # 3 instead of 9
    assert not pay((8, 48, 3, 3), 1)  # one channel block: building the fields costs more
    assert not pay((64, 100, 3, 3), 1)  # 15 instead of 18, taps shifted bit by bit
    assert not pay((256, 48, 1, 1), 1)  # 1 x 1: nothing to save
    assert not pay((384, 256, 3, 3), 1)  # whole words: nothing to save


@pytest.mark.parametrize("kernel", [*NATIVE, "reference"])
def test_prepared_layers_take_dense_fields_with_the_same_results(kernel, monkeypatch):
    """AlexNet conv1's shape in small: the prepared layer runs over dense fields on the
    popcount kernels and gives what it gives without them and what the reference gives."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, (2, 48, 9, 9), dtype=np.uint8)
    pw = R.pack_weights(rng.integers(0, 2, (64, 48, 5, 5), dtype=np.uint8), 1)
    expected = R.bitconv2d_signed(x, pw, 2, 1, 2)
    with K.use_kernel(kernel):
        dense = K.prepare_conv(pw, 2, 1, 2, "signed")
        monkeypatch.setattr(prepared, "DENSE_FIELDS", False)
        plain = K.prepare_conv(pw, 2, 1, 2, "signed")
        for conv in (dense, plain):
            np.testing.assert_array_equal(conv(x, 2), expected)
    assert dense.fields and "dense fields" in repr(dense)
    assert not plain.fields
    assert "fields" in pw.layouts or kernel == "reference" or kernel in BYTE_LAYOUTS


def test_dense_fields_errors():
    x = np.zeros((1, 48, 6, 6), np.uint8)
    pw = R.pack_weights(np.ones((16, 48, 3, 3), np.uint8), 1)
    args = (x, pw.words, 16, 48, 3, 3, 2, 1, 1, 1, 1, "acc", None, None, None, True)
    with pytest.raises(ValueError, match=r"transpose\(0, 2, 3, 1\)"):
        native.bitconv(POPCOUNT[0], *args)  # the word-per-tap weights
    for kernel in BYTE_LAYOUTS:
        with pytest.raises(ValueError, match="popcount kernels only"):
            native.bitconv(kernel, *args)
