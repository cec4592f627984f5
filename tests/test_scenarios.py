"""Forget scenarios: a client's data, a random fraction, a class; and the dropped reference data."""

from __future__ import annotations

import numpy as np
import pytest

from fedforget.config import ConfigError, FederationConfig
from fedforget.data import load_federated_data
from fedforget.scenarios import forget_set
from fedforget.task import partition_index


@pytest.fixture(scope="module")
def config() -> FederationConfig:
    return FederationConfig.from_run_config(
        {"num-partitions": 4, "unlearn-clients": "1", "exclude-clients": "3", "progress": False}
    )


def test_client_scenario_is_the_targets_data(config):
    federated = load_federated_data(config)
    chosen = forget_set(config, federated)
    assert chosen.scenario == "client" and chosen.targets == ("1",)
    assert np.array_equal(chosen.forget_index, np.sort(federated.partitions[1]))
    # retain = every other client that takes part (client 3 is excluded)
    expected = np.sort(np.concatenate([federated.partitions[0], federated.partitions[2]]))
    assert np.array_equal(chosen.retain_index, expected)
    assert "client(s) 1" in chosen.description


def test_random_scenario_draws_the_fraction_under_the_seed(config):
    random = config.replace(forget_scenario="random", forget_fraction=0.25)
    federated = load_federated_data(random)
    chosen = forget_set(random, federated)
    pool = np.sort(federated.client_indices(["0", "1", "2"]))
    assert len(chosen.forget_index) == round(0.25 * len(pool))
    assert not np.intersect1d(chosen.forget_index, chosen.retain_index).size
    assert np.array_equal(np.sort(np.concatenate([chosen.forget_index, chosen.retain_index])), pool)
    assert np.array_equal(forget_set(random, federated).forget_index, chosen.forget_index)
    other = forget_set(random.replace(seed=1), load_federated_data(random.replace(seed=1)))
    assert not np.array_equal(other.forget_index, chosen.forget_index)


def test_class_scenario_is_every_example_of_the_class(config):
    by_class = config.replace(forget_scenario="class", forget_class=3)
    federated = load_federated_data(by_class)
    chosen = forget_set(by_class, federated)
    labels = federated.data.train_y.numpy()
    assert (labels[chosen.forget_index] == 3).all()
    assert (labels[chosen.retain_index] != 3).all()
    pool = federated.client_indices(["0", "1", "2"])
    assert len(chosen.forget_index) == int((labels[pool] == 3).sum()) > 0


def test_dropping_the_forget_set_removes_exactly_it_from_every_client(config):
    by_class = config.replace(forget_scenario="class", forget_class=3, drop_forget_set=True)
    federated = load_federated_data(by_class)
    labels = federated.data.train_y.numpy()
    for partition in range(3):
        kept = partition_index(by_class, partition).numpy()
        original = federated.partitions[partition]
        assert np.array_equal(kept, original[labels[original] != 3])
    # without drop-forget-set a client keeps its whole partition
    assert np.array_equal(partition_index(config, 1).numpy(), federated.partitions[1])


def test_bad_scenarios_are_refused_with_what_to_do(config):
    with pytest.raises(ConfigError, match="forget-scenario must be one of"):
        config.replace(forget_scenario="examples")
    with pytest.raises(ConfigError, match="forget-fraction must be in"):
        config.replace(forget_scenario="random", forget_fraction=1.5)
    missing = config.replace(forget_scenario="class", forget_class=42)
    with pytest.raises(ValueError, match="forget-class=42 has no training examples"):
        forget_set(missing, load_federated_data(missing))
