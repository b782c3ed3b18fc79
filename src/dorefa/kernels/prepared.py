"""Prepared bit convolutions: weights, geometry and output checked once, then called per batch.

A network runs the same layers on every batch, so its runtime prepares each layer once::

    conv = dorefa.kernels.prepare_conv(pw, x_bits=2, stride=1, padding=1, out="requant",
                                       thresholds=t, direction=d)
    codes = conv(x_codes, threads=2)

A call runs on the kernel forced at call time (:mod:`dorefa.kernels.selection`), else on the kernel
chosen for this layer and input size (:mod:`dorefa.kernels.choose`: cost model, then a short
measurement, cached per process; looked up per call in a dict by (H, W) and batch class: calls of
:data:`BATCHED_FROM` images or more are chosen by a measurement at the first such call's batch, at
most :data:`MEASURE_BATCH` (never more memory than that call), since the fastest kernel at batch 1
is not always the fastest on many images: the 1x1 convolution of 6-bit gradient codes to 3200
channels in the training's input gradient of svhn conv6 is 1.7x faster on popcount than on int8-vnni
at batch 1, 1.2x slower at batch 32 and 1.13x slower at batch 128, Zen 4).
Inputs that are already what the native kernels take (a C-contiguous uint8 numpy array, an int
thread count) go straight to them, which re-check shapes and code ranges themselves; anything
else is validated and converted first, as by :func:`dorefa.kernels.bitconv2d_packed`.
"""

from __future__ import annotations

import numpy as np

from ..geometry import MAX_THREADS, conv_out_size
from . import choose, reference, selection
from .extension import native
from .reference import PackedWeights

OUTPUTS = ("acc", "signed", "requant")
# Whether popcount layers whose channels leave part of each 64-bit word empty run over dense
# receptive fields where that pays (:func:`dense_fields_pay`); False runs every layer on the
# word-per-tap layout (the tests run both).
DENSE_FIELDS = True
BATCHED_FROM = 8  # calls of this many images or more ...
MEASURE_BATCH = 32  # ... have their kernel chosen at this batch


def batch_class(n: int) -> int:
    """The batch a call of ``n`` images is chosen at: 1, or :data:`MEASURE_BATCH` from
    :data:`BATCHED_FROM` images on."""
    return MEASURE_BATCH if n >= BATCHED_FROM else 1


def native_ready(x_codes, threads) -> bool:
    """Whether ``x_codes`` and ``threads`` are what the native kernels take as they are (a
    C-contiguous uint8 numpy array (N, C, H, W), an int): such calls skip the Python checks, the
    native code checking shapes and code ranges itself."""
    return (
        type(x_codes) is np.ndarray
        and x_codes.dtype == np.uint8
        and x_codes.flags.c_contiguous
        and x_codes.ndim == 4
        and type(threads) is int
        and 1 <= threads <= MAX_THREADS
    )


def dense_fields_pay(shape: tuple[int, int, int, int], w_bits: int) -> bool:
    """Whether a popcount layer of weights ``shape`` (O, C, KH, KW) runs faster over dense
    receptive fields (``csrc/fields.h``): the words it saves, (O / 8) * w_bits * (L - L') per
    pixel and activation plane (L = KH * KW * ceil(C / 64) words a field, L' = ceil(KH * KW *
    C / 64) dense), against building the fields, ~KH * KW * ceil(C / 64) stores (4x that when
    C % 8 != 0: the taps are then shifted bit by bit). Fitted on Zen 4 to 13 shapes (C 3-130,
    O 8-256; popcount-avx512/gfni and popcount-avx2/movemask): AlexNet conv1's 48-channel
    groups 1.2x faster, svhn's 48->64 1.05-1.1x, 16- and 32-channel layers 1.2-1.5x; the
    shapes it rejects were 0.8-1.0x."""
    o, c, kh, kw = shape
    cw = -(-c // 64)
    saved = kh * kw * cw - -(-kh * kw * c // 64)
    build = kh * kw * cw * (1 if c % 8 == 0 else 4)
    return saved > 0 and (o / 8) * w_bits * saved >= build


def weight_words(pw: PackedWeights, kernel: str, fields: bool = False) -> np.ndarray:
    """The packed weights native ``kernel`` reads: ``pw.words`` (bit planes, the popcount
    kernels), with ``fields`` the same planes in dense-field order (the codes as (O, KH * KW
    * C, 1, 1)), or another layout (the int8 kernels: ``csrc/int8conv.h``); all but
    ``pw.words`` (and those too where :func:`dorefa.kernels.pack_weights` left them out) packed
    from ``pw.codes`` at their first use and kept in ``pw.layouts``."""
    layout = selection.weight_layout(kernel)
    if layout == "bitplanes" and not fields and pw.words is not None:
        return pw.words
    key = ("fields" if fields else "bitplanes") if layout == "bitplanes" else layout
    words = pw.layouts.get(key)
    if words is None:
        codes = pw.codes  # "bitplanes": pack_weights(..., planes=False) left them to now
        if key == "fields":
            o, c, kh, kw = pw.shape
            codes = np.ascontiguousarray(codes.transpose(0, 2, 3, 1).reshape(o, kh * kw * c, 1, 1))
        words = pw.layouts[key] = native.pack_weights(codes, pw.bits, kernel)
    return words


class PreparedConv:
    """One bit convolution of fixed packed weights ``pw`` (O, C, KH, KW); outputs per ``out``:

    - ``'acc'``: int32 ``acc = sum_{c,kh,kw} q * p`` (N, O, H', W');
    - ``'signed'``: int32 ``D = 2 * acc - nw * sum q``, nw = 2**w_bits - 1 (the DoReFa dot);
    - ``'requant'``: uint8 per channel o ``#{j : D >= thresholds[o, j]}`` (direction +1) or
      ``#{j : D <= thresholds[o, j]}`` (direction -1).
    """

    __slots__ = (
        "weights",
        "x_bits",
        "stride",
        "padding",
        "out",
        "thresholds",
        "direction",
        "fields",
        "_calls",
        "_chosen",
        "_table",
    )

    def __init__(
        self,
        pw: PackedWeights,
        x_bits: int,
        stride: int = 1,
        padding: int = 0,
        out: str = "acc",
        thresholds: np.ndarray | None = None,
        direction: np.ndarray | None = None,
    ):
        if out not in OUTPUTS:
            raise ValueError(f"out must be one of {', '.join(OUTPUTS)}, got {out!r}")
        # Everything but the input, checked on the smallest input the kernel fits.
        probe = np.zeros((1, *pw.shape[1:]), np.uint8) if isinstance(pw, PackedWeights) else None
        _, x_bits, stride, padding, _ = reference.check_conv(probe, pw, x_bits, stride, padding, 1)
        if out == "requant":
            if thresholds is None or direction is None:
                raise ValueError("out='requant' needs thresholds (O, T) and direction (O,)")
            thresholds, direction = reference.check_requant(thresholds, direction, pw.shape[0])
            thresholds, direction = thresholds.copy(), direction.copy()  # their table is built
            thresholds.flags.writeable = direction.flags.writeable = False  # once: frozen
        elif thresholds is not None or direction is not None:
            raise ValueError(f"thresholds and direction belong to out='requant', not {out!r}")
        self.weights, self.x_bits, self.stride, self.padding = pw, x_bits, stride, padding
        self.out, self.thresholds, self.direction = out, thresholds, direction
        # on the popcount kernels: over dense receptive fields (the same integers)
        self.fields = DENSE_FIELDS and dense_fields_pay(pw.shape, pw.bits)
        # kernel name -> native.PreparedBitConv: native.bitconv bound to all but input, threads
        self._calls: dict[str, object] = {}
        self._chosen: dict[tuple, choose.Choice] = {}  # ((H, W), batch class) -> its kernel
        self._table = None  # out='requant': the native RequantTable, built at the first call

    def __call__(self, x_codes: np.ndarray, threads: int = 1) -> np.ndarray:
        """The convolution of activation codes ``x_codes`` uint8 (N, C, H, W) < 2**x_bits."""
        kernel = selection.forced_kernel()
        if kernel == selection.REFERENCE:
            selection.ran(selection.REFERENCE)
            return self._reference(x_codes, threads)
        if not native_ready(x_codes, threads):
            x_codes, _, _, _, threads = reference.check_conv(
                x_codes, self.weights, self.x_bits, self.stride, self.padding, threads,
                check_values=False,
            )  # fmt: skip
        if kernel is None:
            n = x_codes.shape[0]
            choice = self._chosen.get((x_codes.shape[2:], batch_class(n)))
            kernel = (choice or self.choice(x_codes.shape[2:], n)).kernel
        return self.run_on(kernel, x_codes, threads)

    def run_on(self, kernel: str, x_codes: np.ndarray, threads: int = 1) -> np.ndarray:
        """The convolution on native ``kernel`` (or ``'reference'``); ``x_codes`` as the
        native kernels take it (C-contiguous uint8 (N, C, H, W)), ``threads`` an int."""
        if kernel == selection.REFERENCE:
            selection.ran(selection.REFERENCE)
            return self._reference(x_codes, threads)
        call = self._calls.get(kernel) or self.bound_call(kernel)
        selection._local.ran = "native"  # selection.ran("native"), inlined: ~1 us a call
        return call(x_codes, threads)

    def bound_call(self, kernel: str):
        """This convolution on native ``kernel`` bound to everything but the input and the
        thread count (``native.PreparedBitConv``: a call converts 2 arguments, not 17, ~1 us),
        made once per kernel; ``call(x_codes, threads)``."""
        call = self._calls.get(kernel)
        if call is None:
            pw = self.weights
            fields = self.fields and selection.weight_layout(kernel) == "bitplanes"
            words = weight_words(pw, kernel, fields)
            if self.out == "requant" and self._table is None:  # built once, not matched per call
                self._table = native.RequantTable(self.thresholds, self.direction)
            call = self._calls[kernel] = native.PreparedBitConv(
                kernel, words, *pw.shape, self.x_bits, pw.bits, self.stride, self.padding,
                self.out, self._table, fields,
            )  # fmt: skip
        return call

    def choice(self, hw: tuple[int, int], batch: int = 1) -> choose.Choice:
        """The kernel of this layer on (``batch``, C, ``hw``) inputs
        (:func:`dorefa.kernels.choose.choose`, cached by :func:`batch_class` of ``batch`` and
        timed on ``min(batch, MEASURE_BATCH)`` images: a hostile review found 8 images of
        256x256 chosen on 32, 4x the call's memory): the one forced in this thread (timed
        alone), else the per-layer choice (cached)."""
        hw, b = (int(hw[0]), int(hw[1])), batch_class(batch)
        forced = selection.forced_kernel()
        if forced is None and (hw, b) in self._chosen:
            return self._chosen[(hw, b)]
        o, c, kh, kw = self.weights.shape
        key = (self.weights.shape, hw, b, self.weights.bits, self.x_bits, self.stride,
               self.padding, self.out)  # fmt: skip
        timed = min(max(int(batch), 1), b)
        zeros = np.zeros((timed, c, *hw), np.uint8)
        ho = conv_out_size(hw[0], kh, self.stride, self.padding)
        wo = conv_out_size(hw[1], kw, self.stride, self.padding)
        rows = timed * max(ho, 0) * max(wo, 0)
        got = choose.choose(
            key, self.weights.bits, self.x_bits, rows * o * c * kh * kw,
            lambda k: self.run_on(k, zeros, 1), forced, rows,
        )  # fmt: skip
        if forced is None:
            self._chosen[(hw, b)] = got
        return got

    def _reference(self, x_codes: np.ndarray, threads: int) -> np.ndarray:
        args = (x_codes, self.weights, self.x_bits, self.stride, self.padding)
        if self.out == "acc":
            return reference.bitconv2d_packed(*args, threads)
        if self.out == "signed":
            return reference.bitconv2d_signed(*args, threads)
        return reference.bitconv2d_requant(*args, self.thresholds, self.direction, threads)

    def __repr__(self) -> str:
        o, c, kh, kw = self.weights.shape
        fields = ", dense fields" if self.fields else ""
        return (
            f"PreparedConv({c}->{o} {kh}x{kw} /{self.stride} pad {self.padding} "
            f"W{self.weights.bits} A{self.x_bits} -> {self.out}{fields})"
        )


def prepare_conv(
    pw: PackedWeights,
    x_bits: int,
    stride: int = 1,
    padding: int = 0,
    out: str = "acc",
    thresholds: np.ndarray | None = None,
    direction: np.ndarray | None = None,
) -> PreparedConv:
    """A :class:`PreparedConv`: checks everything but the input once; call it per batch."""
    return PreparedConv(pw, x_bits, stride, padding, out, thresholds, direction)
