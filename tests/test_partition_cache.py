"""The on-disk data cache: the partitioner's exact arrays, rebuilt when settings or files change."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from fedforget.config import FederationConfig
from fedforget.data import cache, datasets
from fedforget.data.datasets import load_dataset, load_federated_data
from fedforget.data.partition import partition_indices

CONFIG = FederationConfig(num_partitions=4, alpha=0.5, min_partition_size=20, seed=3)


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test gets an empty cache folder and an empty in-process cache."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(cache.SWITCH_ENV, raising=False)
    monkeypatch.delenv(cache.PREPARED_ENV, raising=False)
    datasets._federated_data.cache_clear()
    yield
    datasets._federated_data.cache_clear()


def expected_partitions(config: FederationConfig) -> list[np.ndarray]:
    """What the partitioner itself draws for ``config`` (no cache involved)."""
    data = load_dataset(config.dataset, config.data_dir, config.test_fraction, config.seed)
    return partition_indices(
        data.train_y.numpy(),
        config.num_partitions,
        config.partitioner,
        config.alpha,
        config.min_partition_size,
        config.seed,
        partition_file=config.partition_file,
    )


def load_fresh(config: FederationConfig) -> datasets.FederatedData:
    """Load as a new process would: nothing in memory, whatever is on disk."""
    datasets._federated_data.cache_clear()
    return load_federated_data(config)


def cache_files(kind: str) -> list:
    return sorted(cache.cache_root().glob(f"{kind}-*.npz"))


def forbid_building(monkeypatch):
    """Make any rebuild fail: what loads afterwards came from the cache files."""

    def refuse(*args, **kwargs):
        raise AssertionError("the cache was not used: the data was built again")

    monkeypatch.setattr(datasets, "partition_indices", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)


def assert_same_partitions(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == np.int64
        assert np.array_equal(got, want)


def test_cache_returns_exactly_the_partitioners_arrays(monkeypatch):
    """Built once (written to disk), then read back identical in a 'new process'."""
    expected = expected_partitions(CONFIG)
    split = load_dataset(CONFIG.dataset, CONFIG.data_dir, CONFIG.test_fraction, CONFIG.seed)

    built = load_fresh(CONFIG)
    assert len(cache_files("partitions")) == 1 and len(cache_files("split")) == 1
    forbid_building(monkeypatch)
    read = load_fresh(CONFIG)

    for federated in (built, read):
        assert_same_partitions(federated.partitions, expected)
        assert torch.equal(federated.data.train_x, split.train_x)
        assert torch.equal(federated.data.train_y, split.train_y)
        assert torch.equal(federated.data.test_x, split.test_x)
        assert torch.equal(federated.data.test_y, split.test_y)
        assert federated.data.num_classes == split.num_classes == 10
        assert federated.data.task == "classification"
    assert sum(len(p) for p in read.partitions) == len(split.train_y)


@pytest.mark.parametrize(
    "change",
    [{"alpha": 0.1}, {"seed": 4}, {"num_partitions": 5}, {"partitioner": "iid"}],
    ids=["alpha", "seed", "num-partitions", "partitioner"],
)
def test_changed_partition_settings_build_new_partitions(change):
    """Each partition setting is part of the key: the new setting's own draw, a new file."""
    load_fresh(CONFIG)
    changed = CONFIG.replace(**change)

    federated = load_fresh(changed)

    assert_same_partitions(federated.partitions, expected_partitions(changed))
    assert len(cache_files("partitions")) == 2
    splits = 2 if "seed" in change else 1  # the seed also draws the train/test split
    assert len(cache_files("split")) == splits
    assert_same_partitions(load_fresh(CONFIG).partitions, expected_partitions(CONFIG))


def test_test_fraction_changes_the_split_and_the_partitions():
    load_fresh(CONFIG)
    changed = CONFIG.replace(test_fraction=0.3)

    federated = load_fresh(changed)

    assert len(federated.data.test_y) == pytest.approx(0.3 * 1797, abs=1)
    assert_same_partitions(federated.partitions, expected_partitions(changed))
    assert len(cache_files("split")) == len(cache_files("partitions")) == 2


def test_an_edited_partition_file_is_read_again(tmp_path):
    """The key holds the split file's content, not only its name."""
    train_size = len(load_fresh(CONFIG).data.train_y)
    split_file = tmp_path / "split.json"
    halves = {"0": list(range(0, 100)), "1": list(range(100, 200))}
    split_file.write_text(json.dumps(halves))
    config = CONFIG.replace(num_partitions=2, partitioner="file", partition_file=str(split_file))
    assert [len(p) for p in load_fresh(config).partitions] == [100, 100]

    split_file.write_text(json.dumps({"0": [5, 1], "1": list(range(10, train_size))}))
    federated = load_fresh(config)

    assert [p.tolist()[:2] for p in federated.partitions] == [[1, 5], [10, 11]]
    assert len(cache_files("partitions")) == 3  # the digits default, and one per file content


@pytest.mark.parametrize("damage", ["garbage", "truncated", "altered"])
def test_a_corrupt_cache_file_is_rebuilt_not_trusted(damage, caplog):
    """Unreadable, cut short, or readable with a changed value: all rebuilt."""
    expected = expected_partitions(CONFIG)
    load_fresh(CONFIG)
    (path,) = cache_files("partitions")
    if damage == "garbage":
        path.write_bytes(b"not an npz file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a well-formed archive whose array no longer matches its checksum
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
        arrays["client-0"] = arrays["client-0"].copy()
        arrays["client-0"][0] += 1
        with path.open("wb") as file:
            np.savez(file, **arrays)

    with caplog.at_level(logging.WARNING, logger="fedforget.data.cache"):
        federated = load_fresh(CONFIG)

    assert_same_partitions(federated.partitions, expected)
    assert "rebuilding" in caplog.text
    assert_same_partitions(
        [cache.read_arrays(path)[f"client-{i}"] for i in range(4)], expected
    )  # the file was replaced by a valid one


def test_cached_arrays_round_trip_and_switch_off(monkeypatch):
    """Any named arrays come back equal (dtype, shape, values); the switch bypasses the disk."""
    arrays = {
        "floats": np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4),
        "empty": np.zeros(0, dtype=np.int64),
        "text": np.array(json.dumps({"a": 1})),
    }
    calls = []

    def build():
        calls.append(1)
        return arrays

    first = cache.cached_arrays("demo", {"n": 1}, build)
    second = cache.cached_arrays("demo", {"n": 1}, build)
    assert len(calls) == 1
    for result in (first, second):
        assert sorted(result) == sorted(arrays)
        for name, array in arrays.items():
            assert result[name].dtype == array.dtype and np.array_equal(result[name], array)

    monkeypatch.setenv(cache.SWITCH_ENV, "0")
    cache.cached_arrays("demo", {"n": 2}, build)
    assert len(calls) == 2 and len(cache_files("demo")) == 1


def test_object_arrays_are_refused():
    with pytest.raises(ValueError, match="object dtype"):
        cache.cached_arrays("demo", {}, lambda: {"bad": np.array([{}, []], dtype=object)})


def test_an_image_that_only_reads_prepared_data_refuses_another_runs(monkeypatch):
    """With FEDFORGET_PREPARED_RUN_CONFIG set, a cache miss names the settings and the fix."""
    prepared = FederationConfig(num_partitions=3)
    expected = load_federated_data(prepared)  # what an image build prepares
    datasets._federated_data.cache_clear()
    monkeypatch.setenv(cache.PREPARED_ENV, "num-partitions=3")
    again = load_federated_data(prepared)  # read back, nothing built
    assert all(
        np.array_equal(a, b) for a, b in zip(again.partitions, expected.partitions, strict=True)
    )
    with pytest.raises(cache.DataNotPreparedError) as refused:
        load_federated_data(FederationConfig(num_partitions=4))
    message = str(refused.value)
    assert "num-partitions=4" in message and "PREPARE_RUN_CONFIG='num-partitions=3'" in message
    assert sorted(p.name.split("-")[0] for p in cache.cache_root().iterdir()) == [
        "partitions",
        "split",
    ]  # nothing was written for the refused run
