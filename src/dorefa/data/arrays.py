"""ArrayDataset: a whole data set held in memory as one uint8 image tensor and one label tensor."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """In-memory image classification data set at its native resolution.

    images: uint8 (N, C, H, W); labels: int64 (N,). Items are ``(image (C, H, W) uint8, int)``;
    conversion to float, resizing and augmentation happen per batch in
    :func:`dorefa.data.transforms.to_model_input`, which is far faster than per item.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        *,
        num_classes: int,
        name: str,
        classes_from_labels: bool = False,
    ) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if 0 in images.shape[1:]:
            raise ValueError(f"images of shape {tuple(images.shape[1:])} hold no pixels")
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"labels must be integer (N,), got {labels.dtype} {tuple(labels.shape)}"
            )
        if len(labels) != len(images):
            raise ValueError(f"label count {len(labels)} != image count {len(images)}")
        labels = labels.to(torch.int64)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"labels must lie in 0..{num_classes - 1}, "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
        self.images = images  # (N, C, H, W) uint8
        self.labels = labels  # (N,) int64
        self.num_classes = int(num_classes)
        self.in_channels = int(images.shape[1])
        self.name = name
        # num_classes is 1 + the largest label seen (an idx folder), not the data set's own
        # count (data.require_model_shape says so where it refuses fewer)
        self.classes_from_labels = classes_from_labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, n: int) -> ArrayDataset:
        """The first n items (all of them when n >= len), sharing memory with this data set."""
        if n < 0:
            raise ValueError(f"subset size must be >= 0, got {n}")
        return ArrayDataset(
            self.images[:n],
            self.labels[:n],
            num_classes=self.num_classes,
            name=self.name,
            classes_from_labels=self.classes_from_labels,
        )

    def __repr__(self) -> str:
        _, c, h, w = self.images.shape
        return (
            f"ArrayDataset(name={self.name!r}, n={len(self)}, shape=({c}, {h}, {w}), "
            f"num_classes={self.num_classes})"
        )
