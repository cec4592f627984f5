"""UnlearningFedAvg in a Flower app of one's own: the example app under `flwr run`, and a
quickstart-shaped ClientApp that reports no identity (real simulations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.supercore.task_identity import TaskIdentity
from ray_support import run_app

import fedforget
from fedforget.deploy import executables_first_on_path
from fedforget.federated.fedavg import client_free_methods

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower-app"
sys.path.insert(0, str(EXAMPLE))  # the example's package, for this process and Ray's actors

from flower_app.task import Net, load_data, train  # noqa: E402


def arrays_of(model: torch.nn.Module) -> ArrayRecord:
    return ArrayRecord(model.state_dict())


def test_methods_that_need_a_client_step_are_refused_when_chosen():
    for method in ("pga", "fedquit", "fedau", "mode"):
        with pytest.raises(ValueError, match=f"{method} needs a client step") as error:
            fedforget.UnlearningFedAvg(arrays_of(Net()), method=method)
        assert "puf-special" in str(error.value) and "federaser" in str(error.value)
    with pytest.raises(ValueError, match="pga needs a client step"):
        fedforget.UnlearningFedAvg(arrays_of(Net()), methods=["natural", "pga"])
    assert client_free_methods() == [
        "retrain",
        "natural",
        "puf-special",
        "puf-regular",
        "federaser",
        "not",
    ]


def test_bad_settings_and_an_api_without_state_dir_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"puf\.eta-special must be a finite number > 0"):
        fedforget.UnlearningFedAvg(arrays_of(Net()), settings={"puf.eta-special": 0.0})
    with pytest.raises(ValueError, match=r"unknown method setting puf\.eta;"):
        fedforget.UnlearningFedAvg(arrays_of(Net()), settings={"puf.eta": 1.0})
    with pytest.raises(ValueError, match="api=True needs state_dir"):
        fedforget.UnlearningFedAvg(arrays_of(Net()), api=True)
    with pytest.raises(ValueError, match="give requests or state_dir"):
        fedforget.UnlearningFedAvg(
            arrays_of(Net()), requests=fedforget.InMemoryRequestQueue(), state_dir=tmp_path
        )


def test_the_method_context_comes_from_the_arrays():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    strategy = fedforget.UnlearningFedAvg(arrays_of(model))
    context = strategy.methods["puf-special"].context
    assert context.first_conv_key == "0.weight"
    assert context.statistic_keys == {"1.running_mean", "1.running_var"}
    assert context.head_keys == ("3.weight", "3.bias")
    np.testing.assert_array_equal(context.initial_arrays["0.weight"], model[0].weight.detach())
    assert set(strategy.methods) == set(client_free_methods())


def quickstart_client_app() -> ClientApp:
    """Flower's quickstart ClientApp as it is: no identity, no fedforget."""
    app = ClientApp()

    @app.train()
    def train_model(msg: Message, context: Context) -> Message:
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        trainloader, _ = load_data(int(context.node_config["partition-id"]), 3)
        loss = train(model, trainloader, 1, msg.content["config"]["lr"])
        metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    return app


@pytest.mark.ray
def test_an_unmodified_client_app_is_forgotten_over_the_api_with_its_update_negated(tmp_path):
    """A request posted over HTTP for a node-keyed client: w4 = w3 - 2 * its stored update."""
    from fedforget.api.client import UnlearningClient

    state_dir = tmp_path / "state"
    seen: dict[str, object] = {}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        torch.manual_seed(0)
        arrays = arrays_of(Net())
        strategy = fedforget.UnlearningFedAvg(
            arrays, state_dir=state_dir, api=True, fraction_evaluate=0.0
        )
        models: dict[int, dict[str, np.ndarray]] = {}

        def evaluate(server_round, arrays):
            models[server_round] = {k: v.numpy() for k, v in arrays.items()}
            if server_round == 3:  # clients are known as node-<node_id>; PUF keeps their updates
                seen["target"] = target = sorted(strategy.directory.known())[0]
                entry = strategy.methods["puf-special"].store.latest(target)
                seen["stored"] = {k: np.array(v) for k, v in entry.pseudo_gradient.items()}
                with UnlearningClient.from_state_dir(state_dir) as api:
                    seen["request"] = api.submit([target])["request_id"]
            return MetricRecord({"accuracy": 0.0})

        strategy.start(
            grid=grid,
            initial_arrays=arrays,
            train_config=ConfigRecord({"lr": 0.05}),
            num_rounds=5,
            evaluate_fn=evaluate,
        )
        seen.update(models=models, strategy=strategy, requests=strategy.requests.all())

    run_app(server, quickstart_client_app(), 3)
    target, models, strategy = seen["target"], seen["models"], seen["strategy"]
    (request,) = seen["requests"]
    assert request.request_id == seen["request"] and request.client_ids == (target,)
    assert (request.status, request.applied_round) == ("applied", 4), request.reason
    for name, before in models[3].items():
        expected = (before.astype(np.float64) - 2.0 * seen["stored"][name]).astype(before.dtype)
        np.testing.assert_array_equal(models[4][name], expected)  # PUF's float64 arithmetic
        assert not np.allclose(models[4][name], before)
    rounds = strategy.rounds
    assert target.startswith("node-") and len(rounds[0].participants) == 3
    assert rounds[3].phase == "unlearn" and rounds[3].participants == []
    assert all(target not in r.participants and len(r.participants) == 2 for r in rounds[4:])
    assert not (state_dir / "api.json").exists()  # the API stopped with the run


@pytest.mark.slow
def test_the_example_flower_app_runs_with_flwr_run_and_negates_the_forgotten_update(
    tmp_path, monkeypatch
):
    """`flwr run examples/flower-app`: client 0 forgotten after round 3 with PUF-Special.

    Its update of round 3 (recomputed here by the example's own ClientApp from the
    round-2 model) is negated twice over in round 4: w4 = w3 - 2 * update.
    """
    flwr_home, out = tmp_path / "flwr-home", tmp_path / "out"
    env = {
        **os.environ,
        "PATH": executables_first_on_path(),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    flwr = str(Path(sys.executable).with_name("flwr"))
    try:
        done = subprocess.run(
            [
                flwr,
                "run",
                str(EXAMPLE),
                "--run-config",
                f"num-server-rounds=5 out-dir='{out}'",
                "--federation-config",
                "num-supernodes=3",
                "--stream",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        from test_main_job import _stop_processes_using

        _stop_processes_using(flwr_home)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "request to forget client(s) 0: applied in round 4" in log, log[-3000:]
    rounds = {r: dict(np.load(out / f"round-{r}.npz")) for r in (2, 3, 4)}

    from flower_app.client_app import train_model  # the ClientApp's own train handler

    for name in ("_run_id", "_node_id", "_task_id"):  # what a running SuperNode has set
        monkeypatch.setattr(TaskIdentity, name, 1)
    message = Message(
        content=RecordDict(
            {
                "arrays": ArrayRecord({k: _array(v) for k, v in rounds[2].items()}),
                "config": ConfigRecord({"lr": 0.05, "server-round": 3}),
            }
        ),
        dst_node_id=1,
        message_type="train",
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 3},
        state=RecordDict(),
        run_config={"local-epochs": 1},
    )
    reply = train_model(message, context)
    trained = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    for name, before in rounds[3].items():
        update = trained[name] - rounds[2][name]  # as the server computes it, in float32
        expected = (before.astype(np.float64) - 2.0 * update).astype(before.dtype)
        np.testing.assert_array_equal(rounds[4][name], expected)  # bit for bit
    assert json.dumps(sorted(rounds[4])) == json.dumps(sorted(Net().state_dict()))


def _array(value: np.ndarray):
    from flwr.app import Array

    return Array(np.ascontiguousarray(value))
