"""Durability: a request queued before the server process dies is applied once after restart.

The restarted run resumes after the last checkpoint of the killed one
(same state-dir, same configuration; only the round cap differs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from api_support import wait_for_api, wait_for_round_start

from fedforget.api.sqlite_queue import SQLiteRequestQueue
from fedforget.config import FederationConfig
from fedforget.federated.federation import EVENTS_FILE, HISTORY_FILE, REQUESTS_FILE
from fedforget.state.checkpoint import load_checkpoint

pytestmark = pytest.mark.ray  # each server process attaches to the session's Ray head

ROOT = Path(__file__).resolve().parents[1]
SERVER = (
    "import json, sys\n"
    "from fedforget.config import FederationConfig\n"
    "from fedforget.simulation import simulate\n"
    "simulate(FederationConfig.from_run_config(json.loads(sys.argv[1])))\n"
)


def start_server(config: FederationConfig) -> subprocess.Popen[bytes]:
    """The federation's server (ServerApp, API, Ray driver) in its own process group.

    Its virtual clients are actors of the session's Ray head (``RAY_ADDRESS``): a SIGKILL of
    the group ends the server process as a crash does, and Ray ends the dead driver's actors.
    """
    return subprocess.Popen(
        [sys.executable, "-c", SERVER, json.dumps(config.to_run_config())],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def run_to_completion(config: FederationConfig) -> None:
    """Run the ServerApp simulation in a subprocess, as a restarted server would run."""
    done = subprocess.run(
        [sys.executable, "-c", SERVER, json.dumps(config.to_run_config())],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_queued_request_survives_a_crash_and_is_applied_exactly_once(tmp_path):
    """SIGKILL after the 202; the restarted run applies it once; a third run never uses client 1."""
    state = tmp_path / "state"
    base = FederationConfig(
        num_partitions=3,
        local_epochs=3,
        num_server_rounds=40,
        unlearn_at_round=0,
        api_enabled=True,
        state_dir=str(state),
        progress=False,
    )
    # run 1: killed right after the request was accepted, before any boundary could apply it
    server = start_server(base)
    try:
        client = wait_for_api(state)
        wait_for_round_start(client, at_least=2)
        accepted = client.submit(["1"], idempotency_key="forget-1")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    request_id = accepted["request_id"]
    survived = SQLiteRequestQueue.in_state_dir(state).get(request_id)
    assert survived is not None and survived.status == "queued"
    assert survived.method == "puf-special"  # the run's method, named when it was accepted

    checkpointed = load_checkpoint(state).server_round  # run 1 completed these rounds
    assert checkpointed >= 1

    # run 2: same state directory, resumed after round `checkpointed`; the request is applied
    # at its first boundary
    step = checkpointed + 1
    second = base.replace(num_server_rounds=step + 2, out_dir=str(tmp_path / "run2"))
    run_to_completion(second)
    events = json.loads((tmp_path / "run2" / EVENTS_FILE).read_text())
    assert [(e["server_round"], e["method"], e["clients"], e["request_ids"]) for e in events] == [
        (step, "puf-special", ["1"], [request_id])
    ]
    history = json.loads((tmp_path / "run2" / HISTORY_FILE).read_text())
    assert [h["round"] for h in history] == list(range(step + 3))  # each round once
    assert all(h["participants"] == ["0", "1", "2"] for h in history[1:step])
    assert [h["participants"] for h in history[step + 1 :]] == [["0", "2"], ["0", "2"]]

    # run 3: resumed with a higher cap; client 1 stays forgotten, nothing is applied again
    third = base.replace(num_server_rounds=step + 4, out_dir=str(tmp_path / "run3"))
    run_to_completion(third)
    assert json.loads((tmp_path / "run3" / EVENTS_FILE).read_text()) == events
    history = json.loads((tmp_path / "run3" / HISTORY_FILE).read_text())
    assert [h["participants"] for h in history[step + 3 :]] == [["0", "2"], ["0", "2"]]
    requests = json.loads((tmp_path / "run3" / REQUESTS_FILE).read_text())
    assert [(r["request_id"], r["status"], r["applied_round"]) for r in requests] == [
        (request_id, "applied", step)
    ]
