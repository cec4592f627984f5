"""CIFAR-10/100 from torchvision's on-disk python pickles, and offline stand-ins.

The real data are read with ``torchvision.datasets.CIFAR10`` / ``CIFAR100``
from ``data-dir``, which is either the folder holding ``cifar-10-batches-py`` /
``cifar-100-python`` or that folder itself. torchvision checks the files' md5
sums; it downloads them only with ``download=true`` (needs a network).
Training-set order is the pickles' order (``data_batch_1`` .. ``data_batch_5``),
the order the PUF paper's client splits index.

The stand-ins (``cifar10-standin``, ``cifar100-standin``) are scikit-learn's
digits drawn as 32x32 colour images and written in exactly the same pickle
format (:func:`write_cifar_pickles`), so the same loader, normalisation and
augmentation run offline. Their files are not the official ones, so their md5
check is skipped (:class:`_LocalCIFAR10`); the 100-class stand-in uses only
classes 0..9.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from fedforget.data.split import SplitDataset

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
TRAIN_BATCHES = 5
STANDIN_TEST_FRACTION = 0.2


def _cache_dir() -> Path:
    return Path(os.environ.get("FEDFORGET_CACHE", Path.home() / ".cache" / "fedforget"))


def cifar_root(data_dir: str, variant: str, download: bool = False) -> Path:
    """The torchvision root (the folder that contains the pickle folder) for ``data_dir``.

    Raises
    ------
    FileNotFoundError
        If the pickles are not there and ``download`` is off; the message names
        the expected path and the download option.

    """
    folder = CIFAR_FOLDERS[variant]
    source = Path(data_dir) if data_dir else _cache_dir() / "cifar"
    if source.name == folder and source.is_dir():
        return source.parent
    if (source / folder).is_dir() or download:
        return source
    raise FileNotFoundError(
        f"{variant.upper()} not found: expected torchvision's python pickles in "
        f"{source / folder}/. Set data-dir to the folder that contains {folder} "
        f"(e.g. --run-config \"data-dir='/data/cifar'\"), or add download=true to fetch "
        f"it from the internet (needs a network)"
    )


def _torchvision_class(variant: str, verify: bool) -> type:
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if variant == "cifar10" else CIFAR100
    if verify:
        return base
    return type(
        f"_Local{base.__name__}",
        (base,),
        {
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


def read_cifar(
    variant: str, root: Path, *, download: bool = False, verify: bool = True
) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.uint8], NDArray[np.int64], int]:
    """Raw CIFAR arrays through torchvision: ``(N, 32, 32, 3)`` uint8 images, labels."""
    cls = _torchvision_class(variant, verify)
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=False)
    return (
        np.asarray(train.data),
        np.asarray(train.targets, dtype=np.int64),
        np.asarray(test.data),
        np.asarray(test.targets, dtype=np.int64),
        len(train.classes),
    )


def to_split(
    train_images: NDArray[np.uint8],
    train_labels: NDArray[np.int64],
    test_images: NDArray[np.uint8],
    test_labels: NDArray[np.int64],
    num_classes: int,
) -> SplitDataset:
    """Images as ``(N, 3, 32, 32)`` float32, normalised per channel with training statistics."""
    train_x = torch.from_numpy(train_images).permute(0, 3, 1, 2).float().div(255)
    test_x = torch.from_numpy(test_images).permute(0, 3, 1, 2).float().div(255)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return SplitDataset(
        train_x=((train_x - mean) / std).contiguous(),
        train_y=torch.from_numpy(train_labels),
        test_x=((test_x - mean) / std).contiguous(),
        test_y=torch.from_numpy(test_labels),
        num_classes=num_classes,
        augmentation="cifar",
    )


def load_cifar_split(
    variant: str,
    data_dir: str,
    test_fraction: float,
    seed: int,
    *,
    image_size: int = 0,
    download: bool = False,
) -> SplitDataset:
    """CIFAR-10 or CIFAR-100 (official 50k/10k split) from torchvision's pickles."""
    del test_fraction, seed  # the official test set is used
    _check_size(variant, image_size)
    root = cifar_root(data_dir, variant, download)
    return to_split(*read_cifar(variant, root, download=download))


def load_cifar_standin_split(
    variant: str,
    data_dir: str,
    test_fraction: float,
    seed: int,
    *,
    image_size: int = 0,
    download: bool = False,
) -> SplitDataset:
    """The digits as CIFAR pickles (written once to ``data_dir`` or the cache), then loaded."""
    del test_fraction, seed, download  # the stand-in's files fix the split
    _check_size(variant, image_size)
    root = Path(data_dir) if data_dir else _cache_dir() / f"{variant}-standin"
    if not (root / CIFAR_FOLDERS[variant]).is_dir():
        write_cifar_standin(root, variant)
    return to_split(*read_cifar(variant, root, verify=False))


def _check_size(variant: str, image_size: int) -> None:
    if image_size not in (0, 32):
        raise ValueError(f"{variant} images are 32x32: set image-size=0 (or 32)")


def write_cifar_pickles(
    root: Path,
    variant: str,
    train_images: NDArray[np.uint8],
    train_labels: Sequence[int],
    test_images: NDArray[np.uint8],
    test_labels: Sequence[int],
    label_names: Sequence[str] | None = None,
) -> Path:
    """Write images ``(N, 32, 32, 3)`` uint8 in torchvision's CIFAR on-disk format.

    CIFAR-10: ``data_batch_1..5``, ``test_batch``, ``batches.meta``; CIFAR-100:
    ``train``, ``test``, ``meta``. Rows hold the 1024 red, then green, then blue
    values, as in the official files. Returns the pickle folder.
    """
    folder = root / CIFAR_FOLDERS[variant]
    folder.mkdir(parents=True, exist_ok=True)
    names = list(label_names or [f"class_{i}" for i in range(CIFAR_CLASSES[variant])])

    def rows(images: NDArray[np.uint8]) -> NDArray[np.uint8]:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))

    def dump(name: str, content: dict[str, object]) -> None:
        with (folder / name).open("wb") as handle:
            pickle.dump(content, handle, protocol=2)

    if variant == "cifar10":
        chunks = np.array_split(np.arange(len(train_images)), TRAIN_BATCHES)
        for number, chunk in enumerate(chunks, start=1):
            dump(
                f"data_batch_{number}",
                {
                    "batch_label": f"training batch {number} of {TRAIN_BATCHES}",
                    "labels": [int(train_labels[i]) for i in chunk],
                    "data": rows(train_images[chunk]),
                    "filenames": [f"train_{i}.png" for i in chunk],
                },
            )
        dump(
            "test_batch",
            {
                "batch_label": "testing batch 1 of 1",
                "labels": [int(v) for v in test_labels],
                "data": rows(test_images),
                "filenames": [f"test_{i}.png" for i in range(len(test_images))],
            },
        )
        dump("batches.meta", {"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072})
    else:
        for name, images, labels in (
            ("train", train_images, train_labels),
            ("test", test_images, test_labels),
        ):
            dump(
                name,
                {
                    "batch_label": f"{name}ing batch 1 of 1",
                    "fine_labels": [int(v) for v in labels],
                    "coarse_labels": [int(v) // 5 for v in labels],
                    "data": rows(images),
                    "filenames": [f"{name}_{i}.png" for i in range(len(images))],
                },
            )
        dump(
            "meta",
            {"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]},
        )
    return folder


def write_cifar_standin(root: Path, variant: str) -> Path:
    """Draw scikit-learn's digits as 32x32 colour images and write them as CIFAR pickles.

    Each 8x8 digit is enlarged 4x, painted in a random foreground colour on a
    random darker background with pixel noise (seeded, so the files are the
    same on every machine); 20% stratified test split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rng = np.random.default_rng(0)
    shape = digits.images.astype(np.float64) / 16.0
    big = np.kron(shape, np.ones((1, 4, 4)))[..., None]  # (N, 32, 32, 1)
    foreground = rng.uniform(0.5, 1.0, size=(len(big), 1, 1, 3))
    background = rng.uniform(0.0, 0.4, size=(len(big), 1, 1, 3))
    noise = rng.normal(0.0, 0.08, size=(len(big), 32, 32, 3))
    images = np.clip(big * foreground + (1 - big) * background + noise, 0, 1)
    images = (images * 255).round().astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        digits.target,
        test_size=STANDIN_TEST_FRACTION,
        random_state=0,
        stratify=digits.target,
    )
    partial = root.with_name(root.name + ".partial")
    folder = write_cifar_pickles(partial, variant, x_train, y_train, x_test, y_test)
    root.mkdir(parents=True, exist_ok=True)
    folder.rename(root / CIFAR_FOLDERS[variant])
    partial.rmdir()
    return root / CIFAR_FOLDERS[variant]
