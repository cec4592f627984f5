"""Embedded and offline datasets in their real on-disk formats, and the partitions."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from fedforget.config import FederationConfig
from fedforget.data import load_dataset, load_federated_data, partition_indices


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file, the format of (Fashion-)MNIST."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFORGET_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "fashion-mnist"
    source.mkdir()
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(12, 28, 28))
    train[0] = 255  # a white image: first pixel standardises to the maximum
    write_idx(source / "train-images-idx3-ubyte.gz", train)
    write_idx(source / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    write_idx(source / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, size=(5, 28, 28)))
    write_idx(source / "t10k-labels-idx1-ubyte.gz", np.array([9, 8, 7, 6, 5]))
    return source


def test_fashion_mnist_reads_gzipped_idx_files(fashion_dir):
    data = load_dataset("fashion-mnist", str(fashion_dir))
    assert data.train_x.shape == (12, 1, 28, 28) and data.test_x.shape == (5, 1, 28, 28)
    assert data.train_y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert data.test_y.tolist() == [9, 8, 7, 6, 5]
    assert data.num_classes == 10
    assert float(data.train_x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(data.train_x[0].min()) == pytest.approx(float(data.train_x.max()))


def test_fashion_mnist_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", str(tmp_path))


DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(
    not os.path.isdir(DEBIAN_FASHION), reason="apt-get install dataset-fashion-mnist (.ci/run does)"
)
def test_debians_fashion_mnist_loads_at_size(tmp_path, monkeypatch):
    """The real 60,000 + 10,000 images of the experiments at size, balanced classes."""
    monkeypatch.setenv("FEDFORGET_CACHE", str(tmp_path / "cache"))
    data = load_dataset("fashion-mnist", DEBIAN_FASHION)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(data.train_y.numpy()).tolist() == [6000] * 10
    assert np.bincount(data.test_y.numpy()).tolist() == [1000] * 10


def test_digits_split_is_stratified_and_seeded():
    data = load_dataset("digits", test_fraction=0.2, seed=0)
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert np.bincount(data.test_y.numpy()).min() >= 35  # stratified: ~36 per class
    again = load_dataset("digits", test_fraction=0.2, seed=0)
    assert np.array_equal(data.train_y.numpy(), again.train_y.numpy())


def test_dirichlet_partition_is_disjoint_complete_and_deterministic():
    labels = load_dataset("digits").train_y.numpy()
    parts = partition_indices(labels, 10, "dirichlet", alpha=0.3, min_partition_size=10, seed=0)
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) == len(np.unique(joined))
    assert min(len(p) for p in parts) >= 10
    again = partition_indices(labels, 10, "dirichlet", alpha=0.3, min_partition_size=10, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(labels, 10, "dirichlet", alpha=0.3, min_partition_size=10, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    # label skew: alpha=0.3 concentrates each client on few classes
    top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top_share) > 0.3


def test_iid_partition_sizes():
    parts = partition_indices(np.arange(103) % 10, 4, "iid")
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]


def test_too_small_for_min_partition_size_says_so():
    with pytest.raises(ValueError, match="min-partition-size"):
        partition_indices(np.zeros(30, np.int64), 10, "dirichlet", min_partition_size=10)


def test_default_federation_is_the_embedded_digits_setting():
    federated = load_federated_data(FederationConfig())
    assert len(federated.partitions) == 10
    assert sum(len(p) for p in federated.partitions) == 1437
