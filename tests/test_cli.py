"""The README's settings driven through the ``fedforget`` command, as a user types them.

Bad values stop with one ``fedforget: error:`` line before Ray starts (in
process: the simulation is replaced by a tripwire); the disk store runs
through ``fedforget run`` and ``fedforget compare`` for real (small).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedforget import simulation
from fedforget.api.sqlite_queue import SQLiteRequestQueue
from fedforget.cli import main
from fedforget.config import (
    DEVICES,
    FORGET_SCENARIOS,
    OPTIMIZERS,
    PARTITIONERS,
    STORE_DTYPES,
    STORE_KINDS,
)
from fedforget.data import dataset_names
from fedforget.methods import method_names
from fedforget.methods.centralised import centralised_names
from fedforget.methods.puf import PSEUDO_GRADIENT_SOURCES
from fedforget.models import model_names
from fedforget.state.disk_store import PSEUDO_GRADIENT_DIR, DiskPseudoGradientStore
from fedforget.state.files import read_tensors

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- refusals
NAMING_KEYS = [
    ("dataset", "dataset='cifar-1000'", dataset_names()),
    ("model", "model='nosuch'", model_names()),
    ("partitioner", "partitioner='kmeans'", PARTITIONERS),
    ("method", "method='forget-all'", method_names()),
    ("methods", "methods='puf-regular,forget-all'", method_names()),
    ("optimizer", "optimizer='lbfgs'", OPTIMIZERS),
    ("forget-scenario", "forget-scenario='everything'", FORGET_SCENARIOS),
    ("store", "store='cloud'", STORE_KINDS),
    ("store-dtype", "store-dtype='int8'", STORE_DTYPES),
    ("device", "device='tpu'", DEVICES),
    ("puf.source", "puf.source='cache'", PSEUDO_GRADIENT_SOURCES),
]
"""Every run-config key whose value names something, a wrong name, and the choices."""

# Each README setting with a value it refuses: the key the one-line message must name.
INVALID_SETTINGS = [
    ("num-partitions=0", "num-partitions"),
    ("alpha=0.0", "alpha"),
    ("min-partition-size=0", "min-partition-size"),
    ("seed='first'", "seed"),
    ("test-fraction=1.0", "test-fraction"),
    ("local-epochs=0", "local-epochs"),
    ("batch-size=0", "batch-size"),
    ("lr=-1.0", "lr"),
    ("lr-decay=0.0", "lr-decay"),
    ("num-server-rounds=0", "num-server-rounds"),
    ("fraction-train=0.0", "fraction-train"),
    ("fraction-evaluate=1.5", "fraction-evaluate"),
    ("min-available-clients=0", "min-available-clients"),
    ("round-timeout=0.0", "round-timeout"),
    ("unlearn-at-round=-1", "unlearn-at-round"),
    ("unlearn-at-round=80", "unlearn-at-round"),
    ("unlearn-clients='a'", "unlearn-clients"),
    ("unlearn-clients='3,11'", "unlearn-clients"),
    ("unlearn-at-round=3 unlearn-clients=''", "unlearn-clients"),
    ("exclude-clients='0'", "exclude-clients"),
    ("recovery-target-acc=2.0", "recovery-target-acc"),
    ("forget-class=-1", "forget-class"),
    ("forget-fraction=1.0", "forget-fraction"),
    ("drop-forget-set='maybe'", "drop-forget-set"),
    ("weight-decay=-1.0", "weight-decay"),
    ("augment='maybe'", "augment"),
    ("image-size=-1", "image-size"),
    ("partitioner='file'", "partition-file"),
    ("partitioner='file' partition-file='no-such-split'", "partition-file"),
    ("pretrained-weights='/no/such/weights.pt'", "pretrained-weights"),
    ("download='maybe'", "download"),
    ("progress='maybe'", "progress"),
    ("api-enabled=true", "state-dir"),
    ("api-port=70000", "api-port"),
    ("api-host=' '", "api-host"),
    ("api-token-env='NOT A NAME'", "api-token-env"),
    ("store='disk'", "state-dir"),
    ("plugins='no_such_plugin_module'", "plugins"),
    ("puf.eta-special=500.0", "puf.eta-max"),
    ("puf.eta-special=0.0", "puf.eta-special"),
    ("no-such-key=1", "no-such-key"),
]


@pytest.fixture
def no_ray(monkeypatch):
    """A simulation that starts fails the test: refusals must come before Ray."""

    def tripwire(*args, **kwargs):
        raise AssertionError("a simulation started: the configuration was not refused first")

    monkeypatch.setattr(simulation, "simulate_app", tripwire)
    monkeypatch.setattr(simulation, "simulate", tripwire)


def refusal(capsys, *argv: str) -> str:
    """Run ``fedforget ARGV``; assert exit code 2 and one error line; return that line."""
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedforget: error: "), captured.err
    assert not re.search(r"round +\d+/", captured.out)  # no round ran
    return lines[0]


@pytest.mark.parametrize(
    ("key", "run_config", "choices"), NAMING_KEYS, ids=[k[0] for k in NAMING_KEYS]
)
@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_wrong_name_is_refused_with_the_key_and_the_choices(
    no_ray, capsys, tmp_path, command, key, run_config, choices
):
    """Each key that names something, mistyped: one line with the key and every valid name."""
    line = refusal(capsys, command, "--out", str(tmp_path / "out"), "--run-config", run_config)
    assert key in line
    assert all(choice in line for choice in choices), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "value", "choices"),
    [
        ("--methods", "puf-special,forget-all", method_names()),
        ("--centralised", "ft,nope", centralised_names()),
    ],
)
def test_compare_refuses_unknown_method_names_with_the_registered_ones(
    no_ray, capsys, tmp_path, flag, value, choices
):
    line = refusal(capsys, "compare", "--out", str(tmp_path / "out"), flag, value)
    assert value.split(",")[1] in line and all(choice in line for choice in choices)


@pytest.mark.parametrize(
    ("run_config", "key"), INVALID_SETTINGS, ids=[k for _, k in INVALID_SETTINGS]
)
def test_every_readme_setting_is_checked_through_the_cli(no_ray, capsys, tmp_path, run_config, key):
    """The cheapest drive of each setting through the command: a bad value names it.

    Nothing is written: the output folder is not created for a refused run.
    """
    line = refusal(capsys, "run", "--out", str(tmp_path / "out"), "--run-config", run_config)
    assert key in line
    assert not (tmp_path / "out").exists()


def test_a_toml_run_config_is_read_and_checked(no_ray, capsys, tmp_path):
    """``--run-config FILE.toml``: the file's keys and method tables reach the config."""
    path = tmp_path / "bad.toml"
    path.write_text('num-partitions = 4\nmodel = "resnet-1000"\n\n[puf]\nsource = "fresh"\n')
    assert "model must be one of" in refusal(capsys, "run", "--run-config", str(path))
    path.write_text("num-partitions = 4\n\n[puf]\neta-special = -1.0\n")
    assert "puf.eta-special" in refusal(capsys, "run", "--run-config", str(path))


def test_dataset_and_data_dir_shortcuts_reach_the_loader(no_ray, capsys, tmp_path):
    """``--dataset fashion-mnist --data-dir DIR``: the loader looks in DIR (empty here)."""
    line = refusal(capsys, "run", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path))
    assert f"Fashion-MNIST not found in {tmp_path}" in line


def test_scenario_options_reach_the_forget_set(no_ray, capsys, tmp_path):
    """``--scenario class --forget-class``, ``--scenario random --forget-fraction``."""
    line = refusal(capsys, "compare", "--scenario", "class", "--forget-class", "12")
    assert "forget-class=12 has no training examples" in line
    line = refusal(capsys, "compare", "--scenario", "random", "--forget-fraction", "1.5")
    assert "forget-fraction must be in (0, 1)" in line and "1.5" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the share is valid")
def test_num_gpus_without_a_gpu_is_refused(capsys, tmp_path):
    """``--num-gpus 0.5`` on a machine without a GPU: refused before Ray starts."""
    config = "num-partitions=3 num-server-rounds=3 unlearn-at-round=1 local-epochs=1"
    line = refusal(
        capsys, "run", "--out", str(tmp_path), "--num-gpus", "0.5", "--run-config", config
    )
    assert "num-gpus=0.5 asks for a GPU, but none is visible" in line


def fedforget(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environment.pop("FEDFORGET_API_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "fedforget.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
        cwd=cwd,
    )


@pytest.mark.slow
def test_a_mistyped_model_is_one_line_from_a_fresh_process(tmp_path):
    """The command a new user typed: exit code 2, one line, no traceback (a real process)."""
    done = fedforget("run", "--run-config", "model='nosuch'", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"fedforget: error: model must be one of {', '.join(model_names())}; got 'nosuch'"
    ]
    assert "Traceback" not in done.stderr + done.stdout


# ------------------------------------------------------------- disk store
SMALL = "num-partitions=4 num-server-rounds=4 unlearn-at-round=2 local-epochs=1 exclude-clients='3'"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def stored_files(state: Path) -> dict[str, str]:
    """Client id -> file name of each pseudo-gradient file in ``state/pseudo-gradients``."""
    folder = state / PSEUDO_GRADIENT_DIR
    return {path.name.split(".")[0]: path.name for path in sorted(folder.iterdir())}


@pytest.mark.ray
def test_run_keeps_pseudo_gradients_in_the_state_dir_and_erases_the_forgotten(tmp_path, cache):
    """``fedforget run`` with store='disk', a relative state-dir, the API, a fixed budget."""
    config = f"{SMALL} state-dir='state' store='disk' api-enabled=true"
    done = fedforget(
        "run", "--out", "out", "--recovery-stop", "budget",
        "--run-config", config, cwd=tmp_path, env={"FEDFORGET_CACHE": str(cache)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    state = tmp_path / "state"
    # the run's store: clients 1 and 2 trained last in round 4; 0 was forgotten, 3 excluded
    assert stored_files(state) == {"1": "1.r4.safetensors", "2": "2.r4.safetensors"}
    store = DiskPseudoGradientStore(state / PSEUDO_GRADIENT_DIR)
    assert store.client_ids() == ["1", "2"] and store.latest("1").server_round == 4
    # the reference touched nothing there; the run checkpointed, served its API, queued in SQLite
    assert sorted(p.name for p in state.iterdir() if not p.name.startswith("requests.sqlite3")) == [
        "api-token", "checkpoint.safetensors", PSEUDO_GRADIENT_DIR,
    ]  # fmt: skip
    assert stat.S_IMODE((state / "api-token").stat().st_mode) == 0o600
    queue = SQLiteRequestQueue.in_state_dir(state)
    try:
        [request] = queue.all()
    finally:
        queue.close()
    assert (request.client_ids, request.status, request.applied_round) == (("0",), "applied", 3)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    puf = next(row for row in results["rows"] if row["method"] == "puf-special")
    # --recovery-stop budget: rounds 3 (PUF's step) and 4 ran whatever the test accuracy
    assert puf["recovery_rounds"] == 2 and puf["cost"]["rounds"] == 2
    assert all("3" not in h["participants"] for h in results["history"])
    assert puf["cost"]["server_storage_bytes"] == 3 * store.latest("1").nbytes


@pytest.mark.private_ray
def test_compare_keeps_the_original_store_on_disk_and_each_cell_a_copy(tmp_path, cache):
    """``fedforget compare`` with store='disk' (float16): both PUF cells forget from a copy.

    On a private Ray instance that ``--num-cpus`` sizes (the flag's drive through the command).
    """
    config = f"{SMALL} state-dir='state' store='disk' store-dtype='float16' progress=false"
    done = fedforget(
        "compare", "--out", "out", "--num-cpus", "2", "--methods", "puf-special,puf-regular",
        "--centralised", "none", "--run-config", config,
        cwd=tmp_path, env={"FEDFORGET_CACHE": str(cache)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert not re.search(r"round +\d+/", done.stdout)  # progress=false: no round lines
    assert "methods done" not in done.stdout
    state = tmp_path / "state"
    # the original's store (its last round, 2) without the forgotten client; no copies left
    assert stored_files(state) == {"1": "1.r2.safetensors", "2": "2.r2.safetensors"}
    assert sorted(p.name for p in state.iterdir()) == [PSEUDO_GRADIENT_DIR]
    arrays, _ = read_tensors(state / PSEUDO_GRADIENT_DIR / "1.r2.safetensors")
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float16)}
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {row["method"]: row for row in results["rows"]}
    assert list(rows) == ["original", "puf-special", "puf-regular", "retrain"]
    assert all(row["status"] == "ok" for row in rows.values())
    # each cell found client 0's update in its own copy, though the other cell erased it
    stored = 3 * sum(a.nbytes for a in arrays.values())  # clients 0, 1, 2 in float16
    for name in ("puf-special", "puf-regular"):
        assert rows[name]["unlearning_round"] == 3
        assert rows[name]["cost"]["server_storage_bytes"] == stored
