"""The unlearning API during real Flower simulations: requests land at the next round boundary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from api_support import Driver, wait_for_api, wait_for_round_start
from flwr.app import ConfigRecord
from flwr.serverapp import ServerApp
from harness import RecordingStore
from ray_support import run_app

from fedforget.api.client import UnlearningClient
from fedforget.api.sqlite_queue import SQLiteRequestQueue
from fedforget.arrays import Arrays, to_arrays, to_record
from fedforget.config import FederationConfig
from fedforget.federated.federation import (
    EVENTS_FILE,
    HISTORY_FILE,
    REQUESTS_FILE,
    build_strategy,
    live_api,
    method_context,
)
from fedforget.federated.strategy import UnlearningStrategy
from fedforget.methods.puf import PufSpecial
from fedforget.simulation import simulate
from fedforget.task import model_arrays, new_model

pytestmark = pytest.mark.ray

LIVE = FederationConfig(
    num_partitions=3,
    local_epochs=2,
    num_server_rounds=8,
    unlearn_at_round=0,
    api_enabled=True,
    progress=False,
    # the operator raised the bound: eta = 1e308 passes the API, so the step itself must fail
    method_settings=(("puf.eta-max", 1e308),),
)


@dataclass
class LiveRun:
    strategy: UnlearningStrategy
    store: RecordingStore
    models: dict[int, Arrays] = field(default_factory=dict)
    api: dict[str, Any] = field(default_factory=dict)


def run_with_api(config: FederationConfig, scenario) -> LiveRun:
    """Simulate ``config`` with its API up; ``scenario(client)`` runs against it meanwhile.

    The run's method (PUF-Special) keeps its pseudo-gradients in a RecordingStore.
    """
    from clients.client_app import app as client_app

    captured: dict[str, LiveRun] = {}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        store = RecordingStore()
        special = PufSpecial(method_context(config), store)
        strategy = build_strategy(config, methods={"puf-special": special})
        run = LiveRun(strategy, store)

        def keep_model(server_round, arrays):
            run.models[server_round] = to_arrays(arrays)

        with live_api(config, strategy):
            strategy.start(
                grid,
                to_record(model_arrays(new_model(config))),
                config.num_server_rounds,
                600.0,
                ConfigRecord(config.to_run_config()),
                ConfigRecord(config.to_run_config()),
                keep_model,
            )
        captured["run"] = run

    driver = Driver(lambda: scenario(wait_for_api(Path(config.state_dir))))
    driver.start()
    run_app(server, client_app, config.num_partitions)
    run = captured["run"]
    run.api = driver.outcome()
    return run


def fedavg(before: Arrays, entries) -> Arrays:
    total = sum(e.num_examples for e in entries.values())
    return {
        name: value
        + sum(e.num_examples / total * e.pseudo_gradient[name] for e in entries.values())
        for name, value in before.items()
    }


def _parts(entry):
    return entry.pseudo_gradient, entry.num_examples


def assert_arrays_close(actual: Arrays, expected: Arrays, atol: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=atol, rtol=0, err_msg=name)


def bad_calls(url: str, token: str) -> dict[str, httpx.Response]:
    """Every refused input, sent over HTTP; none may queue anything."""
    auth = {"Authorization": f"Bearer {token}"}
    as_json = {**auth, "Content-Type": "application/json"}
    post = f"{url}/v1/unlearning-requests"
    valid = {"client_ids": ["1"]}

    def with_options(options: dict[str, Any]) -> dict[str, Any]:
        return {**valid, "options": options}

    with httpx.Client(timeout=10.0) as http:
        return {
            "no token": http.post(post, json=valid),
            "wrong token": http.post(post, json=valid, headers={"Authorization": "Bearer nope"}),
            "unknown client": http.post(post, json={"client_ids": ["1", "9"]}, headers=auth),
            "unknown client (int)": http.post(post, json={"client_ids": [42]}, headers=auth),
            "malformed json": http.post(post, content=b'{"client_ids": ["1"', headers=as_json),
            "ids not a list": http.post(post, json={"client_ids": "1"}, headers=auth),
            "bool id": http.post(post, json={"client_ids": [True]}, headers=auth),
            "eta a string": http.post(
                post, json=with_options({"eta-special": "big"}), headers=auth
            ),
            "eta zero": http.post(post, json=with_options({"eta-special": 0}), headers=auth),
            "eta negative": http.post(post, json=with_options({"eta-special": -2.0}), headers=auth),
            "eta NaN": http.post(
                post,
                content=b'{"client_ids": ["1"], "options": {"eta-special": NaN}}',
                headers=as_json,
            ),
            "unknown method": http.post(post, json={**valid, "method": "fast"}, headers=auth),
            "method not a string": http.post(post, json={**valid, "method": 3}, headers=auth),
            "unknown option": http.post(post, json=with_options({"priority": 1}), headers=auth),
            "option of another method": http.post(
                post,
                json={**valid, "method": "retrain", "options": {"eta-special": 3}},
                headers=auth,
            ),
            "unknown source": http.post(post, json=with_options({"source": "cache"}), headers=auth),
            "options not an object": http.post(
                post, json={**valid, "options": ["eta-special", 3]}, headers=auth
            ),
            "too many options": http.post(
                post, json=with_options({f"key-{i}": i for i in range(40)}), headers=auth
            ),
            "no clients": http.post(post, json={"client_ids": []}, headers=auth),
            "unknown field": http.post(post, json={**valid, "priority": 1}, headers=auth),
            "too large": http.post(post, json={"client_ids": ["1"] * 4000}, headers=auth),
        }


EXPECTED_CODES = {
    "no token": 401,
    "wrong token": 401,
    "unknown client": 422,
    "unknown client (int)": 422,
    "malformed json": 422,
    "ids not a list": 422,
    "bool id": 422,
    "eta a string": 422,
    "eta zero": 422,
    "eta negative": 422,
    "eta NaN": 422,
    "unknown method": 422,
    "method not a string": 422,
    "unknown option": 422,
    "option of another method": 422,
    "unknown source": 422,
    "options not an object": 422,
    "too many options": 422,
    "no clients": 422,
    "unknown field": 422,
    "too large": 413,
}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Bad inputs in one round, forget client 1 in a later one, a 409 for it, then eta 1e308."""
    config = LIVE.replace(state_dir=str(tmp_path_factory.mktemp("state")))

    def scenario(client: UnlearningClient) -> dict[str, Any]:
        token = (Path(config.state_dir) / "api-token").read_text().strip()
        bad_round = wait_for_round_start(client, at_least=2)
        bad = {name: (r.status_code, r.json()) for name, r in bad_calls(client.url, token).items()}
        after_bad = client.status()
        queued_after_bad = len(SQLiteRequestQueue.in_state_dir(config.state_dir).all())
        observed = wait_for_round_start(client, at_least=bad_round + 1)
        submitted = client.submit(["1"])
        applied = client.wait(submitted["request_id"], timeout=120)
        again = httpx.post(
            f"{client.url}/v1/unlearning-requests",
            json={"client_ids": ["1"]},
            headers={"Authorization": f"Bearer {token}"},
        )
        huge = client.submit(["0"], options={"eta-special": 1e308})
        return {
            "bad_round": bad_round,
            "bad": bad,
            "after_bad": after_bad,
            "queued_after_bad": queued_after_bad,
            "observed_round": observed,
            "submitted": submitted,
            "applied": applied,
            "again": (again.status_code, again.json()),
            "huge": client.wait(huge["request_id"], timeout=120),
            "status": client.status(),
            "audit": client.audit_log(),
            "queued_at_end": len(SQLiteRequestQueue.in_state_dir(config.state_dir).all()),
        }

    return run_with_api(config, scenario)


def test_bad_input_is_refused_with_its_status_code_and_queues_nothing(live):
    """Each bad call gets its status code; the queue stays empty; the next round is plain FedAvg."""
    codes = {name: code for name, (code, _) in live.api["bad"].items()}
    assert codes == EXPECTED_CODES
    assert "9" in live.api["bad"]["unknown client"][1]["detail"]
    assert "42" in live.api["bad"]["unknown client (int)"][1]["detail"]
    assert "registered methods are" in live.api["bad"]["unknown method"][1]["detail"]
    assert "puf.priority" in live.api["bad"]["unknown option"][1]["detail"]
    assert live.api["queued_after_bad"] == 0
    assert live.api["after_bad"]["pending_requests"] == []
    assert live.api["after_bad"]["clients_forgotten"] == []
    # the boundary after the bad calls changed the model by FedAvg of all three clients only
    next_round = live.api["bad_round"] + 1
    assert live.strategy.rounds[next_round - 1].phase == "train"
    puts = live.store.put_in_round(next_round)
    assert sorted(puts) == ["0", "1", "2"]
    assert_arrays_close(live.models[next_round], fedavg(live.models[next_round - 1], puts))


def test_request_posted_mid_training_is_applied_at_the_next_round_boundary(live):
    """202 while round s trains; applied in round s + 1, as PUF-Special of the stored update."""
    submitted, applied = live.api["submitted"], live.api["applied"]
    s = live.api["observed_round"]
    assert submitted["status"] == "queued" and submitted["submitted_round"] == s
    assert applied["status"] == "applied" and applied["applied_round"] == s + 1
    # the stored pseudo-gradient of client 1 is its update of round s
    stored = live.store.put_in_round(s)["1"]
    expected = {
        name: value - 2.0 * stored.pseudo_gradient[name]
        if name in stored.pseudo_gradient
        else value
        for name, value in live.models[s].items()
    }
    assert_arrays_close(live.models[s + 1], expected)
    norm = np.sqrt(sum(float(np.sum((2.0 * d) ** 2)) for d in stored.pseudo_gradient.values()))
    assert applied["update_norm"] == pytest.approx(norm, rel=1e-4)
    assert [e.request_ids for e in live.strategy.events] == [(submitted["request_id"],)]


def test_forgotten_client_is_excluded_afterwards(live):
    """After the unlearning round client 1 neither trains nor is stored; 409 if asked again."""
    t = live.api["applied"]["applied_round"]
    later = [r for r in live.strategy.rounds[t:] if r.method == ""]  # the failed step aside
    assert later and all(r.participants == ["0", "2"] for r in later)
    assert max(e.server_round for cid, e in live.store.puts if cid == "1") == t - 1
    assert live.store.latest("1") is None
    status = live.api["status"]
    assert status["clients_forgotten"] == ["1"]
    assert (status["method"], status["methods_kept"]) == ("puf-special", ["puf-special"])
    assert status["server_storage"]["clients"] == 2
    model_bytes = sum(a.nbytes for a in live.models[0].values() if a.dtype.kind == "f")
    assert status["server_storage"]["bytes"] == 2 * model_bytes
    code, body = live.api["again"]
    assert code == 409 and "client 1" in body["detail"]
    assert live.api["queued_at_end"] == 2  # client 1's request and the rejected eta 1e308
    assert [(e["server_round"], e["client_ids"], e["method"]) for e in live.api["audit"]] == [
        (t, ["1"], "puf-special")
    ]


def test_a_step_whose_result_is_not_finite_is_never_applied(live):
    """eta-special 1e308 makes PUF's model Inf: the request ends rejected, the model is kept.

    The round of the failed step leaves the global model exactly as before it;
    nothing is forgotten, the audit log and the events hold client 1 only, and
    client 0 trains again afterwards.
    """
    huge = live.api["huge"]
    assert huge["status"] == "rejected" and "NaN or Inf" in huge["reason"]
    assert (huge["applied_round"], huge["update_norm"]) == (None, None)
    [failed] = [r for r in live.strategy.rounds if r.method and r.phase != "unlearn"]
    n = failed.server_round
    assert n > live.api["applied"]["applied_round"]
    for name, value in live.models[n - 1].items():
        np.testing.assert_array_equal(live.models[n][name], value, err_msg=name)
    assert all(np.isfinite(v).all() for model in live.models.values() for v in model.values())
    assert [e.clients for e in live.strategy.events] == [("1",)]
    assert [e["client_ids"] for e in live.api["audit"]] == [["1"]]
    assert live.api["status"]["clients_forgotten"] == ["1"]
    assert live.strategy.rounds[n].participants == ["0", "2"], "too few rounds after the step"


def test_two_requests_in_one_round_are_one_step_and_another_method_waits(tmp_path):
    """Round s: two requests, and one naming puf-regular with eta-regular=10 (real ServerApp).

    The two of the run's method (PUF-Special) are one step in round s + 1; the
    puf-regular one waits for the next boundary and is applied in round s + 2
    with that method and option, folded into a FedAvg round of the last client.
    """
    config = LIVE.replace(
        num_partitions=4,
        num_server_rounds=6,
        method_settings=(),
        methods="puf-regular",
        state_dir=str(tmp_path / "state"),
        out_dir=str(tmp_path / "out"),
    )

    def scenario(client: UnlearningClient) -> dict[str, Any]:
        observed = wait_for_round_start(client, at_least=2)
        first, second = client.submit(["1"]), client.submit([2])
        regular = client.submit(["0"], "puf-regular", {"eta-regular": 10})
        return {
            "observed": observed,
            "submitted": regular,
            "requests": [
                client.wait(r["request_id"], timeout=120) for r in (first, second, regular)
            ],
            "audit": client.audit_log(),
        }

    driver = Driver(lambda: scenario(wait_for_api(Path(config.state_dir))))
    driver.start()
    simulate(config)
    api = driver.outcome()

    s = api["observed"]
    assert s + 2 <= config.num_server_rounds, "the run was too slow for the test's rounds"
    first, second, regular = api["requests"]
    assert [r["applied_round"] for r in api["requests"]] == [s + 1, s + 1, s + 2]
    assert [r["method"] for r in api["requests"]] == ["puf-special", "puf-special", "puf-regular"]
    assert api["submitted"]["options"] == regular["options"] == {"eta-regular": 10.0}
    events = json.loads((tmp_path / "out" / EVENTS_FILE).read_text())
    assert [(e["server_round"], e["method"], e["clients"]) for e in events] == [
        (s + 1, "puf-special", ["1", "2"]),
        (s + 2, "puf-regular", ["0"]),
    ]
    assert events[0]["request_ids"] == [first["request_id"], second["request_id"]]
    assert events[1]["request_ids"] == [regular["request_id"]]
    assert events[0]["settings"]["eta-special"] == 2.0
    assert events[1]["settings"] == {
        "eta-special": 2.0,
        "eta-regular": 10.0,
        "eta-max": 100.0,
        "source": "stored",
    }
    assert [(e["server_round"], e["method"]) for e in api["audit"]] == [
        (s + 1, "puf-special"),
        (s + 1, "puf-special"),
        (s + 2, "puf-regular"),
    ]
    assert [e["update_norm"] for e in api["audit"]] == [
        e["update_norm"] for e in events for _ in e["request_ids"]
    ]
    requests = {
        r["request_id"]: r for r in json.loads((tmp_path / "out" / REQUESTS_FILE).read_text())
    }
    recorded = requests[regular["request_id"]]
    assert (recorded["method"], recorded["options"], recorded["status"]) == (
        "puf-regular",
        {"eta-regular": 10.0},
        "applied",
    )
    history = json.loads((tmp_path / "out" / HISTORY_FILE).read_text())
    phases = {h["round"]: (h["phase"], h.get("method"), h.get("participants")) for h in history}
    assert phases[s + 1] == ("unlearn", "puf-special", [])
    assert phases[s + 2] == ("unlearn", "puf-regular", ["3"])
    assert all(phases[r] == ("recover", "", ["3"]) for r in range(s + 3, 7))
    assert not (Path(config.state_dir) / "api.json").exists()  # removed on a clean stop
