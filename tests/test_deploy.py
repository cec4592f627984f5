"""The multi-process deployment, on real processes on loopback (SuperLink + SuperNodes)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedforget.api.client import ApiError, UnlearningClient
from fedforget.certs import generate_certificates
from fedforget.deploy import (
    TASK_POLL_INTERVAL_ENV,
    TASK_POLL_INTERVAL_S,
    LocalDeployment,
    descendants,
    is_running,
    running,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except ApiError:
            pass  # the API is not up yet
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_scenario_unlearn_over_http_kill_and_restart_supernodes(tmp_path):
    """Forget client 1 through the API in round 2, kill client 2 mid-round, restart both.

    A killed SuperNode's pending message gets Flower's NODE_UNAVAILABLE error
    reply once its heartbeat lapses, so the round ends with the others' updates.
    The deployment runs with TLS: the SuperLink serves its certificate, and the
    SuperNodes (the restarted ones too) and the CLI verify it (one deployment
    for both; the insecure flags are checked against Flower's CLI in test_compose).
    """
    tls = generate_certificates(tmp_path / "certs")
    deployment = LocalDeployment.create(tmp_path / "deploy", num_supernodes=3, tls=tls)
    state, out = tmp_path / "state", tmp_path / "out"
    run_config = (
        "num-partitions=3 num-server-rounds=7 unlearn-at-round=0 local-epochs=1 "
        f"api-enabled=true state-dir='{state}' out-dir='{out}'"
    )
    finished: list = []
    with running(deployment):
        assert "root-certificates" in (deployment.flwr_home / "config.toml").read_text()
        for name in ("superlink", "supernode-0"):
            command = Path(f"/proc/{deployment.processes[name]}/cmdline").read_bytes().split(b"\0")
            assert b"--insecure" not in command, name
        environ = Path(f"/proc/{deployment.processes['supernode-0']}/environ").read_bytes()
        assert f"{TASK_POLL_INTERVAL_ENV}={TASK_POLL_INTERVAL_S}".encode() in environ.split(b"\0")
        started = list(deployment.processes.values())
        runner = threading.Thread(
            target=lambda: finished.append(deployment.run_app(ROOT, run_config, timeout=1200))
        )
        runner.start()
        wait_until(lambda: (state / "api.json").is_file(), 300, "the unlearning API")
        client = UnlearningClient.from_state_dir(state)
        wait_until(lambda: client.status()["current_round"] >= 2, 300, "round 2")
        before = client.status()["current_round"]
        request = client.submit(["1"])
        after = client.status()["current_round"]
        applied = client.wait(request["request_id"], timeout=300)
        assert applied["status"] == "applied", applied["reason"]
        assert before + 1 <= applied["applied_round"] <= after + 1
        unlearn_round = applied["applied_round"]

        # kill SuperNode 2 as soon as the first recovery round has started
        wait_until(lambda: client.status()["current_round"] >= unlearn_round + 1, 300, "recovery")
        deployment.kill_supernode(2)
        killed_in = client.status()["current_round"]
        # bring both back: new node ids; 2 must be recognised, forgotten 1 refused
        wait_until(lambda: client.status()["current_round"] >= killed_in + 1, 300, "next round")
        deployment.kill_supernode(1)
        deployment.start_supernode(1)
        deployment.start_supernode(2)
        runner.join(timeout=1200)
        client.close()
        ours = [*started, *deployment.processes.values()]
        family = [*ours, *(child for pid in ours for child in descendants(pid))]
    assert finished and finished[0].returncode == 0, (
        finished[0].stdout[-3000:] + finished[0].stderr[-2000:]
    )
    assert not [pid for pid in family if is_running(pid)], "down() left processes behind"

    history = json.loads((out / "history.json").read_text())
    rounds = {r["round"]: r for r in history}
    assert sorted(rounds) == list(range(8)), "each round once, training to the last round"
    assert rounds[1]["contributors"] == ["0", "1", "2"]
    assert [rounds[n]["phase"] for n in range(1, unlearn_round)] == ["train"] * (unlearn_round - 1)
    assert rounds[unlearn_round]["phase"] == "unlearn"
    for number in range(unlearn_round, 8):
        assert "1" not in rounds[number]["participants"] + rounds[number]["contributors"]
    # the round SuperNode 2 died in completed with the others
    assert "0" in rounds[killed_in]["contributors"]
    lost = [n for n in range(killed_in, 8) if "2" not in rounds[n]["contributors"]]
    assert lost, "SuperNode 2 was killed but contributed to every later round"
    # the restarted SuperNode 2 came back under a new node id as client 2
    assert "2" in rounds[7]["contributors"]
    events = json.loads((out / "events.json").read_text())
    assert [(e["server_round"], e["clients"]) for e in events] == [(unlearn_round, ["1"])]


def test_down_without_up_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="fedforget deploy up"):
        LocalDeployment.load(tmp_path)


def test_latency_settings_yield_to_the_users_environment(tmp_path, monkeypatch):
    """Poll interval for every SuperExec, cores // SuperNodes threads; a user's value wins."""
    deployment = LocalDeployment.create(tmp_path / "deploy", num_supernodes=3)
    monkeypatch.delenv(TASK_POLL_INTERVAL_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)

    assert deployment.tuning() == {TASK_POLL_INTERVAL_ENV: str(TASK_POLL_INTERVAL_S)}
    assert deployment.tuning(supernode=True)["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv(TASK_POLL_INTERVAL_ENV, "1.0")
    assert deployment.tuning(supernode=True) == {}


class SlowRepliesGrid:
    """A stand-in for Flower's deployment grid: each reply shows up after some pulls."""

    def __init__(self, pulls_until_reply: dict[str, int]) -> None:
        self.pulls_until_reply = pulls_until_reply
        self.pulls = 0
        self.pushed: list[str] = []

    def push_messages(self, messages):
        self.pushed += [m.id for m in messages]
        return [m.id for m in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid))
            for mid in message_ids
            if self.pulls_until_reply[mid] == self.pulls
        ]


def test_prompt_grid_collects_replies_as_they_arrive():
    """Every reply, each once; pulls every interval; a timeout returns what arrived."""
    from fedforget.grid import PromptGrid

    inner = SlowRepliesGrid({"a": 1, "b": 3, "c": 100})
    grid = PromptGrid(inner, reply_poll_interval=0.01)  # type: ignore[arg-type]
    messages = [SimpleNamespace(id=i) for i in "abc"]

    started = time.monotonic()
    replies = grid.send_and_receive(messages, timeout=0.2)
    waited = time.monotonic() - started

    assert inner.pushed == ["a", "b", "c"]
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert 0.2 <= waited < 1.0 and 5 <= inner.pulls <= 25
    with pytest.raises(ValueError, match="> 0"):
        PromptGrid(inner, reply_poll_interval=0)  # type: ignore[arg-type]
