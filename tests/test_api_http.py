"""The unlearning API over real HTTP on loopback, around a real (idle) unlearning strategy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx
import pytest

from fedforget.api.auth import ApiStartError, resolve_token
from fedforget.api.cli import parse_option
from fedforget.api.client import ApiError, UnlearningClient
from fedforget.api.server import live_api
from fedforget.api.sqlite_queue import SQLiteRequestQueue
from fedforget.cli import main as fedforget
from fedforget.config import ConfigError, FederationConfig
from fedforget.federated.federation import build_strategy
from fedforget.methods import method_names
from fedforget.requests import UnlearningRequest

IDLE = FederationConfig(
    num_partitions=5,
    unlearn_at_round=0,
    exclude_clients="3",
    api_enabled=True,
    progress=False,
)


@pytest.fixture
def api(tmp_path, monkeypatch):
    """An API on a free loopback port, clients 0-4; 2 forgotten by an earlier run, 3 excluded."""
    monkeypatch.delenv("FEDFORGET_API_TOKEN", raising=False)
    config = IDLE.replace(state_dir=str(tmp_path))
    earlier = SQLiteRequestQueue.in_state_dir(tmp_path)
    earlier.submit(UnlearningRequest(("2",), method="not", request_id="earlier"))
    earlier.mark_step_applied(["earlier"], 5, 1.5)
    strategy = build_strategy(config)
    with live_api(config, strategy) as server:
        token = (tmp_path / "api-token").read_text().strip()
        with UnlearningClient(server.url, token) as client:
            yield client, strategy, tmp_path


def test_submit_returns_202_and_the_request_reads_back_queued(api):
    """202 with an id and a Location; GET returns it queued; status lists it as pending."""
    client, strategy, _ = api
    response = client._http.post(
        "/v1/unlearning-requests", json={"client_ids": [1, "0"], "options": {"eta-special": 3}}
    )
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/v1/unlearning-requests/{body['request_id']}"
    assert client.request(body["request_id"]) == body
    assert body["client_ids"] == ["1", "0"] and body["status"] == "queued"
    # no method named: the run's, stored by name; the option typed as the setting (float)
    assert body["method"] == "puf-special" and body["options"] == {"eta-special": 3.0}
    [due] = strategy.requests.due(1)
    assert (due.request_id, due.method, due.options) == (
        body["request_id"],
        "puf-special",
        {"eta-special": 3.0},
    )
    status = client.status()
    assert status["pending_requests"] == [body["request_id"]]
    assert status["clients_forgotten"] == ["2"] and status["clients_excluded"] == ["3"]
    assert (status["method"], status["methods_kept"]) == ("puf-special", ["puf-special"])
    assert status["server_storage"] == {"clients": 0, "bytes": 0}


def test_a_request_may_name_any_registered_method_and_its_options(api):
    """method + options of that method's table are queued as given; the Python client sends them."""
    client, strategy, _ = api
    submitted = client.submit(["1"], "puf-regular", {"eta-regular": 10, "source": "fresh"})
    assert submitted["method"] == "puf-regular"
    assert submitted["options"] == {"eta-regular": 10.0, "source": "fresh"}
    stored = strategy.requests.get(submitted["request_id"])
    assert (stored.method, stored.options) == (
        "puf-regular",
        {"eta-regular": 10.0, "source": "fresh"},
    )
    other = client.submit(["0"], "retrain")
    assert (other["method"], other["options"]) == ("retrain", {})


def test_unknown_methods_and_options_are_refused_and_queue_nothing(api):
    """Unknown method (the registered ones listed), foreign, mistyped or invalid option: 422."""
    client, strategy, _ = api
    refused = {
        "unknown method": (["1"], "forget-fast", None, "registered methods are"),
        "unknown option": (["1"], "puf-regular", {"lr": 0.1}, "puf.lr is not a setting"),
        "option of the run's method": (["1"], None, {"priority": 1}, "of puf-special"),
        "option of another method": (["1"], "retrain", {"eta-special": 3}, "of retrain"),
        "option of the wrong type": (["1"], None, {"eta-special": "big"}, "type float"),
        "bool for a number": (["1"], None, {"eta-special": True}, "type float"),
        "invalid value": (["1"], "puf-special", {"eta-special": 0}, "> 0"),
        "unknown source": (["1"], None, {"source": "cache"}, "stored, fresh"),
    }
    for name, (ids, method, options, message) in refused.items():
        with pytest.raises(ApiError) as error:
            client.submit(ids, method, options)
        assert error.value.status_code == 422, name
        assert message in error.value.detail, (name, error.value.detail)
    with pytest.raises(ApiError) as unknown:
        client.submit(["1"], "forget-fast")
    assert all(name in unknown.value.detail for name in method_names())
    assert [r.request_id for r in strategy.requests.all()] == ["earlier"]


def test_same_idempotency_key_returns_the_same_request(api):
    """A resubmission with the key queues nothing new; another body with it is 422."""
    client, strategy, _ = api
    first = client.submit(["1"], idempotency_key="k-1")
    again = client.submit(["1"], idempotency_key="k-1")
    assert again == first and len(strategy.requests.all()) == 2  # 'earlier' + this one
    with pytest.raises(ApiError) as refused:
        client.submit(["0"], idempotency_key="k-1")
    assert refused.value.status_code == 422 and "k-1" in refused.value.detail
    assert len(strategy.requests.all()) == 2


def test_state_changing_refusals(api):
    """Forgotten -> 409, excluded/unknown -> 422, unknown request -> 404; nothing queued."""
    client, strategy, _ = api
    expected = {("2",): 409, ("3",): 422, ("0", "17"): 422, ("node-5",): 422}
    for ids, code in expected.items():
        with pytest.raises(ApiError) as refused:
            client.submit(list(ids))
        assert refused.value.status_code == code
        assert ids[-1] in refused.value.detail
    with pytest.raises(ApiError) as missing:
        client.request("nope")
    assert missing.value.status_code == 404
    assert [r.request_id for r in strategy.requests.all()] == ["earlier"]
    assert strategy.directory.forgotten == {"2"}
    assert all(m.stored_clients() == [] for m in strategy.methods.values())


def test_every_endpoint_needs_the_token(api):
    """Without the token every endpoint, the schema included, answers 401."""
    client, strategy, _ = api
    for path in ("/v1/status", "/v1/audit-log", "/v1/unlearning-requests/earlier", "/openapi.json"):
        assert httpx.get(client.url + path).status_code == 401
    refused = httpx.post(
        client.url + "/v1/unlearning-requests",
        content=b"{not json",
        headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"},
    )
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert [r.request_id for r in strategy.requests.all()] == ["earlier"]


def test_audit_log_lists_applied_requests_without_client_data(api):
    """Request id, method, round, clients, norm and time, nothing else."""
    client, _, _ = api
    [entry] = client.audit_log()
    assert entry.keys() == {
        "request_id",
        "method",
        "server_round",
        "client_ids",
        "update_norm",
        "applied_at",
    }
    assert (entry["request_id"], entry["method"], entry["server_round"], entry["client_ids"]) == (
        "earlier",
        "not",
        5,
        ["2"],
    )
    assert entry["update_norm"] == 1.5


@pytest.mark.slow
def test_cli_submits_reads_and_reports_errors(api, capsys):
    """`fedforget unlearn` finds URL and token in the state dir and prints JSON."""
    _, strategy, state = api
    assert fedforget(["unlearn", "--state-dir", str(state), "1"]) == 0
    submitted = json.loads(capsys.readouterr().out)
    assert strategy.requests.get(submitted["request_id"]).client_ids == ("1",)
    assert (
        fedforget(["unlearn", "--state-dir", str(state), "--request", submitted["request_id"]]) == 0
    )
    assert json.loads(capsys.readouterr().out)["status"] == "queued"
    assert fedforget(["unlearn", "--state-dir", str(state), "--status"]) == 0
    assert json.loads(capsys.readouterr().out)["pending_requests"] == [submitted["request_id"]]
    assert fedforget(["unlearn", "--state-dir", str(state), "--audit-log"]) == 0
    assert [e["request_id"] for e in json.loads(capsys.readouterr().out)] == ["earlier"]
    assert fedforget(["unlearn", "--state-dir", str(state), "2"]) == 1
    assert "409" in capsys.readouterr().err
    options = ["--option", "eta-regular=10", "--option", "source=fresh"]
    assert (
        fedforget(["unlearn", "--state-dir", str(state), "0", "--method", "puf-regular", *options])
        == 0
    )
    submitted = json.loads(capsys.readouterr().out)
    assert (submitted["method"], submitted["options"]) == (
        "puf-regular",
        {"eta-regular": 10.0, "source": "fresh"},
    )
    assert fedforget(["unlearn", "--state-dir", str(state), "0", "--method", "nope"]) == 1
    error = capsys.readouterr().err
    assert "422" in error and "registered methods" in error
    assert fedforget(["unlearn", "--state-dir", str(state), "--status", "--method", "not"]) == 2
    assert (
        fedforget(["unlearn", "--state-dir", str(state), "0", "--option", "a=1", "--option", "a=2"])
        == 2
    )
    assert "twice" in capsys.readouterr().err
    assert len(strategy.requests.all()) == 3  # 'earlier' and the two accepted above


def test_cli_option_values_are_typed():
    """--option KEY=VALUE: int, float, true/false, else a string; no '=' is an error."""
    assert [
        parse_option(text)
        for text in ("a=10", "b=2.5", "c=1e-3", "d=True", "e=fresh", "f=nan", "g=")
    ] == [
        ("a", 10),
        ("b", 2.5),
        ("c", 0.001),
        ("d", True),
        ("e", "fresh"),
        ("f", "nan"),
        ("g", ""),
    ]
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_option("eta")


def test_no_token_refuses_a_public_address_and_a_configured_token_is_used(tmp_path, monkeypatch):
    """0.0.0.0 without a token does not start; file and environment tokens are honoured."""
    monkeypatch.delenv("FEDFORGET_API_TOKEN", raising=False)
    public = IDLE.replace(state_dir=str(tmp_path), api_host="0.0.0.0")
    with pytest.raises(ApiStartError, match="api-token-file"):
        resolve_token(public)
    with pytest.raises(ApiStartError), live_api(public, build_strategy(public)):
        pass
    assert not (tmp_path / "api.json").exists()
    monkeypatch.setenv("FEDFORGET_API_TOKEN", "from-env-" + "e" * 23)
    assert resolve_token(public).value == "from-env-" + "e" * 23
    token_file = tmp_path / "token"
    token_file.write_text("from-file-" + "f" * 22 + "\n")
    token_file.chmod(0o600)
    assert resolve_token(public.replace(api_token_file=str(token_file))).value == (
        "from-file-" + "f" * 22
    )
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_token(public.replace(api_token_file=str(tmp_path / "missing")))


def test_api_config_keys_are_validated():
    """Bad API keys raise ConfigError naming the key."""
    for changes, key in (
        ({"api_port": 70000}, "api-port"),
        ({"api_host": " "}, "api-host"),
        ({"api_token_env": "NOT-A-NAME"}, "api-token-env"),
        ({"state_dir": ""}, "state-dir"),
    ):
        with pytest.raises(ConfigError, match=key):
            IDLE.replace(state_dir="s").replace(**changes)


def test_fixed_port_and_endpoint_file(tmp_path, monkeypatch):
    """api-port is honoured; api.json names the URL (never the token) and goes at stop."""
    import socket

    monkeypatch.setenv("FEDFORGET_API_TOKEN", "secret")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = IDLE.replace(state_dir=str(tmp_path), api_port=port)
    with live_api(config, build_strategy(config)) as server:
        endpoint = json.loads((tmp_path / "api.json").read_text())
        assert endpoint["url"] == f"http://127.0.0.1:{port}" == server.url
        assert "secret" not in (tmp_path / "api.json").read_text()
        assert UnlearningClient.from_state_dir(Path(tmp_path)).status()["current_round"] == 0
    assert not (tmp_path / "api.json").exists()


def test_tokens_are_ascii_everywhere_and_long_on_public_addresses(tmp_path, monkeypatch):
    """A short token on 0.0.0.0, or a non-ASCII one anywhere, stops the API with the fix."""
    public = IDLE.replace(state_dir=str(tmp_path), api_host="0.0.0.0")
    loopback = IDLE.replace(state_dir=str(tmp_path))
    monkeypatch.setenv("FEDFORGET_API_TOKEN", "s" * 31)
    with pytest.raises(ApiStartError, match="at least 32"):
        resolve_token(public)
    assert resolve_token(loopback).value == "s" * 31  # only this machine can try it
    for bad in ("é" * 40, "with space" * 4, "tab\t" * 10):
        monkeypatch.setenv("FEDFORGET_API_TOKEN", bad)
        for config in (public, loopback):
            with pytest.raises(ApiStartError, match="printable ASCII"):
                resolve_token(config)
    with pytest.raises(ApiStartError), live_api(public, build_strategy(public)):
        pass
    assert not (tmp_path / "api.json").exists()


@pytest.mark.slow
def test_cli_reports_a_non_ascii_token_without_a_traceback(api, capsys, monkeypatch):
    """`fedforget unlearn` with a non-ASCII token (file or environment): exit 1, one clear line."""
    _, strategy, state = api
    token_file = state / "my-token"
    token_file.write_text("tökén-" * 8)
    assert (
        fedforget(["unlearn", "--state-dir", str(state), "--token-file", str(token_file), "1"]) == 1
    )
    error = capsys.readouterr().err
    assert "non-ASCII" in error and "Traceback" not in error
    monkeypatch.setenv("FEDFORGET_API_TOKEN", "tökén-" * 8)
    assert fedforget(["unlearn", "--state-dir", str(state), "--status"]) == 1
    error = capsys.readouterr().err
    assert "printable ASCII" in error and "Traceback" not in error
    missing = str(state / "missing")
    assert fedforget(["unlearn", "--state-dir", str(state), "--token-file", missing, "1"]) == 1
    assert "cannot read the token file" in capsys.readouterr().err
    assert [r.request_id for r in strategy.requests.all()] == ["earlier"]


def test_eta_above_eta_max_is_refused_by_the_api_and_by_the_config(api):
    """eta-special 100.5 > puf.eta-max (100): 422 naming the bound; a request cannot raise it."""
    client, strategy, _ = api
    with pytest.raises(ApiError) as above:
        client.submit(["1"], options={"eta-special": 100.5})
    assert above.value.status_code == 422 and "puf.eta-max = 100" in above.value.detail
    with pytest.raises(ApiError) as huge:
        client.submit(["1"], "puf-regular", {"eta-regular": 1e308})
    assert huge.value.status_code == 422 and "eta-max" in huge.value.detail
    with pytest.raises(ApiError) as raised:
        client.submit(["1"], options={"eta-max": 1e308, "eta-special": 1e308})
    assert raised.value.status_code == 422 and "only the run's configuration" in raised.value.detail
    at_bound = client.submit(["1"], "puf-regular", {"eta-regular": 100})
    assert at_bound["options"] == {"eta-regular": 100.0}
    assert len(strategy.requests.all()) == 2  # 'earlier' and the one at the bound
    with pytest.raises(ConfigError, match=r"puf\.eta-special"):
        FederationConfig.from_run_config({"puf.eta-special": 150.0})
    raised_bound = FederationConfig.from_run_config(
        {"puf.eta-max": 200.0, "puf.eta-special": 150.0}
    )
    assert raised_bound.settings_of("puf")["eta-max"] == 200.0


def test_a_request_that_would_leave_no_client_is_refused_at_submission(api):
    """2 forgotten, 3 excluded: forgetting 0, 1 and 4 leaves nobody to recover with, so 409."""
    client, strategy, _ = api
    with pytest.raises(ApiError) as refused:
        client.submit(["0", "1", "4"])
    assert refused.value.status_code == 409
    assert "no client to recover with" in refused.value.detail
    assert [r.request_id for r in strategy.requests.all()] == ["earlier"]
    assert client.submit(["0", "4"])["status"] == "queued"  # client 1 remains
