"""What the bit runtime promises against the torch model it was exported from, as one check
used by every runtime-vs-torch comparison test (the promise is written in docs/runtime.md,
"What the runtime promises").

On the same float32 inputs:

1. the same predicted class on >= 99.9% of images;
2. logits within 1e-3 relative (``max_k |rt - torch| / max_k |torch|`` per image) on every
   image, except images where a quantized activation sits within float rounding of a
   quantization step, so that the two sides round it to neighbouring codes (a "code flip").

An image beyond 1e-3 is explained only like this: run both networks on it layer by layer and
find the first quantized activation map whose codes differ (every earlier map is equal, so this
one had equal inputs). Every differing code there must differ by one and sit at an activation
``x`` whose torch float32 value is within ``STEP_TOL`` of a step, ``|clip(x, 0, 1) - (j - 1/2)/n|
<= STEP_TOL`` (n = 2^A - 1). A wrong threshold or kernel flips codes far from any step, or
changes logits with every code equal; both fail.

Graphs (residual streams): torch's f_a and the runtime's ``quantize`` node (matched by the
node's ``source``, the f_a's module name) then see float32 values computed by different routes;
those must agree within ``FLOAT_TOL``, and a flip is explained if torch's value is within
STEP_TOL plus that difference of a step.
"""

from __future__ import annotations

import numpy as np
import torch

from dorefa import kernels
from dorefa.nn import ActQuant
from dorefa.runtime.ops import Affine, Quantize

MIN_AGREEMENT = 0.999  # share of images with the same predicted class
REL_TOL = 1e-3  # logit difference relative to the image's largest |torch logit|
# Distance of an activation (in [0, 1]) from a quantization step that float32 rounding can
# cross: torch's float32 conv + BN land within ~1e-7 of the exact value; 1e-5 leaves a margin
# for longer sums while staying far below the smallest step spacing (1/255 at 8 bits).
STEP_TOL = 1e-5
# A float32 value both sides compute by different routes (a residual stream: the runtime's
# integer conv scaled back vs torch's float conv): relative to the map's largest |value|.
FLOAT_TOL = 1e-4


def check_runtime_matches_torch(runtime, model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Assert the promise for ``runtime`` (a loaded .dorefa Model) against ``model`` (eval
    mode) on ``x`` (float32 (N, C, H, W)); return ``agreement``, ``max_rel`` (over all images),
    ``flipped`` (indices of the images beyond REL_TOL, each explained by a code flip) and
    ``got``, ``want`` (the logits)."""
    got = runtime(x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape)
    agreement = float((got.argmax(1) == want.argmax(1)).mean())
    assert agreement >= MIN_AGREEMENT, f"agreement {agreement} < {MIN_AGREEMENT}"
    rel = np.abs(got.astype(np.float64) - want).max(1) / np.maximum(np.abs(want).max(1), 1e-12)
    flipped = np.flatnonzero(rel > REL_TOL)
    # torch's float32 rounding depends on the batch: explain on the batch that was compared
    reasons = explain_difference(runtime, model, x, flipped) if flipped.size else []
    for i, (explained, why) in zip(flipped, reasons, strict=True):
        assert explained, f"image {i}: logits differ by {rel[i]:.3g} relative and {why}"
    return {
        "agreement": agreement,
        "max_rel": float(rel.max()),
        "flipped": flipped.tolist(),
        "got": got,
        "want": want,
    }


def _torch_activations(model: torch.nn.Module, x: torch.Tensor, rows) -> list[tuple]:
    """(module name, bits, pre-quantization value) of every quantizing f_a, in the order they
    run."""
    rec: list[tuple] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod, inputs, _output):
        pre = inputs[0].detach().float()[rows].numpy()
        rec.append((names[mod], mod.k, pre.reshape(len(rows), -1)))

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, ActQuant) and m.quantize and m.k < 32
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return rec


def _runtime_codes(runtime, x: np.ndarray, rows) -> dict[str, tuple]:
    """Per torch f_a (the node's ``source``): the runtime's codes and, where the runtime made
    them from a float value (a ``quantize`` node), that float value (images ``rows``)."""
    out = {}

    def watch(layer, codes, inputs):
        if layer.source is not None and codes.dtype == np.uint8:
            pre = None
            if isinstance(layer, Quantize):
                pre = inputs[0][rows]
            elif isinstance(layer, Affine):  # a BatchNorm with its quantize fused in
                pre = kernels.affine_float(inputs[0][rows], layer.scale, layer.shift)
            pre = None if pre is None else pre.reshape(len(rows), -1)
            out[layer.source] = (codes[rows].reshape(len(rows), -1).astype(np.int64), pre)

    runtime.run(x, 1, watch=watch)
    return out


def explain_difference(runtime, model, x: torch.Tensor, rows=(0,)) -> list[tuple[bool, str]]:
    """For each image ``rows`` of the batch x (N, C, H, W): whether its first differing
    activation codes are flips at a quantization step (see the module doc), and what was
    found.

    Graphs: where the runtime quantizes a float32 value (a residual stream), that value must
    equal torch's within FLOAT_TOL (relative to the map's largest value), and a flip may sit
    as far from a step as the two float values are apart (plus STEP_TOL)."""
    rows = np.asarray(rows, np.int64)
    acts = _torch_activations(model, x, rows)
    codes = _runtime_codes(runtime, x.numpy(), rows)
    return [_explain_one(acts, codes, r) for r in range(len(rows))]


def _explain_one(acts, codes, r) -> tuple[bool, str]:
    for layer, (name, k, pre) in enumerate(acts):
        if name not in codes:
            return False, f"the runtime has no codes for torch's f_a {name}"
        rt_codes, rt_pre = codes[name]
        pre, rt_codes = pre[r], rt_codes[r]
        rt_pre = None if rt_pre is None else rt_pre[r]
        n = (1 << k) - 1
        u = np.clip(pre, 0, 1) * np.float32(n)  # the float32 ops of torch's f_a
        torch_codes = np.rint(u).astype(np.int64)
        gap = np.zeros_like(pre, dtype=np.float64)
        if rt_pre is not None:
            drift = np.abs(rt_pre.astype(np.float64) - pre)
            scale = max(1.0, float(np.abs(pre).max()))
            if drift.max() > FLOAT_TOL * scale:
                return False, (
                    f"activation map {layer} ({name}): the runtime's float input differs "
                    f"from torch's by {drift.max():.3g} (tolerance {FLOAT_TOL} x {scale:.3g})"
                )
            gap = np.abs(np.clip(rt_pre, 0, 1).astype(np.float64) - np.clip(pre, 0, 1))
        differ = np.flatnonzero(torch_codes != rt_codes)
        if differ.size == 0:
            continue
        step_dist = np.abs(u[differ] - (np.floor(u[differ]) + 0.5)) / n  # to (j - 1/2)/n
        by_one = np.abs(torch_codes[differ] - rt_codes[differ]) == 1
        excess = step_dist - gap[differ]
        found = (
            f"activation map {layer} ({name}, {k}-bit) has {differ.size} differing codes, the "
            f"farthest {excess.max():.3g} from a step beyond the float difference "
            f"(tolerance {STEP_TOL})"
        )
        return bool(by_one.all() and excess.max() <= STEP_TOL), found
    return False, "every activation code is equal (the float layers differ)"
