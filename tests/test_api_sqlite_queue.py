"""SQLiteRequestQueue: durable, exactly-once, idempotent; the forgotten set it implies."""

from __future__ import annotations

import json
import sqlite3

import pytest

from fedforget.api.sqlite_queue import SCHEMA_VERSION, IdempotencyConflict, SQLiteRequestQueue
from fedforget.config import FederationConfig
from fedforget.federated.federation import build_strategy
from fedforget.requests import UnlearningRequest, forgotten_clients

# The version-1 table (fedforget before the method registry: PUF's mode, eta, source).
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT UNIQUE,
    client_ids TEXT NOT NULL,
    mode TEXT,
    eta REAL,
    source TEXT,
    not_before_round INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    submitted_round INTEGER,
    status TEXT NOT NULL CHECK (status IN ('queued', 'applied', 'rejected')),
    applied_round INTEGER,
    applied_at REAL,
    update_norm REAL,
    reason TEXT NOT NULL DEFAULT ''
)
"""


def test_requests_survive_reopening_in_wal_mode(tmp_path):
    """A committed request is read back by a new connection; the journal is WAL."""
    queue = SQLiteRequestQueue.in_state_dir(tmp_path)
    queued = queue.submit(
        UnlearningRequest(
            ("3", "1"), method="puf-regular", options={"eta-regular": 5.0, "source": "fresh"}
        )
    )
    reopened = SQLiteRequestQueue.in_state_dir(tmp_path)
    assert reopened.all() == [queued]
    [due] = reopened.due(1)
    assert due.client_ids == ("3", "1") and due.method == "puf-regular"
    assert due.options == {"eta-regular": 5.0, "source": "fresh"}
    with sqlite3.connect(tmp_path / "requests.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_request_is_applied_at_most_once(tmp_path):
    """mark_step_applied changes a queued request only; later marks are ignored."""
    queue = SQLiteRequestQueue(tmp_path / "q.sqlite3")
    request = queue.submit(UnlearningRequest(("1",)))
    queue.mark_step_applied([request.request_id], 4, 2.5)
    queue.mark_step_applied([request.request_id], 9, 7.0)
    queue.mark_rejected(request.request_id, "late")
    stored = queue.get(request.request_id)
    assert (stored.status, stored.applied_round, stored.update_norm, stored.reason) == (
        "applied",
        4,
        2.5,
        "",
    )
    assert queue.due(100) == []
    assert [r.request.request_id for r in queue.applied()] == [request.request_id]


def test_idempotency_key_returns_the_first_request(tmp_path):
    """Same key, same request: one row; same key, other clients, method or options: conflict."""
    queue = SQLiteRequestQueue(tmp_path / "q.sqlite3")
    request = UnlearningRequest(("1",), method="puf-regular", options={"eta-regular": 10.0})
    first, created = queue.submit_record(request, idempotency_key="k")
    again, created_again = queue.submit_record(request, idempotency_key="k")
    assert created and not created_again and again.request == first.request
    for other in (
        UnlearningRequest(("2",), method="puf-regular", options={"eta-regular": 10.0}),
        UnlearningRequest(("1",), method="puf-special", options={"eta-regular": 10.0}),
        UnlearningRequest(("1",), method="puf-regular", options={"eta-regular": 9.0}),
        UnlearningRequest(("1",), method="puf-regular"),
    ):
        with pytest.raises(IdempotencyConflict, match="'k'"):
            queue.submit_record(other, idempotency_key="k")
    assert len(queue.all()) == 1


def test_carry_over_defers_only_queued_requests(tmp_path):
    """A restart defers queued requests to round 2; applied and later ones keep their rounds."""
    queue = SQLiteRequestQueue(tmp_path / "q.sqlite3")
    early = queue.submit(UnlearningRequest(("1",)))
    late = queue.submit(UnlearningRequest(("2",), not_before_round=7))
    done = queue.submit(UnlearningRequest(("0",)))
    queue.mark_step_applied([done.request_id], 3, 1.0)
    assert queue.carry_over(first_round=2) == 1
    assert [r.request_id for r in queue.due(1)] == []
    assert [r.request_id for r in queue.due(2)] == [early.request_id]
    assert queue.get(late.request_id).not_before_round == 7


def test_strategy_restores_the_forgotten_set_from_the_state_dir(tmp_path):
    """build_strategy on a state dir with an applied request starts with that client forgotten."""
    queue = SQLiteRequestQueue.in_state_dir(tmp_path)
    applied = queue.submit(UnlearningRequest(("1", "2")))
    queue.mark_step_applied([applied.request_id], 5, 1.0)
    queue.submit(UnlearningRequest(("0",)))
    assert forgotten_clients(queue) == {"1", "2"}
    config = FederationConfig(num_partitions=4, unlearn_at_round=0, state_dir=str(tmp_path))
    strategy = build_strategy(config)
    assert isinstance(strategy.requests, SQLiteRequestQueue)
    assert strategy.directory.forgotten == {"1", "2"}


def write_v1_database(path):
    """A request database as fedforget wrote it before methods: four rows, one per shape."""
    rows = [
        # (seq, request_id, key, clients, mode, eta, source, not_before, status, round, norm)
        (1, "special-eta", "key-a", ["1"], "special", 3.0, "stored", 0, "applied", 4, 2.5),
        (2, "regular-fresh", None, ["2", "0"], "regular", None, "fresh", 2, "queued", None, None),
        (5, "eta-only", "key-b", ["3"], None, 7.0, None, 0, "rejected", None, None),
        (6, "defaults", None, ["4"], None, None, None, 9, "queued", None, None),
    ]
    with sqlite3.connect(path) as db:
        db.execute(V1_SCHEMA)
        for seq, rid, key, clients, mode, eta, source, nbr, status, applied, norm in rows:
            db.execute(
                "INSERT INTO requests (seq, request_id, idempotency_key, client_ids, mode, eta, "
                "source, not_before_round, submitted_at, submitted_round, status, applied_round, "
                "applied_at, update_norm, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?)",
                (
                    seq,
                    rid,
                    key,
                    json.dumps(clients),
                    mode,
                    eta,
                    source,
                    nbr,
                    1000.0 + seq,
                    seq,
                    status,
                    applied,
                    2000.0 if applied else None,
                    norm,
                    "no stored update" if status == "rejected" else "",
                ),
            )
        db.execute("PRAGMA user_version=1")
    db.close()


def test_a_version_1_database_is_migrated_in_place(tmp_path):
    """mode -> method puf-<mode>, eta -> option eta-<mode> (both if no mode), source -> source."""
    path = tmp_path / "requests.sqlite3"
    write_v1_database(path)
    queue = SQLiteRequestQueue(path)
    migrated = {r.request.request_id: r for r in queue.records()}
    assert list(migrated) == ["special-eta", "regular-fresh", "eta-only", "defaults"]
    shapes = {rid: (r.request.method, r.request.options) for rid, r in migrated.items()}
    assert shapes == {
        "special-eta": ("puf-special", {"eta-special": 3.0, "source": "stored"}),
        "regular-fresh": ("puf-regular", {"source": "fresh"}),
        "eta-only": (None, {"eta-special": 7.0, "eta-regular": 7.0}),
        "defaults": (None, {}),
    }
    # nothing else changed: outcome, rounds, keys, times
    applied = migrated["special-eta"]
    assert (applied.request.status, applied.request.applied_round) == ("applied", 4)
    assert (applied.request.update_norm, applied.applied_at) == (2.5, 2000.0)
    assert (applied.idempotency_key, applied.submitted_round) == ("key-a", 1)
    assert applied.request.client_ids == ("1",) and applied.request.submitted_at == 1001.0
    assert migrated["eta-only"].request.reason == "no stored update"
    assert [r.request_id for r in queue.due(9)] == ["regular-fresh", "defaults"]
    assert [r.request_id for r in queue.due(2)] == ["regular-fresh"]
    assert forgotten_clients(queue) == {"1"}
    # the keys still deduplicate; new rows come after the old ones
    again, created = queue.submit_record(
        UnlearningRequest(("3",), options={"eta-special": 7.0, "eta-regular": 7.0}),
        idempotency_key="key-b",
    )
    assert not created and again.request.request_id == "eta-only"
    new = queue.submit(UnlearningRequest(("0",), method="not"))
    assert [r.request_id for r in queue.all()][-1] == new.request_id
    queue.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        columns = [row[1] for row in raw.execute("PRAGMA table_info(requests)")]
        assert "mode" not in columns and {"method", "options"} <= set(columns)
        assert raw.execute("SELECT max(seq) FROM requests").fetchone()[0] == 7
    raw.close()
    # opening again migrates nothing twice
    assert [r.request for r in SQLiteRequestQueue(path).records()][:4] == [
        r.request for r in migrated.values()
    ]


def test_a_database_of_an_unknown_version_is_refused(tmp_path):
    """A newer schema version is not touched: the error says what to do."""
    path = tmp_path / "requests.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=7")
    db.close()
    with pytest.raises(RuntimeError, match=r"schema version 7.*new state-dir"):
        SQLiteRequestQueue(path)
