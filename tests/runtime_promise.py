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
"""

from __future__ import annotations

import numpy as np
import torch

from dorefa.nn import ActQuant
from dorefa.runtime.executor import BitConv

MIN_AGREEMENT = 0.999  # share of images with the same predicted class
REL_TOL = 1e-3  # logit difference relative to the image's largest |torch logit|
# Distance of an activation (in [0, 1]) from a quantization step that float32 rounding can
# cross: torch's float32 conv + BN land within ~1e-7 of the exact value; 1e-5 leaves a margin
# for longer sums while staying far below the smallest step spacing (1/255 at 8 bits).
STEP_TOL = 1e-5


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
    for i in flipped:
        explained, why = explain_difference(runtime, model, x[i : i + 1])
        assert explained, f"image {i}: logits differ by {rel[i]:.3g} relative and {why}"
    return {
        "agreement": agreement,
        "max_rel": float(rel.max()),
        "flipped": flipped.tolist(),
        "got": got,
        "want": want,
    }


def _torch_activations(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[int, np.ndarray]]:
    """(bits, pre-quantization value) of every quantizing f_a, in the order they run."""
    rec: list[tuple[int, np.ndarray]] = []

    def hook(mod, inputs, _output):
        rec.append((mod.k, inputs[0].detach().float().reshape(-1).numpy()))

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


def _runtime_codes(runtime, x: np.ndarray) -> list[np.ndarray]:
    """The codes entering every popcount layer of ``runtime``, in order."""
    codes = []
    for layer in runtime.layers:
        if isinstance(layer, BitConv):
            codes.append(x.reshape(-1).astype(np.int64))
        x = layer.forward(x, 1)
    return codes


def explain_difference(runtime, model: torch.nn.Module, x: torch.Tensor) -> tuple[bool, str]:
    """Whether the first differing activation codes of one image (x: (1, C, H, W)) are flips
    at a quantization step (see the module doc), and what was found."""
    acts = _torch_activations(model, x)
    codes = _runtime_codes(runtime, x.numpy())
    if len(acts) != len(codes):
        return False, f"torch has {len(acts)} quantized activation maps, the runtime {len(codes)}"
    for layer, ((k, pre), rt_codes) in enumerate(zip(acts, codes, strict=True)):
        n = (1 << k) - 1
        u = np.clip(pre, 0, 1) * np.float32(n)  # the float32 ops of torch's f_a
        torch_codes = np.rint(u).astype(np.int64)
        differ = np.flatnonzero(torch_codes != rt_codes)
        if differ.size == 0:
            continue
        step_dist = np.abs(u[differ] - (np.floor(u[differ]) + 0.5)) / n  # to (j - 1/2)/n
        by_one = np.abs(torch_codes[differ] - rt_codes[differ]) == 1
        found = (
            f"activation map {layer} ({k}-bit) has {differ.size} differing codes, the farthest "
            f"{step_dist.max():.3g} from a step (tolerance {STEP_TOL})"
        )
        return bool(by_one.all() and step_dist.max() <= STEP_TOL), found
    return False, "every activation code is equal (the float layers differ)"
