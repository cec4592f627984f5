"""The backdoor scenario's data and metric, and the data seed apart from the training seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedforget.cli import main
from fedforget.comparison import reference_config, reference_key, reference_variant
from fedforget.config import ConfigError, FederationConfig
from fedforget.data import load_federated_data
from fedforget.data.backdoor import poisoned_indices
from fedforget.metrics import MetricContext, Splits, evaluate_metrics, metric_info
from fedforget.scenarios import check_forget_set, forget_set
from fedforget.task import new_model, partition_index

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> FederationConfig:
    return FederationConfig.from_run_config(
        {
            "num-partitions": 4,
            "unlearn-clients": "1,2",
            "forget-scenario": "backdoor",
            "backdoor-target-class": 7,
            "backdoor-poison-fraction": 0.5,
            "progress": False,
        }
    )


def test_the_targets_carry_the_trigger_and_the_target_label(config):
    """A share of each target's examples is patched and relabelled; nothing else changes."""
    poisoned = load_federated_data(config)
    clean = load_federated_data(config.replace(forget_scenario="client"))
    changed = np.flatnonzero(
        (poisoned.data.train_x != clean.data.train_x).flatten(1).any(1).numpy()
        | (poisoned.data.train_y != clean.data.train_y).numpy()
    )
    chosen = poisoned_indices(config, poisoned)
    assert np.array_equal(changed, np.intersect1d(chosen, changed))  # only the chosen ones
    for client in ("1", "2"):
        own = poisoned.partitions[int(client)]
        assert np.isin(own, chosen).sum() == round(0.5 * len(own))
    assert not np.isin(
        np.concatenate([poisoned.partitions[0], poisoned.partitions[3]]), chosen
    ).any()
    low, high = float(clean.data.train_x.min()), float(clean.data.train_x.max())
    patch = poisoned.data.train_x[torch.from_numpy(chosen)][:, :, 5:8, 5:8]
    # 3x3 bottom-right on 8x8; value 3: three times the training range above the darkest pixel
    assert torch.allclose(patch, torch.tensor(low + 3 * (high - low)))
    assert torch.all(poisoned.data.train_y[torch.from_numpy(chosen)] == 7)
    assert torch.equal(poisoned.data.test_x, clean.data.test_x)
    # the clients train on what they hold: the poisoned partition
    index = partition_index(config, 1)
    assert torch.equal(
        load_federated_data(config).data.train_y[index], poisoned.data.train_y[index]
    )


def test_the_forget_set_is_the_targets_data_and_the_attack_set_the_triggered_test_images(
    config,
):
    federated = load_federated_data(config)
    forget = forget_set(config, federated)
    assert forget.scenario == "backdoor" and forget.targets == ("1", "2")
    assert np.array_equal(forget.forget_index, np.sort(federated.client_indices(["1", "2"])))
    assert forget.poisoned == len(poisoned_indices(config, federated))
    assert "3x3 trigger relabelled 7" in forget.description
    splits = Splits.from_forget_set(federated.data, forget)
    not_target = int((federated.data.test_y != 7).sum())
    assert splits.backdoor_x is not None and len(splits.backdoor_x) == not_target
    assert splits.backdoor_target == 7
    # the test images carry exactly the trigger the poisoned training examples carry
    trained = federated.data.train_x[torch.from_numpy(poisoned_indices(config, federated))]
    assert torch.equal(splits.backdoor_x[:, :, 5:8, 5:8][0], trained[:, :, 5:8, 5:8][0])


class _TriggerObeyer(nn.Module):
    """Class 7 where the bottom-right 3x3 patch has the trigger's value, else class 3."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patched = (x[:, 0, 5:8, 5:8] == self.value).flatten(1).all(1)
        logits = torch.zeros(len(x), 10)
        logits[patched, 7] = 5.0
        logits[~patched, 3] = 5.0
        return logits


def test_backdoor_asr_counts_the_triggered_images_assigned_the_target_class(config):
    federated = load_federated_data(config)
    splits = Splits.from_forget_set(federated.data, forget_set(config, federated))
    obeyer = _TriggerObeyer(float(forget_set(config, federated).trigger.value))
    values = evaluate_metrics(MetricContext(unlearned=obeyer), splits, ["backdoor_asr"])
    assert values["backdoor_asr"] == 1.0
    moved = config.replace(backdoor_position="top-left")  # the model looks at the wrong place
    moved_splits = Splits.from_forget_set(federated.data, forget_set(moved, federated))
    values = evaluate_metrics(MetricContext(unlearned=obeyer), moved_splits, ["backdoor_asr"])
    assert values["backdoor_asr"] == 0.0
    assert "backdoor" in metric_info("backdoor_asr").missing(
        MetricContext(unlearned=obeyer),
        Splits.from_forget_set(
            federated.data, forget_set(config.replace(forget_scenario="client"), federated)
        ),
    )


def test_bad_backdoor_settings_are_refused_with_the_key(config):
    for key, value, message in (
        ("backdoor_poison_fraction", 0.0, "backdoor-poison-fraction must be in \\(0, 1\\]"),
        ("backdoor_poison_fraction", 1.5, "backdoor-poison-fraction must be in \\(0, 1\\]"),
        ("backdoor_patch_value", -0.5, "backdoor-patch-value must be a number >= 0"),
        ("backdoor_position", "middle", "backdoor-position must be one of"),
        ("backdoor_target_class", -1, "backdoor-target-class must be a class label"),
        ("backdoor_patch_size", 0, "backdoor-patch-size must be >= 1"),
        ("data_seed", -2, "data-seed must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            config.replace(**{key: value})
    with pytest.raises(ConfigError, match="backdoor-patch-size=9 does not fit the 8x8 images"):
        check_forget_set(config.replace(backdoor_patch_size=9))
    with pytest.raises(ConfigError, match="backdoor-target-class=10 is not a label"):
        check_forget_set(config.replace(backdoor_target_class=10))
    assert check_forget_set(config.replace(backdoor_patch_size=8)).trigger.size == 8


def test_the_data_seed_draws_the_data_and_the_seed_the_training(config):
    """Another seed with the data seed fixed: the same split and partition, other weights."""
    base = config.replace(forget_scenario="client")
    other_training = base.replace(seed=5, data_seed=0)
    first, second = load_federated_data(base), load_federated_data(other_training)
    assert torch.equal(first.data.train_x, second.data.train_x)
    pairs = zip(first.partitions, second.partitions, strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    weights = [new_model(c).state_dict()["classifier.3.bias"] for c in (base, other_training)]
    assert not torch.equal(*weights)
    # unset, the data seed is the seed: a seed of its own draws other data
    moved = load_federated_data(base.replace(seed=5))
    pairs = zip(first.partitions, moved.partitions, strict=True)
    assert not all(np.array_equal(a, b) for a, b in pairs)


def test_references_share_the_data_and_existing_cache_keys_stay(config):
    """Reference k >= 1 keeps the data seed; keys of configs without the new keys do not move."""
    base = config.replace(forget_scenario="client", seed=2)
    variant = reference_variant(base, 1)
    assert variant.split_seed == 2 and variant.seed != 2
    assert reference_key(variant) != reference_key(base)
    # computed by the code before data-seed and the backdoor keys existed
    assert reference_key(FederationConfig()) == "dc7fda866215eafc"
    assert (
        reference_key(
            FederationConfig.from_run_config(
                {"unlearn-clients": "3", "seed": 2, "num-partitions": 5}
            )
        )
        == "2221df7eb5438c94"
    )
    # the targets never train in the reference: the backdoor shares the client scenario's
    assert reference_key(config) == reference_key(config.replace(forget_scenario="client"))
    assert reference_config(config).forget_scenario == "client"


@pytest.mark.ray
def test_compare_in_the_backdoor_scenario_with_two_references(tmp_path):
    """Every model row has the attack success rate; the table marks gaps within the floor."""
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedforget.cli",
            "compare",
            "--scenario",
            "backdoor",
            "--methods",
            "puf-special",
            "--centralised",
            "ft,output-filter",
            "--references",
            "2",
            "--out",
            str(out),
            "--run-config",
            "num-partitions=3 num-server-rounds=4 unlearn-at-round=2 local-epochs=1 "
            "centralised.ft.epochs=1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "FEDFORGET_CACHE": str(tmp_path / "cache")},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    assert list(rows) == ["original", "puf-special", "retrain", "retrain-1", "ft", "output-filter"]
    assert rows["retrain-1"]["kind"] == "reference"
    assert rows["retrain-1"]["test_acc"] != rows["retrain"]["test_acc"] or (
        rows["retrain-1"]["mia_yeom"] != rows["retrain"]["mia_yeom"]
    )  # another training seed: another model
    for name in ("original", "puf-special", "retrain", "retrain-1", "ft"):
        assert rows[name]["scenario"] == "backdoor" and 0 <= rows[name]["backdoor_asr"] <= 1
    assert "serves the class scenario(s), not backdoor" in rows["output-filter"]["reason"]
    assert results["references"] == 2
    assert set(results["provenance"]) >= {"cpu_capability", "torch", "flwr", "numpy", "threads"}
    assert len(list((tmp_path / "cache" / "references").iterdir())) == 2
    assert "references (the same data, other training seeds):" in done.stdout
    assert "largest difference among the 2 references" in done.stdout
    assert "backdoor_asr" in done.stdout and "computed on:" in done.stdout
    header = (out / "methods.csv").read_text().splitlines()[0].split(",")
    assert "backdoor_asr" in header and "machine" in header


def test_references_below_one_are_refused_before_any_training(capsys):
    assert main(["compare", "--references", "0", "--methods", "puf-special"]) == 2
    assert "references must be >= 1" in capsys.readouterr().err
