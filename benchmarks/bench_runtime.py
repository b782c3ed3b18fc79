"""The whole exported network on the bit runtime against the same network in torch.

Contestants, interleaved round by round in one process (the table shows medians over rounds),
each row at one thread count for all (runtime threads, torch.set_num_threads and numpy's BLAS):

- ``bit runtime``: the .dorefa file (float first conv + integer middle layers with folded
  thresholds, each on the kernel the runtime picked for it + float classifier; residual adds in
  float), numpy + dorefa.kernels, loaded with ``dorefa.runtime.load(path, threads=t)``;
- ``torch fp32``: the float-equivalent network (plain Conv2d/BN/ReLU/pools/Linear, same shapes,
  FloatFunctional residual adds; ``benchmarks/float_equivalent.py``), run eager and as
  TorchScript frozen with ``torch.jit.optimize_for_inference`` (oneDNN's weights packed once,
  not per call); the table shows the faster per row;
- ``torch int8``: that network after eager-mode post-training static quantization
  (torch.ao.quantization, conv+BN+ReLU fused, calibrated on a few batches), on the engines
  ``x86`` and ``fbgemm``, each eager and TorchScript frozen (no Python between the layers:
  3.7x faster than eager at batch 1 on Zen 4); the table shows the fastest per row;
- ``torch DoReFa``: the DoReFa model itself in eval mode (fake quantization in float: what
  training runs; shown for reference).

The speed does not depend on the weights' values, so by default each model is untrained with
BN statistics calibrated on random inputs; ``--checkpoint`` uses a trained one instead. Sizes:
the .dorefa file vs torch.save of the float state_dict. Rounds are time-boxed: at most
``--rounds``, at least 3, fewer when a round takes long (``--budget`` seconds per row).

    .venv/bin/python benchmarks/bench_runtime.py --out docs/runtime.md   # svhn, writes docs
    .venv/bin/python benchmarks/bench_runtime.py --quick --checkpoint runs/X/checkpoint.pt ...
    .venv/bin/python benchmarks/bench_runtime.py --model resnet18 alexnet \\
        --bits resnet18:1,2,6 resnet18:1,4,32 alexnet:1,2,6 --batches 1,8 --threads 1,2
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch load their BLAS; each row then sets its count

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_kernels import SETTLE_SECONDS, cpu_name, isa_line  # noqa: E402
from float_equivalent import float_equivalent, int8_model  # noqa: E402
from torch import nn  # noqa: E402

import dorefa.kernels as K  # noqa: E402
import dorefa.runtime as rt  # noqa: E402
from dorefa.exporter import export  # noqa: E402
from dorefa.fileio import atomic_write_text  # noqa: E402
from dorefa.models import create_model, input_size, list_models  # noqa: E402
from dorefa.nn import QConv2d  # noqa: E402

# The generated part of the report sits between these markers; the rest of the file is kept.
# svhn keeps the original markers; every other model has its own block (see markers()).
BEGIN, END = "<!-- bench_runtime:begin -->", "<!-- bench_runtime:end -->"
ENGINES = ("x86", "fbgemm")  # torch int8 runs on both; the table shows the faster per row
NAMES = ["bit runtime", "torch fp32", "torch int8", "torch DoReFa"]  # the table's columns
MODEL_NAMES = {"SVHNNet": "svhn", "AlexNet": "alexnet", "ResNet18": "resnet18"}


def markers(model_name: str) -> tuple[str, str]:
    if model_name == "svhn":
        return BEGIN, END
    return f"<!-- bench_runtime:{model_name}:begin -->", f"<!-- bench_runtime:{model_name}:end -->"


def calibrated_model(name: str, bits: str, args, size: int, seed: int = 0) -> nn.Module:
    """An untrained ``name`` model whose BN statistics come from 3 random batches."""
    torch.manual_seed(seed)
    m = create_model(
        name,
        bits=bits,
        num_classes=args.num_classes or (10 if name == "svhn" else 1000),
        in_channels=args.in_channels or (1 if name == "svhn" else 3),
        width=args.width,
    )
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(32 if size <= 64 else 8, first_conv(m).in_channels, size, size))
    return m.eval()


def first_conv(model: nn.Module) -> QConv2d:
    return next(m for m in model.modules() if isinstance(m, QConv2d))


def timed(fn, reps: int) -> float:
    """Seconds per call over ``reps`` calls, after a pause (SETTLE_SECONDS: the contestant
    before this one leaves its idle threads spinning, torch's OpenMP workers for milliseconds,
    on the core this one's second thread needs) and one untimed call (its caches)."""
    time.sleep(SETTLE_SECONDS)
    fn()
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
        "--checkpoint", nargs="+", default=None, help="trained checkpoints (default: untrained)"
    )
    ap.add_argument("--model", nargs="+", default=["svhn"], choices=list_models())
    ap.add_argument(
        "--bits",
        nargs="+",
        default=["1,2,6"],
        help="W,A,G for every model, or MODEL:W,A,G for one (e.g. resnet18:1,4,32)",
    )
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--in-channels", type=int, default=None, help="default 1 svhn, 3 others")
    ap.add_argument("--num-classes", type=int, default=None, help="default 10 svhn, 1000 others")
    ap.add_argument("--input-size", type=int, default=None, help="default: the model's (40, 224)")
    ap.add_argument("--batches", default=None, help="batch sizes (default 1,32 svhn, 1,8 others)")
    ap.add_argument("--threads", default="1", help="thread counts, one row each (e.g. 1,2)")
    ap.add_argument("--rounds", type=int, default=15, help="at most this many rounds per row")
    ap.add_argument("--seconds", type=float, default=0.25, help="per contestant per round")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds per row (fewer rounds)")
    ap.add_argument("--quick", action="store_true", help="3 rounds of ~0.1 s (a smoke run)")
    ap.add_argument("--out", default=None, help="write a markdown report here (docs/runtime.md)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.budget = 3, 0.1, 1.0
    args.thread_counts = [int(t) for t in args.threads.split(",")]
    if min(args.thread_counts) < 1:
        ap.error(f"--threads must be counts >= 1, got {args.threads!r}")
    for spec in args.bits:
        if ":" in spec and spec.split(":", 1)[0] not in args.model:
            ap.error(f"--bits {spec}: {spec.split(':', 1)[0]!r} is not among --model")
    return args


def cases(args) -> list[tuple[str, str]]:
    """(model name, bits) pairs to measure, in order; a MODEL:W,A,G spec names its model."""
    out = []
    for name in args.model:
        for spec in args.bits:
            model, _, bits = spec.rpartition(":")
            if model in ("", name):
                out.append((name, bits))
    return out


def load_model(args, name: str, bits: str | None, checkpoint: str | None = None) -> tuple:
    """(the DoReFa model to time, a description of it, its input size): the trained model of
    ``checkpoint`` when given (its own model and bits), else an untrained ``name`` at ``bits``."""
    if checkpoint is not None:
        from dorefa.checkpoint import load_checkpoint, model_from_checkpoint

        model = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
        return model, f"trained checkpoint {checkpoint}", args.input_size or model.input_size
    size = args.input_size or input_size(name)
    model = calibrated_model(name, bits, args, size)
    return model, f"untrained {name} width {args.width} (BN calibrated on random inputs)", size


def time_contestants(contestants: dict, shape: tuple, batches: list[int], args, gen) -> tuple:
    """Median seconds per call for every (contestant, batch, threads), interleaved rounds,
    and the rounds each row ran.

    ``contestants``: name -> (function(x, threads), "torch" or "numpy": the input it takes).
    The numpy view of the input is made before timing, so no contestant pays for a
    conversion. Each row runs ``args.rounds`` rounds, fewer (at least 3) when one round would
    take more than ``args.budget / args.rounds`` seconds.
    """
    results: dict[tuple[str, int, int], list[float]] = {}
    rounds_run = {}
    for n in batches:
        x = torch.rand(n, *shape, generator=gen)
        inputs = {"torch": x, "numpy": x.numpy()}
        for t in args.thread_counts:
            torch.set_num_threads(t)
            fns = {
                name: (lambda f=f, x=inputs[kind], t=t: f(x, t))
                for name, (f, kind) in contestants.items()
            }
            with torch.no_grad(), blas_threads(t):
                reps, round_s = {}, 0.0
                for name, fn in fns.items():  # warm-up and calibrate repetitions
                    fn()
                    s = timed(fn, 1 if args.quick else 2)
                    reps[name] = max(1, int(args.seconds / max(s, 1e-6)))
                    round_s += reps[name] * s
                rounds = max(3, min(args.rounds, int(args.budget / max(round_s, 1e-6))))
                rounds_run[(n, t)] = rounds
                names = list(fns)
                for r in range(rounds):  # the order rotates: no contestant always goes first
                    for name in names[r % len(names) :] + names[: r % len(names)]:
                        results.setdefault((name, n, t), []).append(timed(fns[name], reps[name]))
    return {k: statistics.median(v) for k, v in results.items()}, rounds_run


def blas_threads(t: int):
    """numpy's BLAS (the runtime's float layers) on ``t`` threads inside the block."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(t)


TORCH_VARIANTS = {
    "torch fp32": ("eager", "frozen"),
    "torch int8": tuple(f"{e} {mode}" for e in ENGINES for mode in ("eager", "frozen")),
}


def best_torch(med: dict) -> dict:
    """Add ("torch fp32", n, t) and ("torch int8", n, t) = their fastest variant's time (torch
    at its best); returns (name, n, t) -> that variant."""
    picked = {}
    for n, t in {(n, t) for (_, n, t) in med}:
        for name, variants in TORCH_VARIANTS.items():
            best = min(variants, key=lambda v: med[(f"{name} {v}", n, t)])
            med[(name, n, t)] = med[(f"{name} {best}", n, t)]
            picked[(name, n, t)] = best
    return picked


def frozen(net: nn.Module, example: torch.Tensor, fp32: bool):
    """``net`` as TorchScript, traced and frozen (fp32: also optimize_for_inference, which
    packs the conv weights for oneDNN once); checked equal to the eager module."""
    with torch.no_grad():
        script = torch.jit.freeze(torch.jit.trace(net.eval(), example, check_trace=False))
        if fp32:
            script = torch.jit.optimize_for_inference(script)
        for n in (1, len(example)):
            want, got = net(example[:n]), script(example[:n])
            assert torch.allclose(want, got, rtol=1e-4, atol=1e-4), "frozen != eager"
    return script


def kernel_summary(runtime) -> str:
    """One line: the kernels the loaded model's bit convolutions picked, with counts."""
    counts = Counter(row.kernel for row in runtime.plan())
    return ", ".join(f"{k} x{c}" for k, c in counts.items()) or "none (no bit convolution)"


def row_label(n: int, t: int, threads: list[int], table: str) -> str:
    if table == "ms":
        return f"| {n} |" if len(threads) == 1 else f"| {n} | {t} |"
    return f"| batch {n} |" if len(threads) == 1 else f"| batch {n}, {t} thr |"


def render_report(med: dict, rows: list[tuple[int, int]], threads: list[int], head: str, sizes):
    """The markdown tables: ms per batch with ratios, images/s, file sizes."""
    file_size, float_sd = sizes
    tcol = "" if len(threads) == 1 else " threads |"
    lines = [head, ""]
    lines.append(
        f"| batch |{tcol} "
        + " | ".join(f"{nm} ms/batch" for nm in NAMES)
        + " | fp32 / bit | int8 / bit |"
    )
    lines.append("|" + "---|" * (len(NAMES) + 3 + (len(threads) > 1)))
    for n, t in rows:
        cells = [f"{1e3 * med[(nm, n, t)]:.3f}" for nm in NAMES]
        r32 = med[("torch fp32", n, t)] / med[("bit runtime", n, t)]
        r8 = med[("torch int8", n, t)] / med[("bit runtime", n, t)]
        lines.append(
            row_label(n, t, threads, "ms")
            + " "
            + " | ".join(cells)
            + f" | {r32:.2f}x | {r8:.2f}x |"
        )
    lines.append("")
    lines.append("| images/s | " + " | ".join(NAMES) + " |")
    lines.append("|" + "---|" * (len(NAMES) + 1))
    for n, t in rows:
        lines.append(
            row_label(n, t, threads, "ips")
            + " "
            + " | ".join(f"{n / med[(nm, n, t)]:.0f}" for nm in NAMES)
            + " |"
        )
    lines.append("")
    lines.append(
        f"size: .dorefa file {file_size} bytes vs torch.save(float state_dict) "
        f"{float_sd} bytes: {float_sd / file_size:.1f}x smaller"
    )
    return "\n".join(lines)


def contestants_for(model: nn.Module, path: Path, args, calib: list[torch.Tensor]) -> tuple:
    """name -> (function(x, threads), input kind) for one model, and the runtimes by threads."""
    runtimes = {t: rt.load(path, threads=t) for t in args.thread_counts}
    fnet = float_equivalent(model)
    qnets = {e: int8_model(fnet, calib, e) for e in ENGINES}
    with torch.no_grad():  # sanity: every contestant runs and gives (N, classes)
        x = calib[0][:2]
        shapes = {tuple(f(x).shape) for f in (fnet, *qnets.values(), model)}
        shapes.add(runtimes[args.thread_counts[0]](x.numpy()).shape)
        assert len(shapes) == 1, f"contestants disagree on the output shape: {shapes}"
        x = calib[0]  # a timed kernel must also be right: the runtime's classes vs torch's
        ours = runtimes[args.thread_counts[0]](x.numpy()).argmax(1)
        agreement = float((torch.from_numpy(ours) == model(x).argmax(1)).float().mean())
    contestants = {"bit runtime": (lambda x, t: runtimes[t](x), "numpy")}
    example = calib[0][:4]
    contestants["torch fp32 eager"] = (lambda x, t: fnet(x), "torch")
    ffnet = frozen(fnet, example, fp32=True)
    contestants["torch fp32 frozen"] = (lambda x, t: ffnet(x), "torch")
    for e, q in qnets.items():
        contestants[f"torch int8 {e} eager"] = (lambda x, t, q=q: q(x), "torch")
        fq = frozen(q, example, fp32=False)
        contestants[f"torch int8 {e} frozen"] = (lambda x, t, q=fq: q(x), "torch")
    contestants["torch DoReFa"] = (lambda x, t: model(x), "torch")
    return contestants, runtimes, fnet, agreement


def measure(args, name: str, bits: str | None, checkpoint: str | None = None) -> tuple[str, str]:
    """One case, (model, bits) or a checkpoint: export, time, and its report; returns (model
    name, report)."""
    model, what, size = load_model(args, name, bits, checkpoint)
    name = MODEL_NAMES.get(type(model).__name__, name)
    in_ch = first_conv(model).in_channels
    path = Path(tempfile.mkdtemp()) / "model.dorefa"
    info = export(model, path, input_size=size)
    gen = torch.Generator().manual_seed(0)
    calib = [torch.rand(32 if size <= 64 else 8, in_ch, size, size, generator=gen) for _ in "abcd"]
    contestants, runtimes, fnet, agreement = contestants_for(model, path, args, calib)
    batches = [int(b) for b in (args.batches or ("1,32" if name == "svhn" else "1,8")).split(",")]
    med, rounds = time_contestants(contestants, (in_ch, size, size), batches, args, gen)
    picked = best_torch(med)
    rows = [(n, t) for n in batches for t in args.thread_counts]
    tc = args.thread_counts
    thr = "1 thread" if tc == [1] else f"threads {args.threads} (runtime and torch alike)"
    lo, hi = min(rounds.values()), max(rounds.values())
    head = (
        f"model: {what}; bits {model.bits}; input {in_ch}x{size}x{size}\n"
        f"kernel backend: {K.backend()} ({K.kernel_name()}); CPU: {cpu_name()}; {thr}; "
        f"torch {torch.__version__}, numpy {np.__version__}; "
        f"{hi if lo == hi else f'{lo}-{hi}'} rounds, medians; denormals flushed to zero\n"
        f"{isa_line()}\n"
        f"kernels: {kernel_summary(runtimes[tc[0]])}; the runtime's class = torch DoReFa's on "
        f"{agreement:.1%} of {len(calib[0])} inputs\n"
        "torch at its best (fastest variant per row): "
        + ", ".join(
            f"batch {n}{'' if len(tc) == 1 else f' {t} thr'} fp32 {picked[('torch fp32', n, t)]}"
            f", int8 {picked[('torch int8', n, t)]}"
            for n, t in rows
        )
    )
    sizes = (info["size"], state_dict_bytes(fnet))
    return name, render_report(med, rows, tc, head, sizes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")  # torch.ao.quantization deprecation notices
    # Denormal floats flushed to zero, for every contestant (the thread's FTZ/DAZ): a trained
    # model's float32 network met denormals and ran 1.7x slower than an untrained one.
    torch.set_flush_denormal(True)
    todo = [("svhn", None, path) for path in args.checkpoint or []] or [
        (name, bits, None) for name, bits in cases(args)
    ]
    if not todo:
        sys.exit(f"no bits for {args.model}: give --bits W,A,G or MODEL:W,A,G")
    reports: dict[str, list[str]] = {}
    for name, bits, checkpoint in todo:
        name, report = measure(args, name, bits, checkpoint)
        print(report + "\n", flush=True)
        reports.setdefault(name, []).append(report)
    if args.out:
        cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_runtime.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        for name, parts in reports.items():
            write_block(Path(args.out), report_block(name, cmd, parts), *markers(name))
        print(f"wrote {args.out}")
    return 0


def report_block(name: str, cmd: str, parts: list[str]) -> str:
    begin, end = markers(name)
    tables = "\n\n".join(parts)
    return f"""{begin}
Measured {datetime.date.today().isoformat()} with

    {cmd}

{tables}

*bit runtime*: `dorefa.runtime.load(file, threads=t)(x)` end to end on numpy float32 input.
*torch fp32*: the float-equivalent network (same shapes, ReLU for f_a), the faster of eager
and TorchScript frozen + optimize_for_inference per row. *torch int8*: that network after
post-training static quantization (conv+BN+ReLU fused, 4 calibration batches), the fastest of
engines x86 and fbgemm, each eager and TorchScript frozen, per row. *torch DoReFa*: the
training-time model in eval mode (fake quantization in float32). "ratio" = torch time /
bit-runtime time, so > 1 means the bit runtime is faster.
{end}"""


def write_block(path: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between ``begin`` and ``end`` in ``path`` (hand-written text around it
    stays); a file without the markers gets the block appended. Written atomically."""
    old = path.read_text() if path.exists() else "# The bit runtime vs torch (whole network)\n\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, new)


if __name__ == "__main__":
    sys.exit(main())
