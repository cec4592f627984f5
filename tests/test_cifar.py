"""CIFAR loaders on fixtures in torchvision's real pickle format, and the paper's splits."""

import json

import numpy as np
import pytest
import torch

from fedforget.config import FederationConfig
from fedforget.data import load_dataset, load_federated_data
from fedforget.data.cifar import write_cifar_pickles
from fedforget.data.partition import packaged_splits, partition_indices, read_split_file

PAPER_SPLIT_SIZES = {
    "cifar10_dirichlet0.3_clients10": [2968, 2238, 4541, 2278, 7305, 13500, 4951, 4453, 2715, 5048],
    "cifar100_dirichlet0.1_clients10": [5972, 4756, 5155, 5978, 6514, 4617, 4231, 5052, 2893, 4799],
    "cifar100_iid_clients10": [5000] * 10,
}


def _images(count: int, offset: int) -> np.ndarray:
    """Images whose every pixel encodes (image number, channel): checkable after loading."""
    images = np.zeros((count, 32, 32, 3), dtype=np.uint8)
    for i in range(count):
        images[i, :, :, 0] = offset + i
        images[i, :, :, 1] = 100 + offset + i
        images[i, 5, 7, 2] = 200
    return images


@pytest.fixture
def unchecked_md5(monkeypatch):
    """The fixtures are not the official files: bypass torchvision's md5 check (tests only)."""
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)


@pytest.fixture
def cifar10_dir(tmp_path, unchecked_md5):
    train_labels = [i % 10 for i in range(20)]
    test_labels = [(3 * i) % 10 for i in range(6)]
    write_cifar_pickles(
        tmp_path, "cifar10", _images(20, 0), train_labels, _images(6, 50), test_labels
    )
    return tmp_path


def test_cifar10_fixture_has_the_real_file_layout(cifar10_dir):
    """The writer produces the five training batches, test batch and meta of the real archive."""
    # Prepare / Execute
    names = sorted(p.name for p in (cifar10_dir / "cifar-10-batches-py").iterdir())
    # Assert
    assert names == ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


def test_cifar10_loader_reads_pickles_in_batch_order(cifar10_dir):
    """Shapes, labels and the training order (data_batch_1..5) match what was written."""
    # Execute
    data = load_dataset("cifar10", str(cifar10_dir))
    # Assert
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert data.train_y.tolist() == [i % 10 for i in range(20)]
    assert data.test_y.tolist() == [(3 * i) % 10 for i in range(6)]
    assert data.num_classes == 10 and data.task == "classification"
    # image i has red value i everywhere: order kept, channels in RGB order
    red = data.train_x[:, 0, 0, 0]
    assert torch.all(red[1:] > red[:-1])
    assert data.train_x[3, 2, 5, 7] > data.train_x[3, 2, 0, 0]  # the blue dot sits at (5, 7)
    # normalised per channel with training statistics
    assert torch.allclose(data.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_cifar10_loader_accepts_the_pickle_folder_itself(cifar10_dir):
    """data-dir may name cifar-10-batches-py directly."""
    data = load_dataset("cifar10", str(cifar10_dir / "cifar-10-batches-py"))
    assert len(data.train_y) == 20


def test_cifar100_loader_reads_fine_labels(tmp_path, unchecked_md5):
    """CIFAR-100's train/test/meta files give 100 classes and the fine labels."""
    # Prepare
    labels = [7 * i % 100 for i in range(12)]
    write_cifar_pickles(tmp_path, "cifar100", _images(12, 0), labels, _images(4, 20), [1, 2, 3, 99])
    # Execute
    data = load_dataset("cifar100", str(tmp_path))
    # Assert
    assert data.num_classes == 100
    assert data.train_y.tolist() == labels and data.test_y.tolist() == [1, 2, 3, 99]
    assert data.train_x.shape == (12, 3, 32, 32)


def test_md5_check_is_on_outside_tests(tmp_path):
    """Without the test bypass, torchvision rejects files that are not the official ones."""
    write_cifar_pickles(tmp_path, "cifar10", _images(5, 0), [0] * 5, _images(1, 0), [0])
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        load_dataset("cifar10", str(tmp_path))


def test_missing_cifar_says_where_and_how_to_download(tmp_path):
    """The error names the expected folder and the download option."""
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("cifar100", str(tmp_path / "nowhere"))
    assert "cifar-100-python" in str(error.value) and "download=true" in str(error.value)


@pytest.mark.parametrize("name", sorted(PAPER_SPLIT_SIZES))
def test_packaged_paper_splits_have_the_documented_sizes(name):
    """The package's copies of the paper's split files give the sizes of their README."""
    # Execute
    partitions = read_split_file(name)
    # Assert
    assert [len(p) for p in partitions] == PAPER_SPLIT_SIZES[name]
    every = np.concatenate(partitions)
    assert len(np.unique(every)) == len(every) and every.max() < 50_000
    assert name in packaged_splits()


def test_file_partitioner_applies_a_custom_split_to_the_fixture(cifar10_dir, tmp_path):
    """partitioner='file' gives exactly the listed training examples to each client."""
    # Prepare
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"0": [3, 1], "1": [0, 19, 7], "2": [12]}))
    config = FederationConfig(
        dataset="cifar10",
        data_dir=str(cifar10_dir),
        partitioner="file",
        partition_file=str(split),
        num_partitions=3,
        unlearn_clients="1",
    )
    # Execute
    federated = load_federated_data(config)
    # Assert
    assert [p.tolist() for p in federated.partitions] == [[1, 3], [0, 7, 19], [12]]
    assert federated.data.train_y[federated.partitions[1]].tolist() == [0, 7, 9]


def test_paper_split_on_a_smaller_training_set_is_refused(cifar10_dir):
    """A split that indexes 50,000 images cannot silently apply to 20."""
    labels = np.zeros(20, dtype=np.int64)
    with pytest.raises(ValueError, match="another dataset"):
        partition_indices(labels, 10, "file", partition_file="cifar10_dirichlet0.3_clients10")


def test_file_partitioner_checks_the_client_count():
    """num-partitions must match the split file."""
    with pytest.raises(ValueError, match="num-partitions=10"):
        partition_indices(
            np.zeros(50_000, np.int64), 5, "file", partition_file="cifar100_iid_clients10"
        )


@pytest.mark.parametrize(("partitioner", "sizes"), [("iid", [10, 10]), ("dirichlet", None)])
def test_flwr_datasets_partitioners_on_the_fixture(cifar10_dir, partitioner, sizes):
    """Dirichlet and IID partitions of the CIFAR fixture cover it disjointly."""
    config = FederationConfig(
        dataset="cifar10",
        data_dir=str(cifar10_dir),
        partitioner=partitioner,
        num_partitions=2,
        min_partition_size=2,
        unlearn_clients="1",
    )
    partitions = load_federated_data(config).partitions
    every = np.concatenate(partitions)
    assert sorted(every.tolist()) == list(range(20))
    if sizes:
        assert [len(p) for p in partitions] == sizes


def test_standin_uses_the_real_cifar_format(tmp_path):
    """The offline stand-in is written as CIFAR-10 pickles and read by the same loader."""
    data = load_dataset("cifar10-standin", str(tmp_path / "standin"))
    assert (tmp_path / "standin" / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert data.train_x.shape == (1437, 3, 32, 32) and data.test_x.shape == (360, 3, 32, 32)
    assert sorted(set(data.train_y.tolist())) == list(range(10))
    assert data.augmentation == "cifar"
