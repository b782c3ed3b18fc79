"""Bit-convolution kernels: every kernel bit-exact against the NumPy reference (the spec).

Runs each case on every kernel of the table this CPU runs, plus 'reference': the cases are
parametrized over ``available_kernels()`` (the supported rows of ``kernel_table()``), so a new
table entry is tested as soon as it is added (the table itself and the choice of a kernel:
test_kernel_selection.py; prepared calls: test_prepared_conv.py; the float layers:
test_float_layers.py; the fused requant epilogue over the awkward shapes and the int8 weight
layout: test_fused_epilogue.py; argument checks: test_kernel_errors.py; shared cases:
kernel_cases.py). No torch here: the kernels serve the torch-free runtime.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dorefa import kernels as K
from dorefa.kernels import reference as R
from kernel_cases import (
    ALL_BIT_PAIRS,
    BITS,
    FEW_BITS,
    FEW_SHAPES,
    KERNELS,
    NATIVE,
    SHAPES,
    case,
    direct_float64,
    ids,
)


# ------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("shape", FEW_SHAPES + [SHAPES[0], SHAPES[8]], ids=ids)
@pytest.mark.parametrize("bits", [(1, 1), (2, 3), (8, 8)])
def test_reference_matches_direct_float64_conv(shape, bits):
    x, w, expected = case(shape, *bits)
    assert expected.dtype == np.int32
    np.testing.assert_array_equal(expected, direct_float64(x, w, shape[6], shape[7]))


def test_reference_signed_is_affine_weight_dot():
    x, w, _ = case(SHAPES[3], 2, 3)
    pw = R.pack_weights(w, 3)
    signed_w = 2.0 * w - 7.0  # 2p - nw, nw = 2**3 - 1
    got = R.bitconv2d_signed(x, pw, 2, stride=2, padding=1)
    np.testing.assert_array_equal(got, direct_float64(x, signed_w, 2, 1))


# ------------------------------------------------------------------------- every kernel
def test_native_extension_is_built():
    assert K._native is not None, f"dorefa._kernels failed to import: {K._native_error}"
    assert NATIVE and NATIVE[-1] == "popcount-scalar/portable"
    forced = os.environ.get("DOREFA_KERNELS_EXTENSION")  # make asan: the sanitizer build
    if forced:
        assert os.path.samefile(K._native.__file__, forced)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", ALL_BIT_PAIRS, ids=lambda b: f"x{b[0]}w{b[1]}")
@pytest.mark.parametrize("shape", FEW_SHAPES[:2], ids=ids)
def test_all_bit_pairs(kernel, bits, shape):
    x, w, expected = case(shape, *bits)
    with K.use_kernel(kernel):
        got = K.bitconv2d(x, w, *bits, stride=shape[6], padding=shape[7])
    assert got.dtype == np.int32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


EVERY_BIT_PAIR = [(xb, wb) for xb in range(1, 9) for wb in range(1, 9)]

# W8A8 on outputs of few pixels: svhn conv6 (one pixel, 128 -> 512 over a 5x5 field), fields
# whose rows end in a tail of bytes (50 channels: 52-byte groups), 1x1 fields of 3 channel
# blocks, and a padded 5x5 map whose border classes leave single pixels (on int8-avx2 these run
# the activations' nibble split, four channel blocks a call).
FEW_PIXEL_W8A8 = [
    (1, 128, 5, 5, 512, 5, 1, 0),
    (2, 50, 3, 3, 40, 3, 1, 0),
    (3, 7, 1, 1, 33, 1, 1, 0),
    (1, 20, 5, 5, 72, 3, 1, 1),
]


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("shape", FEW_PIXEL_W8A8, ids=ids)
@pytest.mark.parametrize("codes", ["extreme", "random"])
def test_w8a8_few_pixels(kernel, shape, codes):
    n, c, h, w, o, k, stride, pad = shape
    rng = np.random.default_rng(o)
    if codes == "extreme":  # every pair sum at its bound: 0 / 255 activations and weights
        x = (rng.random((n, c, h, w)) < 0.5).astype(np.uint8) * 255
        wc = (rng.random((o, c, k, k)) < 0.5).astype(np.uint8) * 255
    else:
        x = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
        wc = rng.integers(0, 256, (o, c, k, k), dtype=np.uint8)
    pw = K.pack_weights(wc, 8)
    expected = R.bitconv2d_signed(x, pw, 8, stride, pad)
    with K.use_kernel(kernel):
        for threads in (1, 2):
            got = K.bitconv2d_signed(x, pw, 8, stride, pad, threads=threads)
            np.testing.assert_array_equal(got, expected)
        acc = K.bitconv2d_packed(x, pw, 8, stride, pad)
    np.testing.assert_array_equal(acc, R.bitconv2d_packed(x, pw, 8, stride, pad))


def assert_every_output(kernel, x, pw, xb, rng, thresholds, threads=1):
    """The kernel's acc (on `threads` threads), signed and requant outputs of a stride-1,
    padding-1 layer equal the reference's; random sorted thresholds, random directions."""
    o = pw.shape[0]
    signed = R.bitconv2d_signed(x, pw, xb, 1, 1)
    th = np.sort(rng.integers(signed.min(), signed.max() + 1, (o, thresholds)), axis=1)
    th = th.astype(np.int32)
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    with K.use_kernel(kernel):
        np.testing.assert_array_equal(
            K.bitconv2d_packed(x, pw, xb, 1, 1, threads=threads),
            R.bitconv2d_packed(x, pw, xb, 1, 1),
        )
        np.testing.assert_array_equal(K.bitconv2d_signed(x, pw, xb, 1, 1), signed)
        np.testing.assert_array_equal(
            K.bitconv2d_requant(x, pw, xb, 1, 1, th, direction),
            R.bitconv2d_requant(x, pw, xb, 1, 1, th, direction),
        )


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("bits", EVERY_BIT_PAIR, ids=lambda b: f"x{b[0]}w{b[1]}")
def test_every_bit_pair_at_the_extreme_codes(kernel, bits):
    """All 64 bit pairs with codes at 0 and at their maximum only, so that every receptive
    field holds runs of the largest products: the int8 kernels' int16 pair sums and int16
    accumulation (int8-avx2) and the shifted activations (x_bits 7, 8) sit at their bounds.
    Acc, signed and requant against the reference."""
    xb, wb = bits
    rng = np.random.default_rng([xb, wb])
    x = ((1 << xb) - 1) * rng.integers(0, 2, (2, 37, 6, 7), dtype=np.uint8)
    x[0] = (1 << xb) - 1
    w = ((1 << wb) - 1) * rng.integers(0, 2, (19, 37, 3, 3), dtype=np.uint8)
    w[:2] = (1 << wb) - 1
    assert_every_output(kernel, x, R.pack_weights(w, wb), xb, rng, thresholds=3, threads=2)


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("bits", [(1, 1), (2, 1), (3, 2), (8, 8)], ids=lambda b: f"x{b[0]}w{b[1]}")
@pytest.mark.parametrize("field", [(256, 3, 3), (200, 5, 3)], ids=lambda f: "c{}k{}x{}".format(*f))
def test_long_fields_at_the_extreme_codes(kernel, bits, field):
    """Receptive fields of 36 and 60 words a bit plane, codes at their maximum in one image and
    0 in another: the byte counters' folds (every 31 words on popcount-avx2) and the int16
    sums' (every 8 groups on int8-avx2's W8A8 nibbles, whose shifted zero codes give the most
    negative pair sums) fall inside kernel rows and between them, at full counts."""
    (xb, wb), (c, kh, kw) = bits, field
    rng = np.random.default_rng([xb, wb, c])
    x = ((1 << xb) - 1) * rng.integers(0, 2, (3, c, 5, 6), dtype=np.uint8)
    x[0], x[2] = (1 << xb) - 1, 0
    w = ((1 << wb) - 1) * rng.integers(0, 2, (19, c, kh, kw), dtype=np.uint8)
    w[:2] = (1 << wb) - 1
    pw = R.pack_weights(w, wb)
    with K.use_kernel(kernel):
        np.testing.assert_array_equal(
            K.bitconv2d_packed(x, pw, xb, 1, 1), R.bitconv2d_packed(x, pw, xb, 1, 1)
        )
        np.testing.assert_array_equal(
            K.bitconv2d_signed(x, pw, xb, 1, 1), R.bitconv2d_signed(x, pw, xb, 1, 1)
        )


@pytest.mark.parametrize("kernel", NATIVE)
def test_outputs_past_a_megabyte(kernel):
    """int32 outputs of more than 1 MiB a call, where the int8 and lut stores fetch their lines
    ahead (int8conv.cpp, kPrefetchOutputBytes): the same integers, to the last output."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 16, (3, 16, 47, 46), dtype=np.uint8)
    w = rng.integers(0, 2, (70, 16, 3, 3), dtype=np.uint8)
    pw = R.pack_weights(w, 1)
    with K.use_kernel(kernel):
        got = K.bitconv2d_packed(x, pw, 4, 1, 1)
        signed = K.bitconv2d_signed(x, pw, 4, 1, 1)
    assert got.nbytes > 1 << 20
    np.testing.assert_array_equal(got, R.bitconv2d_packed(x, pw, 4, 1, 1))
    np.testing.assert_array_equal(signed, R.bitconv2d_signed(x, pw, 4, 1, 1))


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("bits", [(8, 8), (8, 3), (2, 1)], ids=lambda b: f"x{b[0]}w{b[1]}")
@pytest.mark.parametrize("hw", [(30, 29), (7, 6)], ids=lambda s: "h{}w{}".format(*s))
def test_padding_summed_or_skipped(kernel, bits, hw):
    """Padded layers where the padding is a small share of the taps (4%) and a large one
    (20%). The int8 kernels leave the padding's taps out, in tiles of pixels with the same taps
    (for 8-bit activations starting their sums at the skipped taps' correction); the others sum
    it as code 0: acc, signed and requant exact either way."""
    (xb, wb), (h, w) = bits, hw
    rng = np.random.default_rng([xb, wb, h])
    x = rng.integers(0, 1 << xb, (3, 20, h, w), dtype=np.uint8)
    wc = rng.integers(0, 1 << wb, (40, 20, 3, 3), dtype=np.uint8)
    wc[0] = (1 << wb) - 1
    assert_every_output(kernel, x, K.pack_weights(wc, wb), xb, rng, thresholds=5)


# Stride-1 layers whose kernel rows are whole 64-byte steps or whose taps are few enough to be
# one step each (48 and 44 channels; int8-amx reads their fields straight from the packed
# image, in strips across output rows: int8conv_amx.cpp), beside the
# packed rows' shared padding (int8conv.h) that every int8 and lut kernel reads: calls that
# cross into the next image (18x18, 13x11), 7x7 outputs (one call an image: padded 7x7 with one
# and with four images, valid 9x9 with three), 5x5 outputs of a valid 7x7 (gathered: the image
# fills too little of its strips), a 1x1 layer whose images follow one another without a gap,
# a 4-wide kernel with padding 2, a valid layer, and a 1x1 kernel with padding 1, whose output
# rows are wider than the packed rows (no strips there).
DIRECT_SHAPES = [
    (3, 64, 9, 9, 16, 3, 1, 0),
    (3, 32, 7, 7, 16, 3, 1, 0),
    (2, 64, 3, 3, 8, 1, 1, 1),
    (3, 64, 18, 18, 20, 3, 1, 1),
    (3, 48, 18, 18, 20, 3, 1, 1),
    (2, 44, 12, 12, 16, 3, 1, 1),
    (2, 64, 13, 11, 16, 3, 1, 1),
    (4, 128, 7, 7, 33, 3, 1, 1),
    (1, 128, 7, 7, 33, 3, 1, 1),
    (5, 64, 9, 7, 17, 1, 1, 0),
    (2, 16, 12, 12, 8, 4, 1, 2),
    (1, 64, 30, 30, 16, 3, 1, 0),
]


def assert_layer_outputs(kernel, bits, shape):
    """acc, signed (1 and 2 threads) and requant outputs of a layer (n, c, h, w, o, k, stride,
    padding) on random codes equal the reference's; random sorted thresholds and directions."""
    n, c, h, w, o, k, s, p = shape
    xb, wb = bits
    rng = np.random.default_rng([xb, wb, *shape])
    x = rng.integers(0, 1 << xb, (n, c, h, w), dtype=np.uint8)
    pw = K.pack_weights(rng.integers(0, 1 << wb, (o, c, k, k), dtype=np.uint8), wb)
    signed = R.bitconv2d_signed(x, pw, xb, s, p)
    th = np.sort(rng.integers(signed.min(), signed.max() + 1, (o, 3)), axis=1).astype(np.int32)
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    with K.use_kernel(kernel):
        acc = K.bitconv2d_packed(x, pw, xb, s, p)
        got = [K.bitconv2d_signed(x, pw, xb, s, p, threads=t) for t in (1, 2)]
        codes = K.bitconv2d_requant(x, pw, xb, s, p, th, direction)
    np.testing.assert_array_equal(acc, R.bitconv2d_packed(x, pw, xb, s, p))
    for g in got:
        np.testing.assert_array_equal(g, signed)
    np.testing.assert_array_equal(codes, R.bitconv2d_requant(x, pw, xb, s, p, th, direction))


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("bits", [(1, 1), (2, 1), (8, 8)], ids=lambda b: f"x{b[0]}w{b[1]}")
@pytest.mark.parametrize("shape", DIRECT_SHAPES, ids=ids)
def test_fields_read_from_the_image(kernel, bits, shape):
    assert_layer_outputs(kernel, bits, shape)


# Batches whose packed int8 images pass 1 MB: the int8 kernels run them in chunks of images
# (int8conv.cpp, RunInt8Conv), one thread a chunk: images of 265 KB one a chunk, of 28 KB two
# (41 images: the last chunk one).
CHUNKED_SHAPES = [(5, 4, 256, 256, 8, 3, 1, 1), (41, 16, 40, 40, 8, 3, 1, 1)]


@pytest.mark.parametrize("kernel", [k for k in NATIVE if k.startswith("int8")])
@pytest.mark.parametrize("bits", [(2, 1), (8, 8)], ids=lambda b: f"x{b[0]}w{b[1]}")
@pytest.mark.parametrize("shape", CHUNKED_SHAPES, ids=ids)
def test_batch_in_chunks(kernel, bits, shape):
    assert_layer_outputs(kernel, bits, shape)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", FEW_BITS, ids=lambda b: f"x{b[0]}w{b[1]}")
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_all_shapes(kernel, bits, shape):
    x, w, expected = case(shape, *bits)
    with K.use_kernel(kernel):
        got = K.bitconv2d(x, w, *bits, stride=shape[6], padding=shape[7])
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 140),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    o=st.integers(1, 20),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    x_bits=st.sampled_from(BITS),
    w_bits=st.sampled_from(BITS),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes(n, c, h, w, o, kh, kw, stride, padding, x_bits, w_bits, seed):
    if kh > h + 2 * padding or kw > w + 2 * padding:
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 1 << x_bits, (n, c, h, w), dtype=np.uint8)
    wc = rng.integers(0, 1 << w_bits, (o, c, kh, kw), dtype=np.uint8)
    expected = R.bitconv2d(x, wc, x_bits, w_bits, stride, padding)
    for kernel in NATIVE:
        with K.use_kernel(kernel):
            got = K.bitconv2d(x, wc, x_bits, w_bits, stride, padding, threads=1 + seed % 2)
        np.testing.assert_array_equal(got, expected, err_msg=kernel)


@pytest.mark.parametrize("kernel", KERNELS)  # each kernel packs with its own packer
@pytest.mark.parametrize("bits", [(1, 1), (2, 1), (4, 3), (8, 8)])
@pytest.mark.parametrize(
    "shape", [SHAPES[1], SHAPES[7], SHAPES[10], (2, 130, 1, 1, 70, 1, 1, 0)], ids=ids
)
def test_pack_weights_matches_reference_layout(kernel, shape, bits):
    """Also 1x1 weights and a 1x1 input over 130 channels (the packers' one-pixel path: no
    transpose, a partial last channel word)."""
    x, w, expected = case(shape, *bits)
    ref = R.pack_weights(w, bits[1])
    with K.use_kernel(kernel):
        got = K.pack_weights(w, bits[1])
        conv = K.bitconv2d_packed(x, got, bits[0], shape[6], shape[7])
    assert got.words.dtype == np.uint64 and got.words.shape == ref.words.shape
    np.testing.assert_array_equal(got.words, ref.words)
    np.testing.assert_array_equal(got.codes, w)
    np.testing.assert_array_equal(conv, expected)


@pytest.mark.parametrize("kernel", KERNELS)
def test_weights_packed_without_bit_planes_pack_them_at_first_use(kernel):
    """pack_weights(..., planes=False) (the training's one-call weights) leaves the bit planes
    out; a popcount kernel packs them from the codes at its first call, the same words."""
    x, w, expected = case(SHAPES[7], 2, 3)
    got = K.pack_weights(w, 3, planes=False)
    assert got.words is None
    with K.use_kernel(kernel):
        conv = K.bitconv2d_packed(x, got, 2, SHAPES[7][6], SHAPES[7][7])
    np.testing.assert_array_equal(conv, expected)
    planes = got.layouts.get("bitplanes")
    if planes is not None:
        np.testing.assert_array_equal(planes, R.pack_weights(w, 3).words)
    with pytest.raises(ValueError, match="codes must be unsigned ints below 2"):
        K.pack_weights(w | 8, 3, planes=False)


# Rows wider than 16 pixels (the int8 packer transposes 16 channels x 16 pixels at a time, with
# a partial last block), over whole and partial 16-channel blocks.
WIDE_SHAPES = [(2, 48, 3, 37, 20, 3, 1, 1), (1, 33, 3, 18, 8, 3, 2, 0)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", [(1, 1), (2, 1), (2, 2), (4, 3), (8, 8)])
@pytest.mark.parametrize("shape", FEW_SHAPES + WIDE_SHAPES, ids=ids)
def test_signed(kernel, bits, shape):
    x, w, _ = case(shape, *bits)
    pw = R.pack_weights(w, bits[1])
    expected = R.bitconv2d_signed(x, pw, bits[0], shape[6], shape[7])
    with K.use_kernel(kernel):
        got = K.bitconv2d_signed(x, pw, bits[0], shape[6], shape[7])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("out_bits", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", FEW_SHAPES[:2], ids=ids)
@pytest.mark.parametrize("shuffled", [False, True], ids=["in-order", "shuffled"])
def test_requant(kernel, out_bits, shape, shuffled):
    """Codes #{j : D >= t_j} (or <=): the count does not depend on the thresholds' order."""
    x, w, _ = case(shape, 2, 1)
    pw = R.pack_weights(w, 1)
    o = w.shape[0]
    d = R.bitconv2d_signed(x, pw, 2, shape[6], shape[7])
    rng = np.random.default_rng(out_bits)
    t = (1 << out_bits) - 1
    # Thresholds spread over the observed range of D (ties included: D == t_j counts).
    th = np.sort(rng.choice(np.unique(d), size=(o, t)), axis=1).astype(np.int32)
    direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    th[direction < 0] = th[direction < 0, ::-1]
    if shuffled:
        th = rng.permuted(th, axis=1)
    expected = R.bitconv2d_requant(x, pw, 2, shape[6], shape[7], th, direction)
    assert expected.dtype == np.uint8 and expected.max() <= t
    # Spot-check the reference's definition on one channel of each direction.
    for oc in (int(np.argmax(direction > 0)), int(np.argmax(direction < 0))):
        cmp = d[:, oc, ..., None] >= th[oc] if direction[oc] > 0 else d[:, oc, ..., None] <= th[oc]
        np.testing.assert_array_equal(expected[:, oc], cmp.sum(-1))
    with K.use_kernel(kernel):
        got = K.bitconv2d_requant(x, pw, 2, shape[6], shape[7], th, direction, threads=2)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize(
    "shape",
    [(1, 128, 5, 5, 512, 5, 1, 0), (4, 64, 9, 9, 64, 3, 1, 1), (1, 3, 4, 4, 2, 3, 1, 1)],
    ids=ids,
)
def test_threads_identical(kernel, shape):
    x, w, expected = case(shape, 2, 1)
    pw = K.pack_weights(w, 1)
    with K.use_kernel(kernel):
        outs = [K.bitconv2d_packed(x, pw, 2, shape[6], shape[7], threads=t) for t in (1, 2, 3)]
        signed = [K.bitconv2d_signed(x, pw, 2, shape[6], shape[7], threads=t) for t in (1, 2)]
    for got in outs:
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(signed[0], signed[1])


# Large enough for several threads (the kernels keep small convolutions on one): batch 1
# splits the output channels and every thread packs its own copy of the input; batch 8 and
# batch 2 of larger images split the pixels after one shared packing phase (on 3 threads
# batch 8 has too few pixel tiles and splits the channels instead).
THREADED_SHAPES = [
    (1, 128, 13, 13, 192, 3, 1, 1),
    (8, 64, 12, 12, 96, 3, 1, 1),
    (2, 32, 24, 24, 64, 3, 1, 1),
]


@functools.cache
def _threaded_case(shape, seed=0):
    x, w, acc = case(shape, 2, 1, seed)
    pw = K.pack_weights(w, 1)
    signed = R.bitconv2d_signed(x, pw, 2, shape[6], shape[7])
    rng = np.random.default_rng(5)
    th = np.sort(rng.integers(signed.min(), signed.max() + 1, (shape[4], 3)), axis=1)
    direction = np.where(rng.random(shape[4]) < 0.5, 1, -1).astype(np.int8)
    th = th.astype(np.int32)
    codes = R.bitconv2d_requant(x, pw, 2, shape[6], shape[7], th, direction)
    return x, pw, acc, signed, th, direction, codes


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("shape", THREADED_SHAPES, ids=ids)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_splits_match_reference(kernel, shape, threads):
    s, p = shape[6], shape[7]
    with K.use_kernel(kernel):
        # Inputs alternate, so a thread that skipped its work would leave a stale result
        # behind; the later calls find the pool's threads already running.
        for seed in (0, 1, 0):
            x, pw, acc, signed, th, direction, codes = _threaded_case(shape, seed)
            np.testing.assert_array_equal(K.bitconv2d_packed(x, pw, 2, s, p, threads), acc)
            np.testing.assert_array_equal(K.bitconv2d_signed(x, pw, 2, s, p, threads), signed)
            got = K.bitconv2d_requant(x, pw, 2, s, p, th, direction, threads=threads)
            np.testing.assert_array_equal(got, codes)


@pytest.mark.parametrize("kernel", NATIVE)
def test_concurrent_calls_from_python_threads(kernel):
    """Calls from several Python threads at once (the GIL is released): one holds the thread
    pool, the others run on their own thread; every result is still exact."""
    import threading

    cases = [_threaded_case(shape, seed) for shape in THREADED_SHAPES[:2] for seed in (0, 1)]
    failures: list[str] = []

    def work(k: int) -> None:
        x, pw, acc, signed, th, direction, codes = cases[k]
        s, p = THREADED_SHAPES[k // 2][6], THREADED_SHAPES[k // 2][7]
        with K.use_kernel(kernel):
            for _ in range(5):
                if not np.array_equal(K.bitconv2d_packed(x, pw, 2, s, p, threads=2), acc):
                    failures.append(f"thread {k}: acc differs")
                got = K.bitconv2d_requant(x, pw, 2, s, p, th, direction, threads=2)
                if not np.array_equal(got, codes):
                    failures.append(f"thread {k}: requant differs")

    workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert failures == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_threads_work_in_a_forked_child():
    """A forked child (multiprocessing, data loaders) has none of the parent's pool threads;
    its multi-threaded calls must still finish, with the right result."""
    x, pw, acc, *_ = _threaded_case(THREADED_SHAPES[0])
    np.testing.assert_array_equal(K.bitconv2d_packed(x, pw, 2, 1, 1, threads=2), acc)
    pid = os.fork()
    if pid == 0:  # child: exit status 0 only if the result is right
        ok = np.array_equal(K.bitconv2d_packed(x, pw, 2, 1, 1, threads=2), acc)
        os._exit(0 if ok else 1)
    for _ in range(600):  # a child stuck waiting for threads that do not exist: fail, not hang
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's multi-threaded call did not finish within 60 s")
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_threads_on_a_single_allowed_cpu(tmp_path):
    """A process allowed one CPU (taskset, a container) asking for 2 and 3 threads: the pool
    counts the CPUs of its affinity mask, and waiting threads yield rather than spin, so every
    call finishes, with the reference result."""
    x, pw, acc, *_ = _threaded_case(THREADED_SHAPES[0])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", pw.codes)
    np.save(tmp_path / "acc.npy", acc)
    code = (
        "import os, sys, numpy as np\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "import dorefa.kernels as K\n"
        "d = sys.argv[1]\n"
        "x, acc = np.load(d + '/x.npy'), np.load(d + '/acc.npy')\n"
        "pw = K.pack_weights(np.load(d + '/w.npy'), 1)\n"
        "for t in (2, 3, 2):\n"
        "    assert np.array_equal(K.bitconv2d_packed(x, pw, 2, 1, 1, t), acc), t\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("kernel", KERNELS)
def test_non_contiguous_inputs(kernel):
    x, w, expected = case(SHAPES[3], 2, 2)
    xf = np.asfortranarray(x)
    x_strided = np.zeros(x.shape[:3] + (2 * x.shape[3],), np.uint8)
    x_strided[..., ::2] = x
    with K.use_kernel(kernel):
        np.testing.assert_array_equal(K.bitconv2d(xf, np.asfortranarray(w), 2, 2, 2, 1), expected)
        np.testing.assert_array_equal(K.bitconv2d(x_strided[..., ::2], w, 2, 2, 2, 1), expected)


@pytest.mark.parametrize("kernel", NATIVE)
@pytest.mark.parametrize("bits", [(2, 1), (3, 2)], ids=lambda b: f"x{b[0]}w{b[1]}")
def test_layer_with_many_register_tiles(kernel, bits):
    """Several 64-pixel macro tiles, 8-pixel tiles across image boundaries (169 outputs per
    image), a pixel tail and a channel tail of one 8-channel block (50 outputs = 2 x 24 + 2):
    acc, signed and requant against the reference."""
    xb, wb = bits
    rng = np.random.default_rng(7)
    x = rng.integers(0, 1 << xb, (3, 70, 13, 13), dtype=np.uint8)
    w = rng.integers(0, 1 << wb, (50, 70, 3, 3), dtype=np.uint8)
    pw = K.pack_weights(w, wb)
    acc = R.bitconv2d_packed(x, pw, xb, 1, 1)
    signed = R.bitconv2d_signed(x, pw, xb, 1, 1)
    th = np.sort(rng.integers(signed.min(), signed.max() + 1, (50, 3)), axis=1).astype(np.int32)
    th[0] = np.iinfo(np.int32).min  # always / never reached steps
    th[1, -1] = np.iinfo(np.int32).max
    direction = np.where(rng.random(50) < 0.5, 1, -1).astype(np.int8)
    codes = R.bitconv2d_requant(x, pw, xb, 1, 1, th, direction)
    with K.use_kernel(kernel):
        np.testing.assert_array_equal(K.bitconv2d_packed(x, pw, xb, 1, 1), acc)
        np.testing.assert_array_equal(K.bitconv2d_signed(x, pw, xb, 1, 1), signed)
        np.testing.assert_array_equal(K.bitconv2d_requant(x, pw, xb, 1, 1, th, direction), codes)


@pytest.mark.parametrize("kernel", NATIVE)
def test_large_outputs_are_independent_arrays(kernel):
    """Outputs of 64 KiB and more come from a reused buffer pool: a live result must never
    be handed out again, and a freed one may be, with correct contents."""
    rng = np.random.default_rng(3)
    xs = [rng.integers(0, 4, (2, 64, 20, 20), dtype=np.uint8) for _ in range(3)]
    w = rng.integers(0, 2, (96, 64, 3, 3), dtype=np.uint8)
    pw = K.pack_weights(w, 1)
    expected = [R.bitconv2d_packed(x, pw, 2, 1, 1) for x in xs]
    assert expected[0].nbytes >= 64 << 10
    with K.use_kernel(kernel):
        first = K.bitconv2d_packed(xs[0], pw, 2, 1, 1)
        second = K.bitconv2d_packed(xs[1], pw, 2, 1, 1)
        assert not np.shares_memory(first, second)
        first[...] = -1  # results are ordinary writable arrays
        del first
        for _ in range(3):  # reuses the freed buffer
            third = K.bitconv2d_packed(xs[2], pw, 2, 1, 1)
            np.testing.assert_array_equal(third, expected[2])
            del third
    np.testing.assert_array_equal(second, expected[1])


@pytest.mark.parametrize("kernel", NATIVE)
def test_misaligned_packed_words_give_the_same_result(kernel):
    """pack_weights returns 64-byte aligned words; words that are not (a user's copy) are
    copied to an aligned buffer by the kernel, with the same result."""
    x, w, expected = case(SHAPES[7], 2, 1)
    pw = K.pack_weights(w, 1)
    assert pw.words.ctypes.data % 64 == 0
    raw = np.empty(pw.words.size + 1, np.uint64)
    start = 1 if raw.ctypes.data % 64 == 0 else 0
    shifted = raw[start : start + pw.words.size].reshape(pw.words.shape)
    shifted[...] = pw.words
    assert shifted.ctypes.data % 64 != 0
    moved = R.PackedWeights(pw.codes, pw.bits, shifted)
    with K.use_kernel(kernel):
        np.testing.assert_array_equal(
            K.bitconv2d_packed(x, moved, 2, SHAPES[7][6], SHAPES[7][7]), expected
        )
