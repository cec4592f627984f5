"""Training-time augmentations, applied per mini-batch to tensors.

A dataset names its augmentation (``SplitDataset.augmentation``); the run
config's ``augment`` switches it on. Randomness comes from a seeded
``torch.Generator``, so augmented runs stay reproducible.

* ``cifar`` (the PUF paper's CIFAR recipe): random rotation within +-21.6
  degrees (Keras ``RandomRotation(0.06)``), 4-pixel padding and a random crop
  back to size, random horizontal flip. Inputs are already normalised, so
  padding and the corners a rotation uncovers hold 0, the mean colour.
* ``rot90-flip`` (ProstateMRI, as HarmoFL/FedFA): a random multiple of 90
  degrees, then random horizontal and vertical flips (Keras ``RandomFlip``'s
  default), applied identically to image and mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Augmentation = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]
]

CIFAR_MAX_ROTATION_DEGREES = 0.06 * 360.0
CIFAR_CROP_PADDING = 4


def cifar_augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation, pad-4 random crop and horizontal flip of images ``(N, C, H, W)``."""
    n, _, height, width = x.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(CIFAR_MAX_ROTATION_DEGREES)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    pad = CIFAR_CROP_PADDING
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(height)[None]).to(x.device)
    cols = (left[:, None] + torch.arange(width)[None]).to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous(), y


def rot90_flip(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rot90 and flip of square images ``(N, C, H, W)`` and masks ``(N, H, W)``."""
    turns = torch.randint(0, 4, (len(x),), generator=generator).tolist()
    flips = torch.randint(0, 2, (len(x), 2), generator=generator).tolist()
    images, masks = [], []
    for image, mask, k, (flip_h, flip_v) in zip(x, y, turns, flips, strict=True):
        image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
        if flip_h:
            image, mask = image.flip(-1), mask.flip(-1)
        if flip_v:
            image, mask = image.flip(-2), mask.flip(-2)
        images.append(image)
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)


AUGMENTATIONS: dict[str, Augmentation] = {"cifar": cifar_augment, "rot90-flip": rot90_flip}


def get_augmentation(name: str) -> Augmentation | None:
    """The augmentation of a dataset (None for ``""``: the dataset has none)."""
    if not name:
        return None
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown augmentation {name!r}: choose one of {', '.join(AUGMENTATIONS)}"
        ) from None
