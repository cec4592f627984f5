"""Dataset and model registries: a plug-in from outside the package, checked, cached, compared."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedforget.comparison import reference_key
from fedforget.config import ConfigError, FederationConfig
from fedforget.data import cache, dataset_names, datasets, load_federated_data
from fedforget.data import unregister as unregister_dataset
from fedforget.models import build_model, model_names
from fedforget.models import unregister as unregister_model

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "toy_plugin"
PLUGIN_SOURCE = '''"""A toy dataset and a toy model, registered from outside fedforget."""

import torch
from torch import nn

from fedforget.data import SplitDataset
from fedforget.data import register as register_dataset
from fedforget.models import register as register_model

SIZE = 120


def load_blobs(data_dir, test_fraction, seed, *, image_size=0, download=False):
    """Three Gaussian blobs drawn as 1x4x4 images, 40 of each class."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(SIZE) % 3
    images = torch.randn(SIZE, 1, 4, 4, generator=generator) + 2.0 * labels.view(-1, 1, 1, 1)
    order = torch.randperm(SIZE, generator=generator)
    test, train = order[: int(test_fraction * SIZE)], order[int(test_fraction * SIZE) :]
    return SplitDataset(images[train], labels[train], images[test], labels[test], 3)


def linear(input_shape, num_classes):
    channels, height, width = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))


register_dataset("toy-blobs", load_blobs)
register_model("toy-linear", linear)
'''
TOY = {
    "plugins": PLUGIN,
    "dataset": "toy-blobs",
    "model": "toy-linear",
    "num-partitions": 2,
    "partitioner": "iid",
    "num-server-rounds": 3,
    "unlearn-at-round": 1,
    "local-epochs": 1,
    "batch-size": 16,
}
TOY_PARAMETERS = 16 * 3 + 3  # toy-linear on 1x4x4 images, 3 classes


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plug-in's folder on sys.path (imported by the first config naming it); removed after."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    datasets._federated_data.cache_clear()
    yield folder / f"{PLUGIN}.py"
    unregister_dataset("toy-blobs")
    unregister_model("toy-linear")
    sys.modules.pop(PLUGIN, None)
    datasets._federated_data.cache_clear()


def test_plugins_register_their_names_and_the_config_accepts_them(plugin):
    """Unknown until ``plugins`` names the module; then valid, built, and listed."""
    with pytest.raises(ConfigError, match="dataset must be one of digits"):
        FederationConfig.from_run_config({k: v for k, v in TOY.items() if k != "plugins"})
    config = FederationConfig.from_run_config(TOY)
    assert "toy-blobs" in dataset_names() and "toy-linear" in model_names()
    federated = load_federated_data(config)
    assert federated.data.input_shape == (1, 4, 4) and len(federated.data.train_y) == 96
    assert [len(p) for p in federated.partitions] == [48, 48]
    model = build_model("toy-linear", (1, 4, 4), 3, seed=0)
    assert sum(p.numel() for p in model.parameters()) == TOY_PARAMETERS


def test_built_in_names_cannot_be_taken_or_removed(plugin):
    from fedforget.data import register
    from fedforget.models import register as register_model

    with pytest.raises(ValueError, match="a built-in dataset is named 'digits'"):
        register("digits", datasets.load_digits_split)
    with pytest.raises(ValueError, match="built-in model"):
        unregister_model("cnn")
    with pytest.raises(ValueError, match="no Python source file"):
        register_model("from-c", len)  # a builtin function: no source for the cache key


def test_the_data_cache_and_the_reference_key_follow_the_plugin_source(plugin):
    """Editing the plug-in builds a new split and trains a new reference; nothing goes stale."""
    config = FederationConfig.from_run_config(TOY)
    first = load_federated_data(config)
    before = reference_key(config)
    [split] = sorted(cache.cache_root().glob("split-*.npz"))
    meta = json.loads(str(np.load(split)["__meta__"][()]))
    expected = hashlib.sha256(PLUGIN.encode() + plugin.read_bytes()).hexdigest()
    assert meta["about"]["settings"]["dataset-code"] == expected

    plugin.write_text(PLUGIN_SOURCE.replace("+ 2.0 * labels", "+ 3.0 * labels"))
    importlib.reload(sys.modules[PLUGIN])  # registers the edited loader and model
    datasets._federated_data.cache_clear()  # as a new process would
    edited = load_federated_data(config)

    assert len(sorted(cache.cache_root().glob("split-*.npz"))) == 2
    assert not np.array_equal(edited.data.train_x.numpy(), first.data.train_x.numpy())
    assert reference_key(config) != before
    # built-in entries key their reference as before: by configuration, not by code
    digits = FederationConfig.from_run_config({"num-partitions": 2, "unlearn-at-round": 1})
    assert reference_key(digits.replace(plugins=PLUGIN)) == reference_key(digits)


@pytest.mark.ray
def test_a_plugin_dataset_and_model_run_through_compare(tmp_path):
    """``fedforget compare`` with a toy dataset and model from a module outside the package."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    run_config = " ".join(
        f"{key}='{value}'" if isinstance(value, str) else f"{key}={value}"
        for key, value in TOY.items()
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
        cache.CACHE_ENV: str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [
            sys.executable, "-m", "fedforget.cli", "compare", "--out", str(tmp_path / "out"),
            "--methods", "puf-special", "--centralised", "ft",
            "--run-config", run_config,
        ],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["config"]["dataset"], results["config"]["model"]) == ("toy-blobs", "toy-linear")
    rows = {row["method"]: row for row in results["rows"]}
    assert list(rows) == ["original", "puf-special", "retrain", "ft"]
    assert all(row["status"] == "ok" and row["forget_size"] == 48 for row in rows.values())
    # PUF kept the latest update of both clients: two toy-linear models of float32
    assert rows["puf-special"]["cost"]["server_storage_bytes"] == 2 * TOY_PARAMETERS * 4
    assert rows["puf-special"]["unlearning_round"] == 2
    assert all(0.0 <= row["test_acc"] <= 1.0 for row in rows.values())
