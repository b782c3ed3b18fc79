"""Training throughput (images/s) of the (1,2,6) svhn model on Fashion-MNIST, on this CPU:

  1 process x 1 thread | 1 process x 2 threads | 2 processes (DDP, gloo) x 1 thread | bf16 autocast

Each measurement is a fresh process group (``python bench_train.py --worker``, torchrun's
environment variables), timing training steps (forward, backward with f_g, DDP all-reduce,
Adam) of a global batch of ``--batch`` real images for about ``--seconds`` after ``--warmup``
steps (rank 0 decides when to stop; every rank runs the same steps); the configurations are
interleaved round by round and the table gives the median over ``--rounds``.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py          # docs/distributed.md
    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py --seconds 2 --rounds 1  # quick

``--engines`` instead compares the training engines in one process (``train_engines.py``):
``--engine int`` vs ``--engine torch`` vs float vs float bf16 per step, and each conv's three
products on the integer kernels vs torch fp32 (docs/training.md)::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py --engines
    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py --engines --passive-openmp
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CONFIGS = [  # (label, processes, threads per process, amp)
    ("1 proc x 1 thread, fp32", 1, 1, None),
    ("1 proc x 2 threads, fp32", 1, 2, None),
    ("2 procs (gloo) x 1 thread, fp32", 2, 1, None),
    ("1 proc x 1 thread, bf16 autocast", 1, 1, "bf16"),
    ("1 proc x 2 threads, bf16 autocast", 1, 2, "bf16"),
]


def worker(args: argparse.Namespace) -> None:
    import torch
    from torch.nn import functional as F

    from dorefa import distributed
    from dorefa.data import get_dataset, to_model_input
    from dorefa.models import create_model
    from dorefa.nn import set_grad_generator
    from dorefa.optim import amp_dtype

    torch.set_num_threads(args.threads)
    info = distributed.setup("cpu")
    rank, world = info.rank, info.world_size
    data = get_dataset("fashion-mnist", "train")
    torch.manual_seed(0)
    model = create_model("svhn", bits="1,2,6", num_classes=10, in_channels=1, width=args.width)
    set_grad_generator(model, torch.Generator().manual_seed(rank))
    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dtype = amp_dtype(args.amp, torch.device("cpu"))
    gen = torch.Generator().manual_seed(rank)
    local = args.batch // world
    perm = distributed.shard(torch.randperm(len(data), generator=gen), rank, world)

    def step(k: int) -> None:
        k %= len(perm) // local
        idx = perm[k * local : (k + 1) * local]
        x = to_model_input(data.images[idx], 40, train=True, augment="crop-flip", generator=gen)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for k in range(args.warmup):
        step(k)
    if info.enabled:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    steps, go = 0, torch.ones(1)
    while go.item():
        step(args.warmup + steps)
        steps += 1
        go.fill_(float(time.perf_counter() - t0 < args.seconds))
        if info.enabled:
            torch.distributed.broadcast(go, 0)  # rank 0's clock decides for everyone
    seconds = time.perf_counter() - t0
    if rank == 0:
        print(json.dumps({"images_per_s": args.batch * steps / seconds, "steps": steps}))
    distributed.teardown(info)


def measure(nproc: int, threads: int, amp: str | None, args: argparse.Namespace) -> float:
    from dorefa.distributed import _free_port, worker_env

    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--threads",
        str(threads),
        "--batch",
        str(args.batch),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--width",
        str(args.width),
    ] + (["--amp", amp] if amp else [])
    port = _free_port()
    procs = []
    for rank in range(nproc):
        env = worker_env(rank, nproc, port, OMP_NUM_THREADS=str(threads))
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"worker failed: {outs}")
    return json.loads(outs[0].strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--engines",
        action="store_true",
        help="compare the training engines in one process (train_engines.py), width 1.0",
    )
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--amp", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=128, help="global batch (the paper's 128)")
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument(
        "--width",
        type=float,
        default=0.5,
        help="channel multiplier (1.0 = the paper's model A, 0.5 = model B)",
    )
    p.add_argument(
        "--passive-openmp",
        action="store_true",
        help="OMP_WAIT_POLICY=PASSIVE for every configuration, as `dorefa train --engine int` "
        "runs (the torch configurations' own default is torch's)",
    )
    args = p.parse_args()
    from dorefa.process import keep_freed_memory, passive_openmp

    # as `dorefa train` runs (every configuration of this process): before torch loads
    if args.passive_openmp:
        passive_openmp()
    keep_freed_memory()
    if args.engines:
        import train_engines

        train_engines.main(args.batch, args.seconds / 2, args.rounds)
        return
    if args.worker:
        worker(args)
        return
    results: dict[str, list[float]] = {c[0]: [] for c in CONFIGS}
    for r in range(args.rounds):
        for label, nproc, threads, amp in CONFIGS:
            results[label].append(measure(nproc, threads, amp, args))
            print(f"round {r + 1}: {label}: {results[label][-1]:.1f} img/s", file=sys.stderr)
    base = statistics.median(results[CONFIGS[0][0]])
    print(
        f"svhn (1,2,6) width {args.width}, Fashion-MNIST 40x40, global batch {args.batch}, "
        f"~{args.seconds:g} s per run x {args.rounds} rounds (interleaved), medians\n"
    )
    print("| configuration | images/s (median) | runs | vs 1 proc x 1 thread |")
    print("|---|---:|---|---:|")
    for label, *_ in CONFIGS:
        runs = results[label]
        med = statistics.median(runs)
        print(
            f"| {label} | {med:.1f} | {', '.join(f'{v:.0f}' for v in runs)} | {med / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
