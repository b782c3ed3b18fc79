"""Random streams of a training run, each derived from (seed, epoch, rank, purpose).

Every stream restarts from its derived seed at the start of each epoch, so a run resumed at
epoch e draws exactly what the uninterrupted run drew there (``--resume`` is bit-identical):

    torch's global RNG  (seed, epoch, rank, "torch")    dropout
    shuffle             (seed, epoch, "shuffle")        the epoch's permutation (all ranks)
    augment             (seed, epoch, rank, "augment")  crops and flips
    grad                (seed, epoch, rank, "gradq")    f_g's stochastic rounding noise

Rank 0's streams are the single-process ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from (seed, epoch, rank, purpose): independent, reproducible
    streams (numpy's SeedSequence of the parts; a string part counts as its first 8 bytes)."""
    words = [
        p if isinstance(p, int) else int.from_bytes(p.encode()[:8].ljust(8, b"\0"), "little")
        for p in parts
    ]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> 1)


def grad_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the GradQuant noise generator of ``rank`` in ``epoch``: independent per rank (each
    replica quantizes its own gradients), re-derived per epoch (resume == uninterrupted run)."""
    return derive_seed(seed, epoch, rank, "gradq")


@dataclass
class EpochStreams:
    shuffle: torch.Generator  # CPU: the epoch's permutation
    augment: torch.Generator  # on the training device
    grad: torch.Generator  # on the training device


def epoch_streams(seed: int, epoch: int, rank: int, device: torch.device) -> EpochStreams:
    """Re-seed torch's global RNG and make the epoch's generators (see the module docstring)."""
    torch.manual_seed(derive_seed(seed, epoch, rank, "torch"))
    return EpochStreams(
        shuffle=torch.Generator().manual_seed(derive_seed(seed, epoch, "shuffle")),
        augment=torch.Generator(device).manual_seed(derive_seed(seed, epoch, rank, "augment")),
        grad=torch.Generator(device).manual_seed(grad_seed(seed, epoch, rank)),
    )
