"""The built-in datasets: real data from local files, as normalised tensors.

* ``digits``: scikit-learn's 1,797 8x8 handwritten digits, shipped inside the
  scikit-learn wheel (the embedded default; works on every machine). A
  stratified ``test-fraction`` is held out as the test set.
* ``fashion-mnist``: the official 60k/10k split, read with torchvision's
  FashionMNIST loader from ``data-dir``: either a torchvision root holding
  ``FashionMNIST/raw/*-ubyte``, or a folder with the four gzipped IDX files
  (Debian's ``dataset-fashion-mnist`` puts them in
  ``/usr/share/datasets/fashion-mnist``), which are unpacked once into the cache
  folder ``$FEDFORGET_CACHE`` (default ``~/.cache/fedforget``).
* ``cifar10`` / ``cifar100``: torchvision's python pickles from ``data-dir``
  (:mod:`fedforget.data.cifar`); ``cifar10-standin`` / ``cifar100-standin``:
  the digits drawn as 32x32 colour images in the same on-disk format, read by
  the same loader (offline stand-ins).
* ``prostate``: the 6-site ProstateMRI NIfTI layout (SAML/HarmoFL), one client
  per site, a segmentation task (:mod:`fedforget.data.prostate`);
  ``prostate-synthetic``: MONAI-generated volumes written in that layout.

Every loader is called as ``loader(data_dir, test_fraction, seed, *,
image_size=0, download=False)``; ``image_size`` 0 means the dataset's default.
Names map to loaders in :data:`fedforget.registry.DATASET_REGISTRY`; a dataset
from outside the package is added with :func:`fedforget.data.register`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from fedforget.config import FederationConfig
from fedforget.data.cache import cache_key, cached_arrays, fingerprint_content, fingerprint_files
from fedforget.data.cifar import load_cifar_split, load_cifar_standin_split
from fedforget.data.partition import partition_indices, split_file_bytes
from fedforget.data.split import SplitDataset
from fedforget.registry import DATASET_REGISTRY

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class FederatedData:
    """A split dataset and each client's training indices (client id = list index)."""

    data: SplitDataset
    partitions: tuple[NDArray[np.int64], ...]

    def client_indices(self, client_ids: tuple[str, ...] | list[str]) -> NDArray[np.int64]:
        """Training indices of several clients together."""
        if not client_ids:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.partitions[int(cid)] for cid in client_ids])

    def client_ids(self) -> list[str]:
        """All client ids."""
        return [str(i) for i in range(len(self.partitions))]


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(), train.std()
    return (train - mean) / std, (test - mean) / std


class DatasetLoader(Protocol):
    """What a registered dataset loader looks like."""

    def __call__(
        self,
        data_dir: str,
        test_fraction: float,
        seed: int,
        *,
        image_size: int = 0,
        download: bool = False,
    ) -> SplitDataset:
        """Load the dataset (``image_size`` 0 = its default size)."""
        ...


def load_digits_split(
    data_dir: str, test_fraction: float, seed: int, *, image_size: int = 0, download: bool = False
) -> SplitDataset:
    """scikit-learn's digits, stratified train/test split under ``seed``."""
    del data_dir, image_size, download  # shipped with scikit-learn, 8x8
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        digits.target.astype(np.int64),
        test_size=test_fraction,
        random_state=seed,
        stratify=digits.target,
    )
    train_x, test_x = _standardise(
        torch.from_numpy(x_train).unsqueeze(1), torch.from_numpy(x_test).unsqueeze(1)
    )
    return SplitDataset(train_x, torch.from_numpy(y_train), test_x, torch.from_numpy(y_test), 10)


def fashion_mnist_root(data_dir: str) -> Path:
    """A torchvision root for FashionMNIST, unpacking gzipped IDX files if needed."""
    source = Path(data_dir or FASHION_MNIST_DEFAULT_DIR)
    if all((source / "FashionMNIST" / "raw" / f).is_file() for f in FASHION_MNIST_FILES):
        return source
    missing = [f for f in FASHION_MNIST_FILES if not (source / f"{f}.gz").is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {source}: expected {', '.join(missing)}.gz or "
            f"FashionMNIST/raw/. Install Debian's dataset-fashion-mnist "
            f"(apt-get install dataset-fashion-mnist) or set data-dir"
        )
    cache = Path(os.environ.get("FEDFORGET_CACHE", Path.home() / ".cache" / "fedforget"))
    digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    root = cache / "fashion-mnist" / digest
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        target = raw / name
        if not target.is_file():
            partial = raw / f"{name}.partial"
            with gzip.open(source / f"{name}.gz", "rb") as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
    return root


def load_fashion_mnist_split(
    data_dir: str, test_fraction: float, seed: int, *, image_size: int = 0, download: bool = False
) -> SplitDataset:
    """Fashion-MNIST's official split through ``torchvision.datasets.FashionMNIST``."""
    del test_fraction, seed, image_size, download  # the official test set is used
    from torchvision.datasets import FashionMNIST

    root = str(fashion_mnist_root(data_dir))
    train = FashionMNIST(root, train=True, download=False)
    test = FashionMNIST(root, train=False, download=False)
    train_x, test_x = _standardise(
        train.data.float().div(255).unsqueeze(1), test.data.float().div(255).unsqueeze(1)
    )
    return SplitDataset(train_x, train.targets.long(), test_x, test.targets.long(), 10)


load_cifar10 = functools.partial(load_cifar_split, "cifar10")
load_cifar100 = functools.partial(load_cifar_split, "cifar100")
load_cifar10_standin = functools.partial(load_cifar_standin_split, "cifar10")
load_cifar100_standin = functools.partial(load_cifar_standin_split, "cifar100")


def load_dataset(
    name: str,
    data_dir: str = "",
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    image_size: int = 0,
    download: bool = False,
) -> SplitDataset:
    """Load a registered dataset by name (:data:`fedforget.registry.DATASET_REGISTRY`)."""
    loader: DatasetLoader = DATASET_REGISTRY.get(name)
    return loader(data_dir, test_fraction, seed, image_size=image_size, download=download)


@functools.lru_cache(maxsize=4)
def _federated_data(
    dataset: str,
    data_dir: str,
    test_fraction: float,
    num_partitions: int,
    partitioner: str,
    alpha: float,
    min_partition_size: int,
    seed: int,
    image_size: int = 0,
    download: bool = False,
    partition_file: str = "",
) -> FederatedData:
    split_settings = {
        "dataset": dataset,
        "data-dir": data_dir,
        "data-files": fingerprint_files(data_dir),
        "test-fraction": test_fraction,
        "seed": seed,
        "image-size": image_size,
        "dataset-code": DATASET_REGISTRY.fingerprint(dataset),
    }
    data = split_from_arrays(
        cached_arrays(
            "split",
            split_settings,
            lambda: split_to_arrays(
                load_dataset(
                    dataset, data_dir, test_fraction, seed, image_size=image_size, download=download
                )
            ),
        )
    )
    partition_settings = {
        "split": cache_key("split", split_settings),
        "num-partitions": num_partitions,
        "partitioner": partitioner,
        "alpha": alpha,
        "min-partition-size": min_partition_size,
        "seed": seed,
        "partition-file": partition_file,
        "partition-file-content": _partition_file_fingerprint(partitioner, partition_file),
    }
    partitions = cached_arrays(
        "partitions",
        partition_settings,
        lambda: {
            f"client-{i}": part
            for i, part in enumerate(
                _partition(
                    data,
                    dataset,
                    num_partitions,
                    partitioner,
                    alpha,
                    min_partition_size,
                    seed,
                    partition_file,
                )
            )
        },
    )
    return FederatedData(
        data,
        tuple(np.asarray(partitions[f"client-{i}"], dtype=np.int64) for i in range(num_partitions)),
    )


def _partition(
    data: SplitDataset,
    dataset: str,
    num_partitions: int,
    partitioner: str,
    alpha: float,
    min_partition_size: int,
    seed: int,
    partition_file: str,
) -> list[NDArray[np.int64]]:
    if data.task != "classification" and partitioner == "dirichlet":
        raise ValueError(
            f"dataset {dataset!r} is a {data.task} task without class labels to skew: "
            f"use partitioner='natural' (one client per site) or 'iid'"
        )
    labels = (
        data.train_y.numpy()
        if data.task == "classification"
        else np.zeros(len(data.train_y), dtype=np.int64)
    )
    return partition_indices(
        labels,
        num_partitions,
        partitioner,
        alpha,
        min_partition_size,
        seed,
        groups=None if data.train_groups is None else data.train_groups.numpy(),
        partition_file=partition_file,
    )


def _partition_file_fingerprint(partitioner: str, partition_file: str) -> str:
    """The content of the split file a ``file`` partition reads ("" if none or unreadable)."""
    if partitioner != "file" or not partition_file:
        return ""
    try:
        return fingerprint_content(split_file_bytes(partition_file))
    except OSError:
        return ""  # the partitioner reports the missing file


SPLIT_INFO_KEY = "info"


def split_to_arrays(data: SplitDataset) -> dict[str, NDArray[np.generic]]:
    """A split dataset as named numpy arrays (for the cache).

    Each tensor field becomes an array of its name; the other fields (number
    of classes, task, augmentation, group names) go into one JSON text array,
    ``info``. Fields that are None are left out.
    """
    arrays: dict[str, NDArray[np.generic]] = {}
    info: dict[str, object] = {}
    for field in dataclasses.fields(data):
        value = getattr(data, field.name)
        if isinstance(value, torch.Tensor):
            arrays[field.name] = value.numpy()
        elif value is not None:
            info[field.name] = list(value) if isinstance(value, tuple) else value
    arrays[SPLIT_INFO_KEY] = np.array(json.dumps(info))
    return arrays


def split_from_arrays(arrays: Mapping[str, NDArray[np.generic]]) -> SplitDataset:
    """The split dataset :func:`split_to_arrays` described (tensors share the arrays' memory)."""
    info = json.loads(str(arrays[SPLIT_INFO_KEY][()]))
    values: dict[str, object] = {}
    for field in dataclasses.fields(SplitDataset):
        if field.name in arrays:
            values[field.name] = torch.from_numpy(np.asarray(arrays[field.name]))
        elif field.name in info:
            value = info[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return SplitDataset(**values)  # type: ignore[arg-type]


def load_federated_data(config: FederationConfig) -> FederatedData:
    """The dataset and client partitions a config describes.

    Built once per machine and read back from the on-disk cache
    (:mod:`fedforget.data.cache`) afterwards; kept in memory per process.
    The split and the partition are drawn with ``data-seed`` (``seed`` when
    unset). In the backdoor scenario, the target clients' examples carry the
    trigger (:mod:`fedforget.data.backdoor`).
    """
    federated = _federated_data(
        config.dataset,
        config.data_dir,
        config.test_fraction,
        config.num_partitions,
        config.partitioner,
        config.alpha,
        config.min_partition_size,
        config.split_seed,
        config.image_size,
        config.download,
        config.partition_file,
    )
    if config.forget_scenario == "backdoor":
        from fedforget.data.backdoor import poison

        return poison(federated, config)
    return federated
