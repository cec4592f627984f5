"""Training-time augmentations, applied per mini-batch to tensors.

A dataset names its augmentation (``SplitDataset.augmentation``); the run
config's ``augment`` switches it on. Randomness comes from a seeded
``torch.Generator``, so augmented runs stay reproducible. Each augmentation
is a few tensor operations on the whole batch, on the device of the batch
and drawing on the device of the generator: on a GPU it runs there, with a
generator on the GPU (the same distribution, another random stream).

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


def random_rotation(
    x: torch.Tensor, generator: torch.Generator, max_degrees: float
) -> torch.Tensor:
    """Rotate each image ``(N, C, H, W)`` by an angle uniform in +-``max_degrees`` (bilinear)."""
    n = len(x)
    angle = (draw_uniform(n, generator) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop(x: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """Zero-pad images ``(N, C, H, W)`` by ``padding`` and crop each back at a uniform offset.

    As torchvision's ``RandomCrop(size, padding)``: the top and left offsets
    are each uniform over ``0..2 * padding``, drawn per image.
    """
    n = len(x)
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    return crop_at(padded, top, left, x.shape[-2], x.shape[-1])


def crop_at(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """The ``height x width`` window of each image ``(N, C, H', W')`` at its ``top``, ``left``."""
    device = images.device
    rows = (top[:, None].to(device) + torch.arange(height, device=device)[None])[:, :, None]
    cols = (left[:, None].to(device) + torch.arange(width, device=device)[None])[:, None, :]
    batch = torch.arange(len(images), device=device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_horizontal_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image ``(N, C, H, W)`` left-right with probability 1/2."""
    flip = (draw_uniform(len(x), generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cifar_augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation, pad-4 random crop and horizontal flip of images ``(N, C, H, W)``."""
    x = random_rotation(x, generator, CIFAR_MAX_ROTATION_DEGREES)
    x = random_crop(x, generator, CIFAR_CROP_PADDING)
    x = random_horizontal_flip(x, generator)
    return x.contiguous(), y


def rot90_flip(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rot90 and flip of square images ``(N, C, H, W)`` and masks ``(N, H, W)``.

    Each image turns by ``k`` quarter turns (``k`` uniform in 0..3), then
    flips left-right and top-bottom, each with probability 1/2; its mask
    moves with it.
    """
    n = len(x)
    turns = torch.randint(0, 4, (n,), generator=generator, device=generator.device).to(x.device)
    flips = torch.randint(0, 2, (n, 2), generator=generator, device=generator.device).to(x.device)
    images, masks = x, y
    for k in (1, 2, 3):
        turned = turns == k
        images = torch.where(turned[:, None, None, None], torch.rot90(x, k, (-2, -1)), images)
        masks = torch.where(turned[:, None, None], torch.rot90(y, k, (-2, -1)), masks)
    for column, axis in ((0, -1), (1, -2)):
        flipped = flips[:, column].bool()
        images = torch.where(flipped[:, None, None, None], images.flip(axis), images)
        masks = torch.where(flipped[:, None, None], masks.flip(axis), masks)
    return images.contiguous(), masks.contiguous()


def draw_uniform(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws uniform in [0, 1) from ``generator``, on the generator's device."""
    return torch.rand(n, generator=generator, device=generator.device)


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
