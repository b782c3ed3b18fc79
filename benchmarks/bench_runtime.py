"""The whole exported network on the bit runtime against the same network in torch.

Contestants, all single-threaded (torch.set_num_threads(1), runtime threads=1, BLAS pinned to 1
thread), interleaved round by round in one process; the table shows medians over rounds:

- ``bit runtime``: the .dorefa file (float first conv + popcount middle layers with folded
  thresholds + float classifier), numpy + dorefa.kernels;
- ``torch fp32``: the float-equivalent network (plain Conv2d/BN/ReLU/MaxPool/Linear, same
  shapes), eager;
- ``torch int8``: that network after eager-mode post-training static quantization
  (torch.ao.quantization, engine 'x86', conv+BN+ReLU fused, calibrated on a few batches);
- ``torch DoReFa``: the DoReFa model itself in eval mode (fake quantization in float: what
  training runs; shown for reference).

The speed does not depend on the weights' values, so by default the model is an untrained
svhn (width 1.0, bits 1,2,6, 1 input channel as Fashion-MNIST) with calibrated BN statistics;
``--checkpoint`` uses a trained one instead. Sizes: the .dorefa file vs torch.save of the float
state_dict.

    .venv/bin/python benchmarks/bench_runtime.py --out docs/runtime.md   # full run, writes docs
    .venv/bin/python benchmarks/bench_runtime.py --quick --checkpoint runs/X/checkpoint.pt
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch load their BLAS: the runtime's GEMMs on 1 thread

import argparse  # noqa: E402
import datetime  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import dorefa.kernels as K  # noqa: E402
import dorefa.runtime as rt  # noqa: E402
from dorefa.exporter import export  # noqa: E402
from dorefa.fileio import atomic_write_text  # noqa: E402
from dorefa.models import create_model  # noqa: E402
from dorefa.nn import ActQuant, QConv2d, QLinear  # noqa: E402

# The generated part of the report sits between these markers; the rest of the file is kept.
BEGIN, END = "<!-- bench_runtime:begin -->", "<!-- bench_runtime:end -->"


def calibrated_model(bits: str, width: float, in_channels: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = create_model("svhn", bits=bits, num_classes=10, in_channels=in_channels, width=width)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(32, in_channels, 40, 40))
    return m.eval()


class FloatNet(nn.Module):
    """The float-equivalent of a sequential DoReFa model: same convs/BN/pools, ReLU for f_a
    (moved before the pool, where it commutes, so conv+BN+ReLU fuse for int8)."""

    def __init__(self, dorefa_model: nn.Module):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        mods = [
            m
            for m in dorefa_model.modules()
            if not list(m.children()) or isinstance(m, (QConv2d, QLinear))
        ]
        body, self.fuse_groups, pending_pool = [], [], None
        for m in mods:
            if isinstance(m, QConv2d):
                conv = nn.Conv2d(
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    groups=m.groups,
                    bias=m.bias is not None,
                )
                conv.load_state_dict(m.state_dict())
                body.append(conv)
            elif isinstance(m, nn.BatchNorm2d):
                bn = nn.BatchNorm2d(m.num_features)
                bn.load_state_dict(m.state_dict())
                body.append(bn)
            elif isinstance(m, nn.MaxPool2d):
                pending_pool = nn.MaxPool2d(m.kernel_size, m.stride, m.padding)
            elif isinstance(m, ActQuant):
                body.append(nn.ReLU())
                if pending_pool is not None:
                    body.append(pending_pool)
                    pending_pool = None
            elif isinstance(m, QLinear):
                self.fc = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
                self.fc.load_state_dict(m.state_dict())
        self.body = nn.Sequential(*body)
        self.dequant = torch.ao.quantization.DeQuantStub()
        names = [str(i) for i in range(len(body))]
        i = 0
        while i < len(body):  # conv, bn, relu  |  conv, relu
            if isinstance(body[i], nn.Conv2d):
                j = i + 1
                while j < len(body) and isinstance(body[j], (nn.BatchNorm2d, nn.ReLU)):
                    j += 1
                self.fuse_groups.append([f"body.{n}" for n in names[i:j]])
                i = j
            else:
                i += 1

    def forward(self, x):
        x = self.body(self.quant(x))  # (N, 512, 1, 1)
        return self.dequant(self.fc(x.flatten(1)))  # (N, classes)


def int8_model(float_net: FloatNet, calib: list[torch.Tensor]) -> nn.Module:
    import copy

    from torch.ao import quantization as tq

    torch.backends.quantized.engine = "x86"
    m = copy.deepcopy(float_net).eval()
    m = tq.fuse_modules(m, m.fuse_groups)
    m.qconfig = tq.get_default_qconfig("x86")
    tq.prepare(m, inplace=True)
    with torch.no_grad():
        for x in calib:
            m(x)
    tq.convert(m, inplace=True)
    return m


def timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def state_dict_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--checkpoint",
        "--model",
        default=None,
        help="trained svhn checkpoint (default: untrained, BN-calibrated)",
    )
    ap.add_argument("--bits", default="1,2,6")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--batches", default="1,32", help="batch sizes")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=0.25, help="per contestant per round")
    ap.add_argument("--quick", action="store_true", help="3 rounds of ~0.1 s (a smoke run)")
    ap.add_argument("--out", default=None, help="write a markdown report here (docs/runtime.md)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 3, 0.1
    return args


def load_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The DoReFa model to time and a description of it."""
    if args.checkpoint:
        from dorefa.checkpoint import load_checkpoint, model_from_checkpoint

        model = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)
        return model, f"trained checkpoint {args.checkpoint}"
    model = calibrated_model(args.bits, args.width, args.in_channels)
    return model, f"untrained svhn width {args.width} (BN calibrated on random inputs)"


def time_contestants(contestants: dict, in_ch: int, batches: list[int], args, gen) -> dict:
    """Median seconds per call for every (contestant name, batch size), interleaved rounds.

    ``contestants``: name -> (function, "torch" or "numpy": the input it takes). The numpy view
    of the input is made before timing, so no contestant pays for a conversion.
    """
    results: dict[tuple[str, int], list[float]] = {}
    for n in batches:
        x = torch.rand(n, in_ch, 40, 40, generator=gen)
        inputs = {"torch": x, "numpy": x.numpy()}
        fns = {name: (lambda f=f, x=inputs[kind]: f(x)) for name, (f, kind) in contestants.items()}
        with torch.no_grad():
            reps = {}
            for name, fn in fns.items():  # warm-up and calibrate repetitions
                fn()
                t = timed(fn, 2)
                reps[name] = max(1, int(args.seconds / max(t, 1e-6)))
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    results.setdefault((name, n), []).append(timed(fn, reps[name]))
    return {k: statistics.median(v) for k, v in results.items()}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render_report(med: dict, names: list[str], batches: list[int], head: str, sizes) -> str:
    """The markdown tables: ms per batch with ratios, images/s, file sizes."""
    file_size, float_sd = sizes
    lines = [head, ""]
    lines.append(
        "| batch | " + " | ".join(f"{nm} ms/batch" for nm in names) + " | fp32 / bit | int8 / bit |"
    )
    lines.append("|" + "---|" * (len(names) + 3))
    for n in batches:
        cells = [f"{1e3 * med[(nm, n)]:.3f}" for nm in names]
        r32 = med[("torch fp32", n)] / med[("bit runtime", n)]
        r8 = med[("torch int8", n)] / med[("bit runtime", n)]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {r32:.2f}x | {r8:.2f}x |")
    lines.append("")
    lines.append("| images/s | " + " | ".join(names) + " |")
    lines.append("|" + "---|" * (len(names) + 1))
    for n in batches:
        lines.append(
            f"| batch {n} | " + " | ".join(f"{n / med[(nm, n)]:.0f}" for nm in names) + " |"
        )
    lines.append("")
    lines.append(
        f"size: .dorefa file {file_size} bytes vs torch.save(float state_dict) "
        f"{float_sd} bytes: {float_sd / file_size:.1f}x smaller"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")  # torch.ao.quantization deprecation notices
    torch.set_num_threads(1)
    try:  # numpy's BLAS may ignore the env var if it was loaded first
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass

    model, what = load_model(args)
    in_ch = model.features[0].in_channels
    tmp = Path(tempfile.mkdtemp()) / "model.dorefa"
    info = export(model, tmp)
    runtime = rt.load(tmp, threads=1)
    fnet = FloatNet(model).eval()
    gen = torch.Generator().manual_seed(0)
    calib = [torch.rand(32, in_ch, 40, 40, generator=gen) for _ in range(4)]
    qnet = int8_model(fnet, calib)

    # sanity: the float-equivalent nets run and agree with each other roughly
    with torch.no_grad():
        x = calib[0][:4]
        assert fnet(x).shape == qnet(x).shape == (4, 10)
        assert runtime(x.numpy()).shape == (4, 10)

    contestants = {
        "bit runtime": (runtime, "numpy"),
        "torch fp32": (fnet, "torch"),
        "torch int8": (qnet, "torch"),
        "torch DoReFa": (model, "torch"),
    }
    batches = [int(b) for b in args.batches.split(",")]
    med = time_contestants(contestants, in_ch, batches, args, gen)
    head = (
        f"model: {what}; bits {model.bits}; input {in_ch}x40x40\n"
        f"kernel backend: {K.backend()} ({K.kernel_name()}); CPU: {cpu_name()}; 1 thread; "
        f"torch {torch.__version__}, numpy {np.__version__}; {args.rounds} rounds, medians"
    )
    report = render_report(
        med, list(contestants), batches, head, (info["size"], state_dict_bytes(fnet))
    )
    print(report)
    if args.out:
        cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_runtime.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        block = f"""{BEGIN}
Measured {datetime.date.today().isoformat()} with

    {cmd}

{report}

*bit runtime*: `dorefa.runtime.load(file)(x)` end to end on numpy float32 input. *torch fp32*:
the float-equivalent network (same shapes, ReLU for f_a), eager. *torch int8*: that network after
eager post-training static quantization (engine x86/fbgemm, conv+BN+ReLU fused, 4 calibration
batches). *torch DoReFa*: the training-time model in eval mode (fake quantization in float32).
"ratio" = torch time / bit-runtime time, so > 1 means the bit runtime is faster.
{END}"""
        write_block(Path(args.out), block)
        print(f"wrote {args.out}")
    return 0


def write_block(path: Path, block: str) -> None:
    """Replace the text between BEGIN and END in ``path`` (hand-written text around it stays);
    a file without the markers gets the block appended. Written atomically."""
    old = path.read_text() if path.exists() else "# The bit runtime vs torch (whole network)\n\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, new)


if __name__ == "__main__":
    sys.exit(main())
