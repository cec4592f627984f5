"""The API under attack by a local user: connection floods, unsafe files, crashes mid-step."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
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
    WRITE_TIMEOUT_S,
)
from fedforget.api.server import live_api
from fedforget.api.sqlite_queue import SQLiteRequestQueue
from fedforget.api.state_dir import InsecureFileError
from fedforget.config import ConfigError, FederationConfig
from fedforget.federated.federation import (
    EVENTS_FILE,
    HISTORY_FILE,
    REQUESTS_FILE,
    RunRecord,
    build_strategy,
    read_arrays,
    write_record,
)
from fedforget.federated.records import RoundRecord, UnlearningEvent
from fedforget.federated.strategy import _ActiveStep
from fedforget.methods import method_class, method_names
from fedforget.methods.base import (
    ClientUpdate,
    ConfigValue,
    FederatedMethod,
    RoundPlan,
    StepResult,
    UnlearningStep,
    limit_problem,
    request_settings,
    unbounded_settings,
)
from fedforget.methods.centralised import centralised_class, centralised_names
from fedforget.methods.puf import PufRegular, PufSpecial
from fedforget.requests import UnlearningRequest, forgotten_clients
from fedforget.simulation import simulate
from fedforget.state.store import StoredPseudoGradient

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


SLOW_READERS = 70
PIPELINED = 200
SLOW_READ_S = 2 * WRITE_TIMEOUT_S
SMALL_RECEIVE_BUFFER = 2048


def slow_reader(address: tuple[str, int]) -> socket.socket | None:
    """A connection that pipelines GET /view PIPELINED times on a tiny buffer and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
    sock.settimeout(5)
    try:
        sock.connect(address)
        sock.sendall(b"GET /view HTTP/1.1\r\nHost: attacker\r\n\r\n" * PIPELINED)
    except OSError:
        sock.close()
        return None
    return sock


def test_a_slow_read_flood_cannot_lock_out_the_token_holder(served):
    """70 connections pipeline 200 GETs of the public page and never read; the holder is served.

    For 2 x WRITE_TIMEOUT_S the flood keeps 70 such connections open (a closed
    one is opened again); meanwhile every authorised call is answered within
    5 s. The cap evicts the stalled connections, never the newest; once the
    flood stops, the server aborts every connection it holds within
    WRITE_TIMEOUT_S (their responses are never read).
    """
    server, token, queue = served
    address = (server.host, server.port)
    flood: list[socket.socket] = []
    stop = threading.Event()

    def keep_flooding() -> None:
        while not stop.is_set():
            for sock in [s for s in flood if is_reset(s)]:
                flood.remove(sock)
                sock.close()
            while len(flood) < SLOW_READERS and not stop.is_set():
                sock = slow_reader(address)
                if sock is not None:
                    flood.append(sock)
            time.sleep(0.05)

    attacker = threading.Thread(target=keep_flooding, daemon=True)
    attacker.start()
    latencies: list[float] = []
    try:
        time.sleep(1.0)  # the flood fills the server's connections first
        deadline = time.monotonic() + SLOW_READ_S
        while time.monotonic() < deadline:
            started = time.monotonic()
            answer = httpx.get(
                f"{server.url}/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=5
            )
            latencies.append(time.monotonic() - started)
            assert answer.status_code == 200 and answer.json()["current_round"] == 0
            time.sleep(0.2)
    finally:
        stop.set()
        attacker.join(timeout=10)
    assert len(latencies) >= 10 and max(latencies) < 5.0
    # nobody reads: the server lets go of every connection within the write deadline
    wait_until(lambda: server.open_connections == 0, timeout=WRITE_TIMEOUT_S + 3)
    for sock in flood:
        sock.close()
    assert queue.all() == []


def is_reset(sock: socket.socket) -> bool:
    """True once the server closed ``sock``, seen without reading what it sent (MSG_PEEK)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_every_numeric_option_of_every_method_declares_an_upper_bound():
    """Each int or float setting of every registered method has a bound it respects.

    A method (or a new option) without one fails here: add it to the class's
    ``limits``, beside ``defaults``.
    """
    classes = [
        *(method_class(name) for name in method_names()),
        *(centralised_class(name) for name in centralised_names()),
    ]
    for cls in classes:
        assert unbounded_settings(cls) == [], f"{cls.name}: add these keys to its limits"
        assert set(cls.limits) <= set(cls.defaults), f"{cls.name}: limits of unknown settings"
        assert limit_problem(cls, cls.defaults) == "", f"{cls.name}: a default above its bound"


def above(bound: float, default: ConfigValue) -> int | float:
    """A value just above ``bound`` of the type of ``default`` (finite)."""
    if isinstance(default, int):
        return int(bound) + 1
    return min(bound * 2, sys.float_info.max)


@pytest.mark.parametrize("kind", ["federated", "centralised"])
def test_a_run_config_above_a_bound_is_refused(kind):
    """Every bounded setting of every method: the run configuration above its bound fails."""
    if kind == "federated":
        classes = [method_class(name) for name in method_names()]
    else:
        classes = [centralised_class(name) for name in centralised_names()]
    for cls in classes:
        for key, bound in cls.limits.items():
            value = above(bound, cls.defaults[key])
            with pytest.raises(ConfigError, match=f"{cls.table}.{key} must be at most"):
                FederationConfig.from_run_config({f"{cls.table}.{key}": value})


def test_a_request_above_a_bound_is_refused_with_422(served):
    """fedau epochs 2**53 froze a federation: every option above its bound is a 422 now."""
    server, token, queue = served
    auth = {"Authorization": f"Bearer {token}"}
    post = f"{server.url}/v1/unlearning-requests"
    with httpx.Client(headers=auth, timeout=10) as http:
        answer = http.post(
            post, json={"client_ids": ["1"], "method": "fedau", "options": {"epochs": 2**53}}
        )
        assert answer.status_code == 422
        assert "fedau.epochs must be at most 100" in answer.json()["detail"]
        for name in method_names():
            cls = method_class(name)
            for key, bound in cls.limits.items():
                options = {key: above(bound, cls.defaults[key])}
                body = {"client_ids": ["1"], "method": name, "options": options}
                answer = http.post(post, json=body)
                assert answer.status_code == 422, (name, key, answer.text)
                if key not in cls.run_only:
                    assert f"{cls.table}.{key} must be at most" in answer.json()["detail"]
        # at the bound itself: accepted
        at_bound = {"client_ids": ["1"], "method": "fedau", "options": {"epochs": 100}}
        assert http.post(post, json=at_bound).status_code == 202
    assert [r.options for r in queue.all()] == [{"epochs": 100}]


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


@pytest.mark.parametrize("open_mode", [0o777, 0o775, 0o757, 0o1777], ids=lambda m: f"{m:o}")
def test_a_state_dir_others_may_write_is_refused(tmp_path, monkeypatch, open_mode):
    """World-, group- or sticky-writable: no token, database or endpoint is put in it."""
    monkeypatch.delenv("FEDFORGET_API_TOKEN", raising=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(open_mode)
    with pytest.raises(InsecureFileError, match=f"mode {open_mode:o}.*chmod 700 {shared}"):
        SQLiteRequestQueue.in_state_dir(shared)
    with pytest.raises(ApiStartError, match=f"chmod 700 {shared}"):
        resolve_token(IDLE.replace(state_dir=str(shared)))
    assert list(shared.iterdir()) == []


def test_a_state_dir_that_is_a_link_or_someone_elses_is_refused(tmp_path, monkeypatch):
    """A symbolic link (whoever changes it chooses the folder) and another user's folder."""
    monkeypatch.delenv("FEDFORGET_API_TOKEN", raising=False)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InsecureFileError, match="symbolic link"):
        SQLiteRequestQueue.in_state_dir(link)
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    with pytest.raises(ApiStartError, match="owned by uid"):
        resolve_token(IDLE.replace(state_dir=str(real)))
    assert list(real.iterdir()) == []


class TokenTrap:
    """A loopback listener that records what clients send it (an attacker's fake API)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                with contextlib.suppress(OSError):
                    self.received += connection.recv(65536)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def planted(folder: Path, url: str, folder_mode: int = 0o700, file_mode: int = 0o600) -> Path:
    """A state-dir holding an api.json that names ``url``."""
    folder.mkdir(mode=0o700)
    (folder / "api.json").write_text(json.dumps({"url": url}))
    (folder / "api.json").chmod(file_mode)
    folder.chmod(folder_mode)
    return folder


def test_unlearn_sends_no_token_to_an_endpoint_someone_else_could_write(
    tmp_path, monkeypatch, capsys
):
    """`fedforget unlearn --state-dir DIR` trusts DIR/api.json only if no one else can write it.

    A 0777 state-dir (another user made it), an api.json others may write, a
    link in api.json's place and a state-dir that is a link: the client
    refuses before sending anything. The control (a private folder and file)
    shows that the trap would have caught the token.
    """
    from fedforget.cli import main

    secret = "the-real-token-" + "x" * 30
    monkeypatch.setenv("FEDFORGET_API_TOKEN", secret)
    trap = TokenTrap()
    try:
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text(json.dumps({"url": trap.url}))
        elsewhere.chmod(0o600)
        linked_file = planted(tmp_path / "linked-file", trap.url)
        (linked_file / "api.json").unlink()
        (linked_file / "api.json").symlink_to(elsewhere)
        linked_dir = tmp_path / "linked-dir"
        linked_dir.symlink_to(planted(tmp_path / "target", trap.url))
        refused = {
            "world-writable state-dir": planted(tmp_path / "open", trap.url, folder_mode=0o777),
            "api.json others may write": planted(tmp_path / "file", trap.url, file_mode=0o666),
            "api.json a link": linked_file,
            "state-dir a link": linked_dir,
        }
        for case, folder in refused.items():
            assert main(["unlearn", "--state-dir", str(folder), "--status"]) == 1, case
            assert "refusing to send the API token" in capsys.readouterr().err, case
        time.sleep(0.5)
        assert trap.received == b""
        control = planted(tmp_path / "mine", trap.url)
        assert main(["unlearn", "--state-dir", str(control), "--status"]) == 1
        wait_until(lambda: secret.encode() in trap.received, timeout=10)
    finally:
        trap.close()


def test_a_directory_given_as_the_token_file_gets_a_clear_error(state, tmp_path, capsys):
    """The server refuses to start and the client stops, each with a one-line reason."""
    from fedforget.cli import main

    folder = tmp_path / "tokens"
    folder.mkdir(mode=0o700)
    with pytest.raises(ApiStartError, match=f"{folder} is a directory"):
        resolve_token(IDLE.replace(state_dir=str(state), api_token_file=str(folder)))
    argv = ["unlearn", "--url", "http://127.0.0.1:9", "--token-file", str(folder), "--status"]
    assert main(argv) == 1
    assert f"the token file {folder} is a directory" in capsys.readouterr().err


class IdleStep(FederatedMethod):
    """A method whose step returns the model it was given: it changes nothing."""

    name = "idle-step"
    table = "idle-step"

    def plan(self, step, state, global_arrays, remaining):
        return RoundPlan(global_arrays)

    def apply(self, step, state, global_arrays, plan, updates):
        return StepResult({k: v.copy() for k, v in global_arrays.items()})


def one_step(strategy, method, targets, settings, updates=()):
    """Run one step round of ``method`` on ``strategy`` (no simulation); the request and model."""
    before = method.context.initial_arrays
    request = strategy.requests.submit(UnlearningRequest(targets, method=method.name))
    step = UnlearningStep((request,), method.name, targets, settings, 3)
    state = method.begin(step, before)
    strategy._active = _ActiveStep(step, method, before, 0, state)
    strategy._global = before
    strategy._plan = method.plan(step, state, before, ["0", "2"])
    strategy.rounds.append(RoundRecord(3, "unlearn", [], method=method.name))
    after = strategy._step_round(3, list(updates))
    return strategy.requests.get(request.request_id), before, after


def test_a_step_that_changes_nothing_is_rejected_with_the_reason():
    """eta-special 1e-320 passed `> 0`: the step changes no value, so nothing is forgotten.

    The same holds for any method whose step leaves the model as it was, and
    for PUF-Regular, whose round would change the model through the other
    clients' updates while the targets' negated part vanishes. Natural, which
    forgets by leaving the targets out, is applied unchanged; eta 2 applies.
    """
    config = IDLE.replace(api_enabled=False)
    strategy = build_strategy(config)
    special = strategy.methods["puf-special"]
    before = special.context.initial_arrays
    delta = {k: np.full_like(v, 0.01) for k, v in before.items() if v.dtype.kind == "f"}
    special.store.put("1", StoredPseudoGradient(delta, 50, 2))
    tiny = request_settings(PufSpecial, config.settings_of("puf"), {"eta-special": 1e-320})

    request, model_before, after = one_step(strategy, special, ("1",), tiny)
    assert request.status == "rejected" and "too small to change the model" in request.reason
    assert all(np.array_equal(after[k], v) for k, v in model_before.items())
    assert strategy.directory.forgotten == set() and strategy.events == []
    assert special.store.latest("1") is not None

    request, _, _ = one_step(strategy, IdleStep(special.context), ("1",), {})
    assert request.status == "rejected" and "left the model exactly as it was" in request.reason

    regular = strategy.methods["puf-regular"]
    regular.store.put("1", StoredPseudoGradient(delta, 50, 2))
    remaining = [
        ClientUpdate(c, {k: v + 0.01 for k, v in before.items()}, delta, 50) for c in ("0", "2")
    ]
    settings = request_settings(PufRegular, config.settings_of("puf"), {"eta-regular": 1e-320})
    request, _, after = one_step(strategy, regular, ("1",), settings, remaining)
    assert request.status == "rejected" and "too small to change the model" in request.reason
    assert strategy.directory.forgotten == set()

    request, _, _ = one_step(strategy, strategy.methods["natural"], ("2",), {})
    assert request.status == "applied"  # nobody answered: unchanged, and still forgotten
    normal = request_settings(PufSpecial, config.settings_of("puf"), {})
    request, _, after = one_step(strategy, special, ("1",), normal)
    assert request.status == "applied" and request.update_norm > 0
    assert strategy.directory.forgotten == {"1", "2"}


def test_run_records_are_private_files_in_a_private_folder(tmp_path):
    """history, events, requests and the models: 0600 files in a 0700 out-dir."""
    record = RunRecord(
        config=IDLE,
        final_arrays={"w": np.zeros(2, np.float32)},
        original_arrays={"w": np.ones(2, np.float32)},
        history=[{"round": 1, "participants": ["0", "2"]}],
        rounds=[],
        events=[],
        requests=[UnlearningRequest(("1",), request_id="r")],
        wall_s=1.0,
    )
    out = tmp_path / "out" / "run"
    write_record(out, record)
    names = [HISTORY_FILE, EVENTS_FILE, REQUESTS_FILE, "final_model.npz", "original_model.npz"]
    assert {p.name: mode(p) for p in out.iterdir()} == dict.fromkeys(names, 0o600)
    assert mode(out) == 0o700
    assert read_arrays(out / "original_model.npz")["w"].tolist() == [1.0, 1.0]


def process_tree(root: int) -> set[int]:
    """``root`` and every process descended from it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_text()
            except OSError:  # the process ended meanwhile
                continue
            parent = int(stat_line.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def socket_owners(pids: set[int]) -> dict[int, str]:
    """Socket inode -> name of the process of ``pids`` holding it (from /proc/PID/fd)."""
    owners: dict[int, str] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[int(target[8:-1])] = name
    return owners


def listening_tcp() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, int]]:
    """(address, port, inode) of every listening TCP socket (/proc/net/tcp and tcp6)."""
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(
                int(address[i : i + 8], 16).to_bytes(4, "little") for i in range(0, len(address), 8)
            )
            ip = ipaddress.ip_address(socket.inet_ntop(family, raw))
            found.append((ip, int(port, 16), int(fields[9])))
    return found


def is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.private_ray
def test_a_default_simulation_listens_on_loopback_only():
    """Ray's GCS, raylet, agents and workers of a private simulation bind 127.0.0.1 only.

    While a small federation runs, the listening TCP sockets of this process
    and its descendants (Ray's daemons and workers) are sampled from
    /proc/net/tcp{,6}: none may listen on another address. Ray has no
    authentication, so a port on the network would run anyone's code as us.
    """
    me = os.getpid()
    before = {inode for _, _, inode in listening_tcp()}
    seen: dict[tuple[str, int], str] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            owners = socket_owners(process_tree(me))
            for ip, port, inode in listening_tcp():
                if inode in owners and inode not in before:
                    seen[(str(ip), port)] = owners[inode]
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    config = FederationConfig(
        num_partitions=2, num_server_rounds=2, local_epochs=1, unlearn_at_round=0, progress=False
    )
    try:
        record = simulate(config, num_cpus=2)
    finally:
        done.set()
        sampler.join(timeout=10)
    assert [h["round"] for h in record.history] == [0, 1, 2]
    owners = set(seen.values())
    assert {"gcs_server", "raylet"} <= owners, f"Ray's daemons were not seen: {seen}"
    exposed = {
        address: owner
        for address, owner in seen.items()
        if not is_loopback(ipaddress.ip_address(address[0]))
    }
    assert exposed == {}, f"listening beyond loopback: {exposed}"


@pytest.mark.ray
def test_the_test_sessions_shared_ray_listens_on_loopback_only(shared_ray):
    """The head every ``ray`` test attaches to (tests/conftest.py) binds 127.0.0.1 only."""
    owners = socket_owners(process_tree(shared_ray.pid))
    listening = {
        (ip, port): owners[inode] for ip, port, inode in listening_tcp() if inode in owners
    }
    assert {"gcs_server", "raylet"} <= set(listening.values()), listening
    exposed = {
        address: owner for address, owner in listening.items() if not is_loopback(address[0])
    }
    assert exposed == {}, f"listening beyond loopback: {exposed}"


STEP_RECORDER = """
import os, signal, sys
from fedforget.config import ConfigError, FederationConfig
from fedforget.federated.federation import build_strategy
from fedforget.federated.strategy import _ActiveStep
from fedforget.methods.base import StepResult, UnlearningStep

state_dir, kill_at_commit = sys.argv[1], int(sys.argv[2])
config = FederationConfig(num_partitions=3, unlearn_at_round=0, state_dir=state_dir)
strategy = build_strategy(config)
method = strategy.methods["puf-special"]
before = method.context.initial_arrays
step = UnlearningStep(tuple(strategy.requests.all()), "puf-special", ("1", "2"), {}, 3)
strategy._active = _ActiveStep(step, method, before, 0, method.begin(step, before))
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


@pytest.mark.slow
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
