"""Batched augmentations: torchvision's distributions, exact crops, masks that move with images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fedforget.data.augment import (
    CIFAR_CROP_PADDING,
    cifar_augment,
    crop_at,
    random_crop,
    random_horizontal_flip,
    rot90_flip,
)

SIZE = 16
PAD = CIFAR_CROP_PADDING
SAMPLES = 4000


def position_image() -> torch.Tensor:
    """An image whose pixels name their position: channel 0 row + 1, channel 1 column + 1."""
    rows = torch.arange(1, SIZE + 1, dtype=torch.float32)[:, None].expand(SIZE, SIZE)
    cols = torch.arange(1, SIZE + 1, dtype=torch.float32)[None, :].expand(SIZE, SIZE)
    return torch.stack([rows, cols])


def decode(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top offset, left offset, flipped) of padded-and-cropped position images.

    The centre pixel of a crop at (top, left) shows row ``top - PAD + c`` (and
    column likewise, mirrored when flipped): every offset leaves it inside
    the original image for a 16x16 image and 4 pixels of padding.
    """
    c = SIZE // 2
    row = images[:, 0, c, c].round().long() - 1
    col_centre = images[:, 1, c, c].round().long() - 1
    col_next = images[:, 1, c, c + 1].round().long() - 1
    flipped = (col_next < col_centre).numpy()
    # unflipped the centre column is left - PAD + c; flipped it is left - PAD + (SIZE - 1 - c)
    left = torch.where(
        torch.from_numpy(flipped), col_centre + PAD - (SIZE - 1 - c), col_centre + PAD - c
    )
    return (row + PAD - c).numpy(), left.numpy(), flipped


def frequencies(values: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(values, minlength=size) / len(values)


def test_crop_and_flip_match_torchvision_in_distribution():
    """Per-offset and flip frequencies agree with RandomCrop(padding=4) + RandomHorizontalFlip."""
    batch = position_image().expand(SAMPLES, 2, SIZE, SIZE).contiguous()
    generator = torch.Generator().manual_seed(0)
    ours = random_horizontal_flip(random_crop(batch, generator, PAD), generator)
    torch.manual_seed(0)
    transform = v2.Compose([v2.RandomCrop(SIZE, padding=PAD), v2.RandomHorizontalFlip()])
    theirs = torch.stack([transform(position_image()) for _ in range(SAMPLES)])
    # std of a frequency near 1/9 over 4,000 draws: 0.005; of a difference of two: 0.007
    for a, b in zip(decode(ours)[:2], decode(theirs)[:2], strict=True):
        assert a.min() >= 0 and a.max() <= 2 * PAD  # decoding sanity: offsets in 0..8
        assert np.abs(frequencies(a, 2 * PAD + 1) - frequencies(b, 2 * PAD + 1)).max() < 0.035
        assert np.abs(frequencies(a, 2 * PAD + 1) - 1 / (2 * PAD + 1)).max() < 0.025
    assert abs(decode(ours)[2].mean() - decode(theirs)[2].mean()) < 0.04
    assert abs(decode(ours)[2].mean() - 0.5) < 0.03
    # offsets and flips are drawn independently per image
    top, left, flipped = decode(ours)
    assert abs(np.corrcoef(top, left)[0, 1]) < 0.06
    assert abs(np.corrcoef(top, flipped)[0, 1]) < 0.06


def test_a_crop_at_given_offsets_is_torchvisions_crop_exactly():
    """Same offsets, same window: crop_at on the padded batch equals torchvision's crop."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(5, 3, 32, 32, generator=generator)
    top = torch.tensor([0, 8, 3, 4, 7])
    left = torch.tensor([8, 0, 5, 4, 1])
    padded = TF.pad(images, [PAD])
    ours = crop_at(padded, top, left, 32, 32)
    for i in range(len(images)):
        expected = TF.crop(padded[i], int(top[i]), int(left[i]), 32, 32)
        assert torch.equal(ours[i], expected)
    assert torch.equal(
        crop_at(padded, torch.full((5,), PAD), torch.full((5,), PAD), 32, 32), images
    )


def test_cifar_augment_draws_on_the_generators_device_and_keeps_shapes():
    """The generator's device decides where draws happen; a CPU generator gives CPU draws."""
    images = torch.randn(6, 3, 32, 32)
    labels = torch.arange(6)
    first = cifar_augment(images, labels, torch.Generator().manual_seed(5))
    again = cifar_augment(images, labels, torch.Generator(device="cpu").manual_seed(5))
    assert torch.equal(first[0], again[0]) and first[1] is labels
    assert first[0].shape == images.shape and first[0].is_contiguous()
    assert not torch.equal(first[0], images)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rot90_flip_moves_each_mask_with_its_image(seed):
    """The batched rot90-flip equals turning and flipping image by image with the same draws."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(12, 1, 6, 6, generator=generator)
    masks = torch.randint(0, 3, (12, 6, 6), generator=generator)
    out_images, out_masks = rot90_flip(images, masks, torch.Generator().manual_seed(seed))
    draws = torch.Generator().manual_seed(seed)
    turns = torch.randint(0, 4, (12,), generator=draws)
    flips = torch.randint(0, 2, (12, 2), generator=draws)
    assert len(set(turns.tolist())) > 1 and flips.any() and not flips.all()
    for i in range(12):
        image, mask = (
            torch.rot90(images[i], int(turns[i]), (-2, -1)),
            torch.rot90(masks[i], int(turns[i]), (-2, -1)),
        )
        if flips[i, 0]:
            image, mask = image.flip(-1), mask.flip(-1)
        if flips[i, 1]:
            image, mask = image.flip(-2), mask.flip(-2)
        assert torch.equal(out_images[i], image) and torch.equal(out_masks[i], mask)
