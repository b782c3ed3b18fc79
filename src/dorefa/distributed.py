"""Data-parallel training: process groups, sharding, SyncBatchNorm on CPU, the ``--nproc`` launcher.

``dorefa train`` runs data-parallel when started by ``torchrun --nproc_per_node N -m dorefa train``
(or by ``dorefa train --nproc N``, which starts the N workers itself with the same environment
variables torchrun sets: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT).

Sharding follows ``torch.utils.data.DistributedSampler`` (drop_last=False): the epoch's
permutation (the same on every rank) is padded with its own first entries up to a multiple of the
world size W, and rank r takes positions r, r + W, r + 2W, ... Each rank batches its shard with
B / W images, so step k of the W ranks together covers positions [kB, (k+1)B) of the padded
permutation: the same images as step k of a single process with batch B.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .say import launched

T = TypeVar("T")

__all__ = [
    "DistInfo",
    "setup",
    "teardown",
    "shard",
    "shard_eval",
    "all_reduce_sum",
    "together",
    "raised_once",
    "PeerFailed",
    "broadcast_buffers",
    "state_hash",
    "check_replicas",
    "convert_sync_batchnorm",
    "CPUSyncBatchNorm",
    "launch",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group

    @property
    def enabled(self) -> bool:
        """In a process group (DDP, sharding, rank 0 writes), also a group of one process."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def setup(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment when :func:`launched`, with
    WORLD_SIZE >= 1 (``torchrun --nproc_per_node 1`` gives a group of one process, which runs the
    data-parallel code path: DDP, all-reduce). Nothing otherwise.

    Backend: nccl for CUDA, gloo for CPU."""
    world = _env_int("WORLD_SIZE", 1)
    if world < 1 or not launched():
        return DistInfo()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run a single process")
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def teardown(info: DistInfo, failed: bool = False) -> None:
    """Leave the process group. ``failed``: this rank stops on an error, so it must not wait
    in a barrier (the others may be in a collective it will never join: the group hung for
    gloo's 30 minutes, the error unprinted); it leaves the group as it is, its exit breaks
    the others' connections, and they stop too."""
    if info.enabled and dist.is_initialized() and not failed:
        dist.barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """DistributedSampler's shard of ``indices`` (already permuted): pad by wrapping around to a
    multiple of ``world_size``, then every ``world_size``-th entry from ``rank``."""
    if world_size <= 1:
        return indices
    n = len(indices)
    total = -(-n // world_size) * world_size
    if total > n:
        reps = -(-(total - n) // max(n, 1))
        indices = torch.cat([indices, indices.repeat(reps)[: total - n]])
    return indices[rank:total:world_size]


def shard_eval(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Disjoint evaluation shards covering 0..n-1 exactly once (no padding: metrics stay exact)."""
    return torch.arange(rank, n, world_size)


class PeerFailed(RuntimeError):
    """This rank stops because another rank failed (that rank says why)."""


def together(fn: Callable[[], T], info: DistInfo) -> T:
    """``fn()`` on every rank, with one outcome: if it raises on any rank, it raises on all (a
    rank left behind would wait in its next collective). Each distinct error is raised by the
    lowest rank that met it, so its line is printed once, not once per rank (a missing data
    folder is missing for every rank); the other ranks raise PeerFailed, which the command
    line leaves unsaid. ``fn`` must make no collective call. Without a process group: ``fn()``."""
    if not (info.enabled and dist.is_initialized()):
        return fn()
    try:
        result, error = fn(), None
    except Exception as exc:  # noqa: BLE001 - raised below, on this rank or as PeerFailed
        result, error = None, exc
    said: list[str | None] = [None] * info.world_size
    dist.all_gather_object(said, None if error is None else f"{type(error).__name__}: {error}")
    if not any(said):
        return result
    if error is not None and said[info.rank] not in said[: info.rank]:
        raise error
    first = next(r for r, text in enumerate(said) if text)
    raise PeerFailed(f"rank {info.rank} stops: rank {first} failed ({said[first]})")


def raised_once(error: Exception, info: DistInfo) -> Exception:
    """What this rank raises for an error that every rank meets at the same point, deciding alike
    on all-reduced values: ``error`` on rank 0, PeerFailed on the others, so that its line is
    printed once."""
    if info.rank == 0:
        return error
    return PeerFailed(f"rank {info.rank} stops: rank 0 failed ({type(error).__name__}: {error})")


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum a few Python numbers over all ranks (float64); identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BN running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step every rank holds
    running statistics updated with its own batch; this makes them rank 0's before evaluation and
    checkpointing, so all replicas are identical."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for b in model.buffers():
        dist.broadcast(b, src)


def state_hash(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, bytes: as a checkpoint's
    digest)."""
    from .checkpoint import content_digest

    return content_digest(model.state_dict())


def check_replicas(model: nn.Module) -> list[str]:
    """Every rank's ``state_hash``; raises RuntimeError if the replicas differ."""
    own = state_hash(model)
    if not (dist.is_available() and dist.is_initialized()):
        return [own]
    hashes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(hashes, own)
    if len(set(hashes)) != 1:
        raise RuntimeError(f"data-parallel replicas diverged: weight hashes {hashes}")
    return [str(h) for h in hashes]


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all_reduce (SUM): the gradient of a sum over ranks is the sum of the ranks'
    gradients. A blocking ``dist.all_reduce`` each way (the deprecated
    ``torch.distributed.nn.functional.all_reduce`` sometimes aborted gloo processes at exit)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are those of the whole global batch (all ranks).

    ``nn.SyncBatchNorm`` only runs on GPUs; this is the same computation for gloo/CPU:
    per channel, S1 = sum x, S2 = sum x^2 and the count n are summed over ranks with a
    differentiable all_reduce (its backward sums the statistics' gradients over ranks), then
    mean = S1 / n, var = S2 / n - mean^2 (biased, for normalising; running_var gets the unbiased
    n / (n - 1) var as nn.BatchNorm does). The all_reduces run on their own process group so
    that they never interleave with DDP's gradient buckets on the default group.
    """

    def __init__(self, *args, process_group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = xf.new_full((1,), float(x.numel() // c))
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])  # (2C + 1,)
        stats = _AllReduceSum.apply(stats, self.process_group or dist.group.WORLD)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm{1,2,3}d -> nn.SyncBatchNorm (CUDA) or CPUSyncBatchNorm (CPU), same state."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    group = dist.new_group(backend="gloo") if dist.is_initialized() else None

    def convert(module: nn.Module) -> nn.Module:
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, CPUSyncBatchNorm
        ):
            new = CPUSyncBatchNorm(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group=group,
            )
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new.to(next(module.buffers(), torch.empty(0)).device)
        for name, child in module.named_children():
            setattr(module, name, convert(child))
        return module

    return convert(model)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(rank: int, nproc: int, port: int, **extra: str) -> dict:
    """This process's environment plus torchrun's variables for local worker `rank` of
    `nproc` (one node), rendezvous on 127.0.0.1:`port` (where the port was found free; a
    MASTER_ADDR left in the environment had the workers wait on another host)."""
    return dict(
        os.environ,
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        GROUP_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        **extra,
    )


LOST_GROUP = 3
"""A worker's exit status when its collectives failed because another worker stopped first."""

STOP_GRACE = 5.0
"""Seconds the launcher gives the other workers, after one fails, to leave on their own (their
collectives fail at once, and they say so) before it stops them."""

LOST_GROUP_GRACE = 10.0
"""The same when the first to fail only lost its group: the worker that stopped first may still
be on its way out, with its own status (the cause)."""


def launch(nproc: int, argv: list[str], module: str = "dorefa") -> int:
    """Start ``nproc`` local workers ``python -m dorefa ARGV`` with torchrun's environment variables
    (a single-node stand-in for ``torchrun --nproc_per_node``). If one worker fails, the others
    are stopped; if the launcher dies, so do they (SIGTERM). Returns the failing worker's exit
    status (a worker killed by signal S: 128 + S, and a line saying so), else 0. A worker that
    only lost its group (LOST_GROUP) may exit before the one that caused it: the cause's status
    wins if it comes within LOST_GROUP_GRACE seconds."""
    from .process import die_with_parent

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    port = _free_port()
    procs: list[subprocess.Popen] = []
    posix = os.name == "posix"
    for rank in range(nproc):
        env = worker_env(rank, nproc, port)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", module, *argv],
                env=env,
                preexec_fn=die_with_parent if posix else None,
            )
        )
    try:
        return _wait_for(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _wait_for(procs: list[subprocess.Popen]) -> int:
    """Wait for every worker; once one fails, stop the others after a grace (a dead rank would
    leave them blocked forever). Returns the exit status `launch` describes."""
    status, stop_at, stopped = 0, None, False
    pending = list(procs)
    while pending:
        for p in list(pending):
            try:
                rc = p.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            pending.remove(p)
            cause_after_lost = status == LOST_GROUP and rc not in (0, LOST_GROUP)
            if rc != 0 and not stopped and (status == 0 or cause_after_lost):
                status = _worker_status(procs.index(p), rc)
                grace = LOST_GROUP_GRACE if status == LOST_GROUP else STOP_GRACE
                stop_at = time.monotonic() + grace
        if stop_at is not None and not stopped and time.monotonic() >= stop_at:
            stopped = True
            for q in pending:
                q.terminate()
    return status


def _worker_status(rank: int, rc: int) -> int:
    """The launcher's exit status for worker ``rank``'s ``rc``: a signal's death (rc = -S) is
    said on stderr and becomes 128 + S, as a shell reports it."""
    if rc >= 0:
        return rc
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    print(
        f"dorefa: worker rank {rank} was killed by {name}; the others are stopped", file=sys.stderr
    )
    return 128 - rc
