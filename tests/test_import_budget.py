"""What a digits ClientApp process imports: what training needs, not the heavy optional stacks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("flwr_datasets", "datasets", "monai", "fastapi", "uvicorn", "sklearn", "torchvision")
"""Packages a digits ClientApp must not load (once the data cache is prepared)."""
MODULE_BUDGET = 30
"""fedforget modules a ClientApp may load for an ordinary train message (26 today; 48 when
building its config imported every method's module)."""

# Does in one fresh process what a flwr-clientapp process does with a train message: import
# the ClientApp, receive the server's model and config (its client section, as the server
# sends it), train, build the reply. It records which config attributes the client's code reads
# (outside fedforget/config.py, whose validation reads every key).
CLIENTAPP_PROCESS = r"""
import json, math, sys

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import app
from fedforget.config import FederationConfig

after_import = sorted(sys.modules)
config = FederationConfig(
    num_partitions=3, local_epochs=1, unlearn_at_round=0, method_settings=(("pga.lr", 0.5),)
)
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # a SuperLink's ids
from fedforget.task import new_model  # the server's model: built by the same task code

reads = set()
read = FederationConfig.__getattribute__
def spy(self, name):
    if not sys._getframe(1).f_code.co_filename.endswith("config.py"):
        reads.add(name)
    return read(self, name)
FederationConfig.__getattribute__ = spy

section = config.client_section()
content = RecordDict({
    "arrays": ArrayRecord(new_model(config).state_dict()),
    "config": ConfigRecord({**section, "server-round": 1}),
})
message = Message(content, dst_node_id=1, message_type="train")
context = Context(1, 1, {"partition-id": 1, "num-partitions": 3}, RecordDict(), {})
reply = app(message, context)
FederationConfig.__getattribute__ = read
print(json.dumps({
    "after_import": after_import,
    "after_train": sorted(sys.modules),
    "message_keys": sorted(section),
    "reads": sorted(reads),
    "loss": reply.content["metrics"]["train-loss"],
    "examples": reply.content["metrics"]["num-examples"],
    "partition": reply.content["identity"]["partition-id"],
    "arrays": sorted(reply.content["arrays"].keys()),
}))
"""


def run_python(arguments: list[str], cache: Path) -> str:
    env = {**os.environ, "FEDFORGET_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *arguments], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def loaded(modules: list[str], package: str) -> bool:
    return any(m == package or m.startswith(f"{package}.") for m in modules)


@pytest.fixture(scope="module")
def process(tmp_path_factory) -> dict:
    """Data prepared (as a deployment does once), then one ClientApp process's train message."""
    cache = tmp_path_factory.mktemp("cache")
    run_python(["-m", "fedforget.data.prepare", "--run-config", "num-partitions=3"], cache)
    return json.loads(run_python(["-c", CLIENTAPP_PROCESS], cache).splitlines()[-1])


def test_digits_clientapp_trains_without_the_heavy_stacks(process):
    """No flwr-datasets, Hugging Face datasets, monai, API stack, sklearn or torchvision."""
    modules = process["after_train"]
    assert not [p for p in FORBIDDEN if loaded(modules, p)], "a heavy package was imported"
    assert not loaded(modules, "fedforget.api") and not loaded(modules, "fedforget.comparison")
    assert loaded(modules, "torch") and loaded(modules, "fedforget.training")
    # the reply is a real training result on partition 1
    assert process["partition"] == 1 and process["examples"] > 0
    assert 0.0 < process["loss"] < 10.0
    assert "classifier.3.bias" in process["arrays"]


def test_an_ordinary_train_message_stays_within_the_module_budget(process):
    """The config a ClientApp builds imports no method module (nor the method tables)."""
    ours = [m for m in process["after_train"] if m.split(".")[0] in ("fedforget", "clients")]
    assert len(ours) <= MODULE_BUDGET, ours
    methods = [m for m in ours if m.startswith("fedforget.methods.")]
    assert methods == ["fedforget.methods.base"], methods  # the registry's names, no method
    assert not loaded(ours, "fedforget.state.checkpoint")
    assert not loaded(ours, "fedforget.federated") and not loaded(ours, "fedforget.metrics")


def test_the_message_carries_the_client_section_and_the_client_reads_only_it(process):
    """No method table, no server key in the message; the client's code reads no server key."""
    from fedforget.config import SERVER_KEYS, FederationConfig

    keys = process["message_keys"]
    assert not [k for k in keys if "." in k]  # the run's pga.lr=0.5 is not a client's business
    assert not SERVER_KEYS & set(keys)
    assert len(keys) == len(FederationConfig().to_run_config()) - len(SERVER_KEYS) - len(
        [k for k in FederationConfig().to_run_config() if "." in k]
    )
    derived = {  # properties of the config and the keys they read
        "targets": {"unlearn_at_round", "unlearn_clients"},
        "excluded": {"exclude_clients"},
        "split_seed": {"seed", "data_seed"},
        "backdoor_clients": {"forget_scenario", "unlearn_clients"},
        "lr_at": {"lr", "lr_decay"},
        "kept_methods": {"method", "methods"},
    }
    attributes = {f.name for f in dataclasses.fields(FederationConfig)}
    read = set()
    for name in process["reads"]:
        read |= derived.get(name, {name} & attributes)
    assert {"dataset", "local_epochs", "lr", "seed"} <= read  # it did read its config
    assert not {FederationConfig.key(name) for name in read} & SERVER_KEYS


def test_importing_the_clientapp_loads_no_torch(process):
    """An identity query's process needs Flower and the protocol only: torch loads on training."""
    at_import = process["after_import"]
    assert not loaded(at_import, "torch") and not loaded(at_import, "fedforget.task")
    assert not [p for p in FORBIDDEN if loaded(at_import, p)]


def test_training_imports_no_dynamo(process):
    """torch.optim's optimiser constructor imports torch._dynamo, sympy and triton (over a
    second in a fresh process); the ClientApp's training uses torch.optim's functional updates."""
    modules = process["after_train"]
    assert not [p for p in ("torch._dynamo", "sympy", "triton") if loaded(modules, p)]
    assert process["loss"] > 0.0  # it did train
