"""Data augmentation during unlearning: TrivialAugmentWide, random crop, horizontal flip.

The option ``augment`` of ``ft``, ``rl`` and ``salun``: the unlearning paper
this project follows for centralised baselines found that augmenting the
inputs while unlearning (TrivialAugmentWide, Müller & Hutter 2021,
arXiv 2103.10158, followed by a random crop and a horizontal flip) improved
SalUn, RL and FT.

Inputs are the normalised tensors ``(N, C, H, W)`` the federation trains on.
TrivialAugmentWide's operations (brightness, solarize, posterize, ...) expect
intensities in [0, 1], so each batch is mapped there with fixed bounds
``(low, high)`` (the data's minimum and maximum, see :func:`bounds_of`),
augmented image by image with ``torchvision.transforms.v2`` (one randomly drawn
operation and magnitude per image), then mapped back. The crop pads by
``H // 8`` pixels (4 on 32x32 CIFAR, 1 on 8x8 digits) with the lowest
intensity, as ``RandomCrop(32, padding=4)`` pads with black.

torchvision's transforms draw from the global torch generator; they run
inside :func:`torch.random.fork_rng` seeded from the generator the training
loop passes, so an augmented run is reproducible and leaves the global
random state untouched.
"""

from __future__ import annotations

import torch

from fedforget.data.augment import Augmentation

SEED_RANGE = 2**62


def bounds_of(*tensors: torch.Tensor) -> tuple[float, float]:
    """The lowest and highest intensity over ``tensors`` (the [0, 1] map's end points)."""
    nonempty = [t for t in tensors if t.numel()]
    if not nonempty:
        return 0.0, 1.0
    low = min(float(t.min()) for t in nonempty)
    high = max(float(t.max()) for t in nonempty)
    return low, high if high > low else low + 1.0


def trivial_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    bounds: tuple[float, float] | None = None,
    flip: bool = True,
) -> torch.Tensor:
    """TrivialAugmentWide, pad-and-crop and (if ``flip``) a horizontal flip of each image.

    Parameters
    ----------
    x : torch.Tensor
        Normalised images ``(N, C, H, W)``, any number of channels.
    generator : torch.Generator
        Source of the seed the transforms run under (one draw per call).
    bounds : tuple[float, float] | None
        Intensities mapped to 0 and 1; default ``None``: the batch's own
        minimum and maximum.
    flip : bool
        Random horizontal flip with probability 1/2; default True.

    Returns
    -------
    torch.Tensor
        Augmented images, same shape, dtype and device as ``x``.

    """
    from torchvision.transforms import v2

    if x.ndim != 4:
        raise ValueError(f"trivial_augment expects images (N, C, H, W), got shape {tuple(x.shape)}")
    low, high = bounds if bounds is not None else bounds_of(x)
    height, width = x.shape[-2:]
    steps: list[v2.Transform] = [
        v2.TrivialAugmentWide(),
        v2.RandomCrop((height, width), padding=max(1, height // 8), fill=0.0),
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    transform = v2.Compose(steps)
    seed = int(torch.randint(0, SEED_RANGE, (1,), generator=generator))
    unit = ((x.detach().float().cpu() - low) / (high - low)).clamp(0.0, 1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([transform(image) for image in unit])
    return (out * (high - low) + low).to(dtype=x.dtype, device=x.device)


def unlearning_augmentation(bounds: tuple[float, float], *, flip: bool = True) -> Augmentation:
    """An :data:`~fedforget.data.augment.Augmentation` (images change, labels do not)."""

    def augment(
        x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return trivial_augment(x, generator, bounds=bounds, flip=flip), y

    return augment
