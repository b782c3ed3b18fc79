"""The three products of each svhn conv as GEMMs on CUDA: fp32, TF32, bf16 and torch._int_mm.

A CUDA int8 path for `--engine int` would run each product of a quantized conv as one integer
GEMM over im2col patches: forward (batch*pixels x Cin*k*k) . (Cin*k*k x Cout), input gradient
(batch*pixels x Cout) . (Cout x Cin*k*k), weight gradient (Cin*k*k x batch*pixels) .
(batch*pixels x Cout). This measures those GEMMs alone (no im2col, no scaling) at batch 128 for
the layers of Model A, so that the int8 path is judged before it is built: `torch._int_mm`
(int8 x int8 -> int32, cuBLASLt) against the float GEMMs the torch engine runs. `exact` checks
_int_mm's int32 result against a float64 product of the same codes. Times: CUDA events, mean of
50 calls after 5 warm-ups, in microseconds. Needs a CUDA device (docs/training.md has the
H200 table).

    python benchmarks/bench_cuda_gemm.py [--batch 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from dorefa.bits import Bits
from dorefa.models import create_model
from dorefa.nn import QConv2d


def conv_gemms(batch: int) -> list[tuple[str, int, int, int]]:
    """(layer, M = batch*out pixels, K = Cin*kh*kw, N = Cout) of every conv of Model A."""
    model = create_model("svhn", bits=Bits(1, 2, 6), num_classes=10, in_channels=1)
    shapes: list[tuple[str, int, int, int]] = []

    def hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * inp[0].shape[1]
        m = out.shape[0] * out.shape[2] * out.shape[3]
        bits = "float" if mod.w_bits == 32 else "quantized"
        shapes.append((f"conv{len(shapes)} ({bits})", m, k, out.shape[1]))

    for mod in model.modules():
        if isinstance(mod, QConv2d):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.zeros(batch, 1, 40, 40))
    return shapes


def cuda_us(fn, reps: int = 50) -> float:
    """Mean time of ``fn()`` in microseconds, by CUDA events, after 5 warm-up calls."""
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3


def products(m: int, k: int, n: int) -> dict[str, tuple[int, int, int]]:
    return {"forward": (m, k, n), "input_grad": (m, n, k), "weight_grad": (k, m, n)}


def measure(a: int, b: int, c: int, dev: torch.device) -> dict:
    """One (a x b) . (b x c) GEMM in each dtype; _int_mm's operands alone padded as it asks
    (rows > 16, inner and outer sizes multiples of 8, at least 16)."""
    rows, inner, cols = max(a, 17), max(16, -(-b // 8) * 8), max(16, -(-c // 8) * 8)
    xf, yf = torch.randn(a, b, device=dev), torch.randn(b, c, device=dev)
    xb, yb = xf.bfloat16(), yf.bfloat16()
    xi = torch.randint(0, 4, (rows, inner), device=dev, dtype=torch.int8)
    yi = torch.randint(0, 4, (inner, cols), device=dev, dtype=torch.int8)
    row: dict = {}
    for name, tf32 in (("fp32_us", False), ("tf32_us", True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        row[name] = cuda_us(lambda: xf @ yf)
    torch.backends.cuda.matmul.allow_tf32 = False
    row["bf16_us"] = cuda_us(lambda: xb @ yb)
    try:
        row["int_mm_exact"] = torch.equal(torch._int_mm(xi, yi).double(), xi.double() @ yi.double())
        row["int_mm_us"] = cuda_us(lambda: torch._int_mm(xi, yi))
    except RuntimeError as exc:  # cuBLASLt refuses some shapes (CUBLAS_STATUS_NOT_SUPPORTED)
        row["int_mm_error"] = str(exc).splitlines()[0][:160]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda_gemm.py needs a CUDA device; this machine has none")
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}")
    print("| layer | product | M | K | N | fp32 us | TF32 us | bf16 us | _int_mm us | exact |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for layer, m, k, n in conv_gemms(args.batch):
        for prod, (a, b, c) in products(m, k, n).items():
            r = dict(layer=layer, product=prod, M=a, K=b, N=c) | measure(a, b, c, dev)
            rows.append(r)
            imm = f"{r['int_mm_us']:.1f}" if "int_mm_us" in r else "refused"
            print(
                f"| {layer} | {prod} | {a} | {b} | {c} | {r['fp32_us']:.1f} | {r['tf32_us']:.1f}"
                f" | {r['bf16_us']:.1f} | {imm} | {r.get('int_mm_exact', '')} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f
            )


if __name__ == "__main__":
    main()
