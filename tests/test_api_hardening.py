"""The API under attack by a local user: connection floods, unsafe files, crashes mid-step."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fedforget.api.auth import ApiStartError, resolve_token
from fedforget.api.constants import (
    MAX_CONNECTIONS,
    REQUEST_BODY_TIMEOUT_S,
    REQUEST_HEAD_TIMEOUT_S,
)
from fedforget.api.server import live_api
from fedforget.api.sqlite_queue import SQLiteRequestQueue
from fedforget.config import FederationConfig
from fedforget.federated.federation import (
    EVENTS_FILE,
    HISTORY_FILE,
    REQUESTS_FILE,
    RunRecord,
    build_strategy,
    write_record,
)
from fedforget.federated.records import UnlearningEvent
from fedforget.requests import UnlearningRequest, forgotten_clients

ROOT = Path(__file__).resolve().parents[1]
IDLE = FederationConfig(num_partitions=3, unlearn_at_round=0, api_enabled=True, progress=False)
FLOOD = 300


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A live API (idle strategy) on loopback: the server, its generated token, its queue."""
    monkeypatch.delenv("FEDFORGET_API_TOKEN", raising=False)
    config = IDLE.replace(state_dir=str(tmp_path / "state"))
    strategy = build_strategy(config)
    with live_api(config, strategy) as server:
        yield server, (tmp_path / "state" / "api-token").read_text().strip(), strategy.requests


def is_closed(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (what it sent before closing is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def wait_until(condition, timeout: float) -> float:
    """Poll ``condition`` until true; return the seconds it took (fail after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_idle_connections_cannot_lock_out_the_token_holder(served):
    """300 idle, a half-sent head and a half-sent body: the token holder is still answered.

    Beyond MAX_CONNECTIONS the server closes the longest-idle connections at
    once; every idle or half-sent one is closed within the head deadline (the
    half-sent body gets 408), a kept-alive one after its response too.
    """
    server, token, queue = served
    address = (server.host, server.port)
    flood = [socket.create_connection(address, timeout=5) for _ in range(FLOOD)]
    half_head = socket.create_connection(address, timeout=5)
    half_head.sendall(b"GET /v1/status HTTP/1.1\r\nHost: attacker\r\n")
    half_body = socket.create_connection(address, timeout=5)
    half_body.sendall(
        b"POST /v1/unlearning-requests HTTP/1.1\r\nHost: attacker\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    started = time.monotonic()
    wait_until(lambda: sum(is_closed(s) for s in flood) >= FLOOD - MAX_CONNECTIONS, timeout=5)

    answer = httpx.get(
        f"{server.url}/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert answer.status_code == 200 and answer.json()["current_round"] == 0
    kept_alive = socket.create_connection(address, timeout=5)
    kept_alive.sendall(
        b"GET /v1/status HTTP/1.1\r\nHost: holder\r\nAuthorization: Bearer "
        + token.encode()
        + b"\r\n\r\n"
    )
    assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200")

    half_body.settimeout(REQUEST_BODY_TIMEOUT_S + 5)
    assert half_body.recv(65536).startswith(b"HTTP/1.1 408")
    everyone = [*flood, half_head, half_body, kept_alive]
    wait_until(lambda: all(is_closed(s) for s in everyone), timeout=REQUEST_HEAD_TIMEOUT_S + 5)
    assert time.monotonic() - started < REQUEST_HEAD_TIMEOUT_S + 5
    for sock in everyone:
        sock.close()
    assert queue.all() == []  # the half-sent POST queued nothing


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDFORGET_API_TOKEN", raising=False)
    return tmp_path / "state"


def test_unsafe_token_files_stop_the_api_with_the_fix(state, tmp_path, monkeypatch):
    """A token file that is a symlink, someone else's or readable by others is never used."""
    config = IDLE.replace(state_dir=str(state))
    token = state / "api-token"
    secret = tmp_path / "secret"
    secret.write_text("x" * 40)
    secret.chmod(0o600)
    # a symlink to another file: its content is not taken as the token
    state.mkdir(mode=0o700)
    token.symlink_to(secret)
    with pytest.raises(ApiStartError, match="symbolic link"):
        resolve_token(config)
    # a dangling symlink: no token is written through it
    token.unlink()
    target = tmp_path / "planted"
    token.symlink_to(target)
    with pytest.raises(ApiStartError, match="symbolic link"):
        resolve_token(config)
    assert not target.exists()
    # readable by group or others: refused, naming chmod 600
    token.unlink()
    token.write_text("y" * 40)
    token.chmod(0o644)
    with pytest.raises(ApiStartError, match=f"chmod 600 {token}"):
        resolve_token(config)
    # owned by another user
    token.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(token, 65534, 65534)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)
    with pytest.raises(ApiStartError, match="owned by uid"):
        resolve_token(config)
    # the configured api-token-file is held to the same rules
    monkeypatch.undo()
    monkeypatch.delenv("FEDFORGET_API_TOKEN", raising=False)
    secret.chmod(0o640)
    with pytest.raises(ApiStartError, match="mode 640"):
        resolve_token(config.replace(api_token_file=str(secret)))


def test_a_generated_token_is_a_new_private_file(state):
    """No token yet: one is created 0600 (O_EXCL | O_NOFOLLOW) in a 0700 state-dir and reused."""
    config = IDLE.replace(state_dir=str(state))
    first = resolve_token(config)
    assert first.origin.endswith("(generated)") and len(first.value) >= 32
    assert mode(state) == 0o700 and mode(state / "api-token") == 0o600
    assert resolve_token(config).value == first.value


def test_state_dir_and_its_files_are_private_and_an_open_one_is_flagged(state, caplog):
    """state-dir 0700; database, -wal, -shm, api.json and api-token 0600; a 0755 one warns."""
    config = IDLE.replace(state_dir=str(state))
    strategy = build_strategy(config)
    strategy.requests.submit(UnlearningRequest(("1",)))
    with live_api(config, strategy):
        files = ["requests.sqlite3", "requests.sqlite3-wal", "requests.sqlite3-shm"]
        files += ["api.json", "api-token"]
        assert {name: mode(state / name) for name in files} == dict.fromkeys(files, 0o600)
        assert mode(state) == 0o700
    shared = state.parent / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="fedforget.api.state_dir"):
        SQLiteRequestQueue.in_state_dir(shared)
    assert f"chmod 700 {shared}" in caplog.text
    assert mode(shared) == 0o755  # warned, not changed: its owner may share it on purpose
    assert mode(shared / "requests.sqlite3") == 0o600


STEP_RECORDER = """
import os, signal, sys
from fedforget.config import FederationConfig
from fedforget.federated.federation import build_strategy
from fedforget.federated.strategy import _ActiveStep
from fedforget.methods.base import StepResult, UnlearningStep

state_dir, kill_at_commit = sys.argv[1], int(sys.argv[2])
config = FederationConfig(num_partitions=3, unlearn_at_round=0, state_dir=state_dir)
strategy = build_strategy(config)
method = strategy.methods["puf-special"]
before = method.context.initial_arrays
step = UnlearningStep(tuple(strategy.requests.all()), "puf-special", ("1", "2"), {}, 3)
strategy._active = _ActiveStep(step, method, before, 0)
commits = 0

def trace(statement):
    global commits
    if statement.strip().upper() == "COMMIT":
        commits += 1
        if commits == kill_at_commit:  # SIGKILL before this COMMIT runs
            os.kill(os.getpid(), signal.SIGKILL)

strategy.requests._db.set_trace_callback(trace)
strategy._complete(4, StepResult({k: v + 1 for k, v in before.items()}))
"""


@pytest.mark.parametrize("kill_at_commit", [1, 2])
def test_a_kill_while_a_step_is_recorded_leaves_all_of_it_or_none(tmp_path, kill_at_commit):
    """A 60-request step; SIGKILL at the 1st or 2nd COMMIT of its recording: all or none applied.

    The applied requests are the audit log and the forgotten set a restart reads.
    """
    queue = SQLiteRequestQueue.in_state_dir(tmp_path)
    ids = [queue.submit(UnlearningRequest((str(1 + i % 2),))).request_id for i in range(60)]
    queue.close()
    done = subprocess.run(
        [sys.executable, "-c", STEP_RECORDER, str(tmp_path), str(kill_at_commit)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    killed = done.returncode == -signal.SIGKILL
    assert killed or done.returncode == 0, done.stderr[-3000:]
    reopened = SQLiteRequestQueue.in_state_dir(tmp_path)
    statuses = {r.request_id: r.status for r in reopened.all()}
    audit = [r.request.request_id for r in reopened.applied()]
    if kill_at_commit == 1:
        assert killed and set(statuses.values()) == {"queued"}
        assert audit == [] and forgotten_clients(reopened) == set()
    else:
        assert not killed  # the whole step was one COMMIT
        assert set(statuses.values()) == {"applied"} and sorted(audit) == sorted(ids)
        assert {r.request.applied_round for r in reopened.applied()} == {4}
        assert len({r.request.update_norm for r in reopened.applied()}) == 1
        assert forgotten_clients(reopened) == {"1", "2"}
    restarted = build_strategy(IDLE.replace(api_enabled=False, state_dir=str(tmp_path)))
    assert restarted.directory.forgotten == forgotten_clients(reopened)


def test_run_records_are_strict_json(tmp_path):
    """Non-finite numbers (a diverged model's loss, a norm) are written as null, never NaN."""
    event = UnlearningEvent(
        server_round=3,
        first_round=3,
        method="puf-special",
        clients=("1",),
        request_ids=("r",),
        settings={"eta-special": 2.0},
        update_norm=float("inf"),
        applied_at=1.0,
        stored_bytes=0,
        model_before={},
    )
    record = RunRecord(
        config=IDLE,
        final_arrays={"w": np.zeros(2, np.float32)},
        original_arrays=None,
        history=[{"round": 3, "test_loss": float("nan"), "test_acc": 0.1}],
        rounds=[],
        events=[event],
        requests=[UnlearningRequest(("1",), request_id="r", update_norm=float("nan"))],
        wall_s=1.0,
    )
    write_record(tmp_path, record)

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in a record")

    read = {
        name: json.loads((tmp_path / name).read_text(), parse_constant=refuse)
        for name in (HISTORY_FILE, EVENTS_FILE, REQUESTS_FILE)
    }
    assert read[HISTORY_FILE] == [{"round": 3, "test_loss": None, "test_acc": 0.1}]
    assert read[EVENTS_FILE][0]["update_norm"] is None
    assert read[REQUESTS_FILE][0]["update_norm"] is None
