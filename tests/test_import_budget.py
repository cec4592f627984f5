"""What a digits ClientApp process imports: what training needs, not the heavy optional stacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("flwr_datasets", "datasets", "monai", "fastapi", "uvicorn", "sklearn", "torchvision")
"""Packages a digits ClientApp must not load (once the data cache is prepared)."""

# Does in one fresh process what a flwr-clientapp process does with a train message: import
# the ClientApp, receive the server's model and config, train, build the reply.
CLIENTAPP_PROCESS = r"""
import json, math, sys

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import app
from fedforget.config import FederationConfig

after_import = sorted(sys.modules)
config = FederationConfig(num_partitions=3, local_epochs=1, unlearn_at_round=0)
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # a SuperLink's ids
from fedforget.task import new_model  # the server's model: built by the same task code

content = RecordDict({
    "arrays": ArrayRecord(new_model(config).state_dict()),
    "config": ConfigRecord({**config.to_run_config(), "server-round": 1}),
})
message = Message(content, dst_node_id=1, message_type="train")
context = Context(1, 1, {"partition-id": 1, "num-partitions": 3}, RecordDict(), {})
reply = app(message, context)
print(json.dumps({
    "after_import": after_import,
    "after_train": sorted(sys.modules),
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
