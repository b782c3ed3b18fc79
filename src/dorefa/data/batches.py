"""Batches of a dataset in a given order: ``iterate_batches``, shared by training, evaluation and
the bit runtime's ``dorefa run`` (which must not import the training loop)."""

from __future__ import annotations

import torch


def iterate_batches(
    dataset,
    indices: torch.Tensor,
    batch_size: int,
    workers: int = 0,
    pin_memory: bool | None = None,
):
    """Yield (uint8 images (B,C,H,W), int64 labels) for ``indices`` in order.

    In-memory datasets are sliced directly (fast); others go through a DataLoader (``workers``
    processes; pinned memory by default when CUDA is available)."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            yield dataset.images[idx], dataset.labels[idx]
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=False,
    )
    yield from loader
