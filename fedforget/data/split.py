"""The in-memory form every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SplitDataset:
    """A train/test split as tensors: images ``(N, C, H, W)`` float32, labels int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    task: str = "classification"
    """``"classification"`` (labels ``(N,)``) or ``"segmentation"`` (masks ``(N, H, W)``)."""
    augmentation: str = ""
    """Name of the training augmentation (``fedforget.data.augment``); used with ``augment``."""
    train_groups: torch.Tensor | None = None
    """Natural client (e.g. site) of each training example, for ``partitioner='natural'``."""
    group_names: tuple[str, ...] = ()
    """Name of each natural group (group id = position)."""
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)
