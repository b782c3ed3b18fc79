"""Integer training vs torch, in one process (``bench_train.py --engines``).

Two tables, on svhn Model A (width 1.0) with 128 real Fashion-MNIST images (40x40):

1. A whole training step (forward, backward with f_g, Adam) of ``--engine int`` (1,2,6),
   ``--engine torch`` (1,2,6), float (32,32,32) and float under bf16 autocast, at 1 and 2
   threads; the configurations are interleaved round by round; medians of per-round means.
2. Per quantized conv layer, each product alone: forward ``y = conv(a, w)``, input gradient,
   weight gradient, on the integer kernels (the engine's calls) vs torch fp32 (``conv2d``,
   ``conv2d_input``, ``conv2d_weight``) on the same shapes; GMAC/s and MAC/cycle (the clock
   measured beside, ``cpu_clock``). First, the float first layer's forward and weight (and
   bias) gradient as the int engine runs them (``engine_float.py``).
"""

from __future__ import annotations

import statistics
import time

import cpu_clock
import numpy as np
import torch
from torch.nn import functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

CONFIGS = [  # (label, bits, engine, amp)
    ("int engine (1,2,6)", "1,2,6", "int", None),
    ("torch engine (1,2,6)", "1,2,6", "torch", None),
    ("float (32,32,32)", "32,32,32", "torch", None),
    ("float (32,32,32), bf16 autocast", "32,32,32", "torch", "bf16"),
]


def _batch(batch: int):
    from dorefa.data import get_dataset, to_model_input

    data = get_dataset("fashion-mnist", "train")
    gen = torch.Generator().manual_seed(0)
    x = to_model_input(data.images[:batch], 40, train=True, augment="flip", generator=gen)
    return x, data.labels[:batch]


def _stepper(bits: str, engine: str, amp: str | None, x, y):
    from dorefa.models import create_model
    from dorefa.nn import set_engine, set_grad_generator

    torch.manual_seed(0)
    model = create_model("svhn", bits=bits, num_classes=10, in_channels=1)
    set_engine(model, engine)
    set_grad_generator(model, torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _mean_seconds(fn, seconds: float) -> float:
    fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or n < 2:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def step_table(threads_list, batch: int, seconds: float, rounds: int) -> str:
    x, y = _batch(batch)
    steppers = {label: _stepper(b, e, a, x, y) for label, b, e, a in CONFIGS}
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {label: [] for label in steppers}
        for _ in range(rounds):
            for label, fn in steppers.items():
                times[label].append(_mean_seconds(fn, seconds))
        med = {k: statistics.median(v) for k, v in times.items()}
        for label in steppers:
            rows.append(
                f"| {threads} | {label} | {med[label] * 1e3:.0f} | "
                f"{med['torch engine (1,2,6)'] / med[label]:.2f}x | "
                f"{med['float (32,32,32)'] / med[label]:.2f}x |"
            )
    head = (
        f"Training step, svhn Model A, batch {batch}, medians of {rounds} interleaved rounds\n\n"
        "| threads | configuration | ms/step | vs torch engine (1,2,6) | vs float |\n"
        "|---:|---|---:|---:|---:|\n"
    )
    return head + "\n".join(rows) + "\n"


def _layers():
    """(name, C, O, K, padding, H) of svhn Model A's quantized convs at 40x40 input."""
    return [
        ("conv1", 48, 64, 3, 1, 18),
        ("conv2", 64, 64, 3, 1, 18),
        ("conv3", 64, 128, 3, 0, 9),
        ("conv4", 128, 128, 3, 1, 7),
        ("conv5", 128, 128, 3, 0, 7),
        ("conv6", 128, 512, 5, 0, 5),
    ]


def _products(c, o, k, pad, h, n, threads, rng):
    """{product: (int fn, torch fn)} for one layer shape, bits (1,2,6)."""
    from dorefa.kernels import bitconv2d_signed, pack_weights
    from dorefa.kernels.training import conv_input_grad, conv_weight_grad

    oh = h + 2 * pad - k + 1
    q = rng.integers(0, 4, (n, c, h, h), dtype=np.uint8)
    p = rng.integers(0, 2, (o, c, k, k), dtype=np.uint8)
    g = rng.integers(0, 64, (n, o, oh, oh), dtype=np.uint8)
    m = rng.random(n).astype(np.float32)
    xf = torch.from_numpy(q.astype(np.float32) / 3)
    wf = torch.from_numpy(p.astype(np.float32) * 2 - 1)
    gf = torch.from_numpy(g.astype(np.float32) / 31.5 - 1)
    return {
        "forward": (
            # the step's weights packed as the int engine packs them (engine.py)
            lambda: bitconv2d_signed(q, pack_weights(p, 1, planes=False), 2, 1, pad, threads),
            lambda: F.conv2d(xf, wf, padding=pad),
        ),
        "input grad": (
            lambda: conv_input_grad(g, m, 6, p, 0.1, 1, 1, pad, (h, h), threads),
            lambda: conv2d_input(xf.shape, wf, gf, padding=pad),
        ),
        "weight grad": (
            lambda: conv_weight_grad(g, m, 6, q, 2, 1, pad, (k, k), threads),
            lambda: conv2d_weight(xf, wf.shape, gf, padding=pad),
        ),
    }


def _first_layer_products(n, threads, rng):
    """{product: (int engine's fn, torch fn)} of svhn's float first layer (1->48 5x5 on 40x40,
    bias): the int engine's forward and its weight and bias gradients (engine_float.py: the
    training kernels where they run, else conv_float and torch's) vs torch fp32."""
    from dorefa import engine_float

    x = rng.random((n, 1, 40, 40), dtype=np.float32)
    w = rng.standard_normal((48, 1, 5, 5)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    dy = torch.from_numpy(rng.standard_normal((n, 48, 36, 36)).astype(np.float32))
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    return {
        "forward": (
            lambda: engine_float.forward_output(x, w, b, 0, threads),
            lambda: F.conv2d(xt, wt, bt),
        ),
        "weight grad": (
            lambda: engine_float.param_grads(xt, dy, wt.shape, 0, True),
            lambda: (conv2d_weight(xt, wt.shape, dy), dy.sum((0, 2, 3))),
        ),
    }


def product_table(threads: int, batch: int, seconds: float, rounds: int) -> str:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    clock = cpu_clock.clock_hz(threads)  # with every thread busy; again after the rows
    timed = []  # (layer, product, MACs, int seconds, torch seconds)
    layers = [("conv0 (float)", 1, 48, 5, 0, 40)] + _layers()
    with torch.no_grad():
        for name, c, o, k, pad, h in layers:
            oh = h + 2 * pad - k + 1
            macs = batch * o * c * k * k * oh * oh
            products = (
                _first_layer_products(batch, threads, rng)
                if name.startswith("conv0")
                else _products(c, o, k, pad, h, batch, threads, rng)
            )
            for product, (int_fn, torch_fn) in products.items():
                ti, tt = [], []
                for r in range(rounds):  # the order alternates: neither always runs first
                    for fn, times in [(int_fn, ti), (torch_fn, tt)][:: 1 - 2 * (r % 2)]:
                        times.append(_mean_seconds(fn, seconds))
                timed.append((name, product, macs, statistics.median(ti), statistics.median(tt)))
    clock = max(clock, cpu_clock.clock_hz(threads))  # the higher: a slow phase is not the core's
    rows = [
        f"| {name} | {product} | {macs / 1e6:.0f} | {mi * 1e3:.2f} | "
        f"{macs / mi / 1e9:.1f} | {macs / mi / clock / threads:.1f} | "
        f"{mt * 1e3:.2f} | {macs / mt / clock / threads:.1f} | {mt / mi:.2f}x |"
        for name, product, macs, mi, mt in timed
    ]
    head = (
        f"Products of svhn Model A's quantized convs, (1,2,6), batch {batch}, {threads} "
        f"thread(s), clock {clock / 1e9:.2f} GHz (measured), medians of {rounds} rounds\n\n"
        "| layer | product | MMAC | int ms | int GMAC/s | int MAC/cycle/core | torch fp32 ms | "
        "torch MAC/cycle/core | int vs torch |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    return head + "\n".join(rows) + "\n"


def main(batch: int, seconds: float, rounds: int) -> None:
    print(step_table((1, 2), batch, seconds, rounds))
    for threads in (1, 2):
        print(product_table(threads, batch, seconds / 2, rounds))
