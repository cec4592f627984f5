"""SQLiteRequestQueue: durable, exactly-once, idempotent; the forgotten set it implies."""

from __future__ import annotations

import sqlite3

import pytest

from fedforget.api.sqlite_queue import IdempotencyConflict, SQLiteRequestQueue
from fedforget.config import FederationConfig
from fedforget.federation import build_strategy
from fedforget.requests import UnlearningRequest, forgotten_clients


def test_requests_survive_reopening_in_wal_mode(tmp_path):
    """A committed request is read back by a new connection; the journal is WAL."""
    queue = SQLiteRequestQueue.in_state_dir(tmp_path)
    queued = queue.submit(UnlearningRequest(("3", "1"), mode="regular", eta=5.0))
    reopened = SQLiteRequestQueue.in_state_dir(tmp_path)
    assert reopened.all() == [queued]
    assert reopened.due(1)[0].client_ids == ("3", "1")
    with sqlite3.connect(tmp_path / "requests.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_request_is_applied_at_most_once(tmp_path):
    """mark_applied changes a queued request only; later marks are ignored."""
    queue = SQLiteRequestQueue(tmp_path / "q.sqlite3")
    request = queue.submit(UnlearningRequest(("1",)))
    queue.mark_applied(request.request_id, 4, 2.5)
    queue.mark_applied(request.request_id, 9, 7.0)
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
    """Same key, same request: one row; same key, other clients: IdempotencyConflict."""
    queue = SQLiteRequestQueue(tmp_path / "q.sqlite3")
    first, created = queue.submit_record(UnlearningRequest(("1",)), idempotency_key="k")
    again, created_again = queue.submit_record(UnlearningRequest(("1",)), idempotency_key="k")
    assert created and not created_again and again.request == first.request
    with pytest.raises(IdempotencyConflict, match="'k'"):
        queue.submit_record(UnlearningRequest(("2",)), idempotency_key="k")
    assert len(queue.all()) == 1


def test_carry_over_defers_only_queued_requests(tmp_path):
    """A restart defers queued requests to round 2; applied and later ones keep their rounds."""
    queue = SQLiteRequestQueue(tmp_path / "q.sqlite3")
    early = queue.submit(UnlearningRequest(("1",)))
    late = queue.submit(UnlearningRequest(("2",), not_before_round=7))
    done = queue.submit(UnlearningRequest(("0",)))
    queue.mark_applied(done.request_id, 3, 1.0)
    assert queue.carry_over(first_round=2) == 1
    assert [r.request_id for r in queue.due(1)] == []
    assert [r.request_id for r in queue.due(2)] == [early.request_id]
    assert queue.get(late.request_id).not_before_round == 7


def test_strategy_restores_the_forgotten_set_from_the_state_dir(tmp_path):
    """build_strategy on a state dir with an applied request starts with that client forgotten."""
    queue = SQLiteRequestQueue.in_state_dir(tmp_path)
    applied = queue.submit(UnlearningRequest(("1", "2")))
    queue.mark_applied(applied.request_id, 5, 1.0)
    queue.submit(UnlearningRequest(("0",)))
    assert forgotten_clients(queue) == {"1", "2"}
    config = FederationConfig(num_partitions=4, unlearn_at_round=0, state_dir=str(tmp_path))
    strategy = build_strategy(config)
    assert isinstance(strategy.requests, SQLiteRequestQueue)
    assert strategy.forgotten == {"1", "2"}
