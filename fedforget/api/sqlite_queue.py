"""A durable request queue: unlearning requests kept in SQLite (WAL).

:class:`SQLiteRequestQueue` implements :class:`fedforget.requests.RequestQueue`,
so the strategy reads it exactly as it reads the in-memory queue. Every write
is committed (``synchronous=FULL``) before the call returns, so a request the
API has answered 202 for survives a crash of the server process. The set of
forgotten clients is not kept separately: it is the union of the clients of
the applied requests (:func:`fedforget.requests.forgotten_clients`), so it
cannot drift from the requests that caused it.

Each request is applied at most once: ``mark_step_applied`` only changes
requests that are still queued, and ``due`` only returns queued ones. The
requests of one step are marked applied in one transaction, so a crash while
a step is recorded leaves all of them applied or none (and the audit log, the
applied requests, with them).

The database and its ``-wal`` and ``-shm`` files are created with mode 0600
(SQLite gives its side files the database's mode) in a folder created 0700
(:mod:`fedforget.api.state_dir`). An idempotency key
(unique) makes resubmissions return the request the key first created.

A request's method is its registry name (NULL: the run's ``method``) and its
options a JSON object of setting overrides. Version 1 of the schema, written
when PUF was the only method, kept ``mode``, ``eta`` and ``source`` instead; a
version-1 database is migrated in place when opened (:func:`_v1_method_and_options`
says how each row maps).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from fedforget.api.constants import DATABASE_FILE
from fedforget.api.state_dir import create_private_file, prepare_state_dir, tighten_private_file
from fedforget.requests import OptionValue, RequestStatus, UnlearningRequest

SCHEMA_VERSION = 2

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT UNIQUE,
    client_ids TEXT NOT NULL,
    method TEXT,
    options TEXT NOT NULL DEFAULT '{{}}',
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
_COLUMNS = (
    "seq, request_id, idempotency_key, client_ids, method, options, not_before_round, "
    "submitted_at, submitted_round, status, applied_round, applied_at, update_norm, reason"
)


class IdempotencyConflict(ValueError):
    """An idempotency key was reused for a different request."""


@dataclass(frozen=True)
class RequestRecord:
    """A stored request with what the queue knows beyond :class:`UnlearningRequest`.

    ``submitted_round`` is the round that was running when the request arrived
    (None if unknown), ``applied_at`` the time it took effect.
    """

    request: UnlearningRequest
    idempotency_key: str | None = None
    submitted_round: int | None = None
    applied_at: float | None = None


class SQLiteRequestQueue:
    """Unlearning requests in a SQLite database; safe to share between threads.

    Parameters
    ----------
    path : str | Path
        The database file; created (with its folder) if missing. Use
        :meth:`in_state_dir` for the file in a federation's state directory.

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        prepare_state_dir(self.path.parent)
        _create_private_database(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(
                f"{self.path}: SQLite could not switch to WAL mode (got {mode!r}); put "
                "state-dir on a local file system"
            )
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._transaction():
            # read inside the transaction: two processes opening a version-1 file migrate it once
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 1:
                migrated = _migrate_from_v1(self._db)
                logger.info("%s: migrated %s request(s) to schema version 2", self.path, migrated)
            elif version not in (0, SCHEMA_VERSION):
                raise RuntimeError(
                    f"{self.path} has schema version {version}, this fedforget reads versions "
                    f"1 and {SCHEMA_VERSION}: use a new state-dir or the fedforget that wrote it"
                )
            self._db.execute(_SCHEMA.format(table="requests"))
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> SQLiteRequestQueue:
        """Open the queue of a federation's state directory."""
        return cls(Path(state_dir) / DATABASE_FILE)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------ RequestQueue
    def submit(self, request: UnlearningRequest) -> UnlearningRequest:
        """Queue a request; an existing ``request_id`` returns the stored request."""
        record, _ = self.submit_record(request)
        return record.request

    def due(self, server_round: int) -> list[UnlearningRequest]:
        """Queued requests with ``not_before_round <= server_round``, oldest first."""
        rows = self._query(
            "SELECT * FROM requests WHERE status = 'queued' AND not_before_round <= ? ORDER BY seq",
            (server_round,),
        )
        return [_record(row).request for row in rows]

    def mark_step_applied(
        self, request_ids: Sequence[str], server_round: int, update_norm: float
    ) -> None:
        """Record that the queued requests of one step took effect, in one transaction."""
        applied_at = time.time()
        with self._transaction():
            changed = sum(
                self._db.execute(
                    "UPDATE requests SET status = 'applied', applied_round = ?, update_norm = ?, "
                    "applied_at = ? WHERE request_id = ? AND status = 'queued'",
                    (server_round, update_norm, applied_at, request_id),
                ).rowcount
                for request_id in request_ids
            )
        if changed != len(request_ids):
            logger.warning(
                "%s of the %s requests of the step applied in round %s were not queued: their "
                "outcome was not changed",
                len(request_ids) - changed,
                len(request_ids),
                server_round,
            )

    def mark_rejected(self, request_id: str, reason: str) -> None:
        """Record that a queued request was refused, and why."""
        self._set_outcome(
            request_id,
            "UPDATE requests SET status = 'rejected', reason = ? "
            "WHERE request_id = ? AND status = 'queued'",
            (reason, request_id),
        )

    def get(self, request_id: str) -> UnlearningRequest | None:
        """Return a request by id, or None."""
        record = self.record(request_id)
        return record.request if record else None

    def all(self) -> list[UnlearningRequest]:
        """Every request, oldest first."""
        return [record.request for record in self.records()]

    # ---------------------------------------------------------- extras
    def submit_record(
        self,
        request: UnlearningRequest,
        *,
        idempotency_key: str | None = None,
        submitted_round: int | None = None,
    ) -> tuple[RequestRecord, bool]:
        """Queue a request durably; return its record and whether it is new.

        A request whose ``request_id`` or ``idempotency_key`` is already stored
        is not queued again: the stored record comes back (with False).

        Raises
        ------
        IdempotencyConflict
            If ``idempotency_key`` belongs to a request for other clients, or
            with another method or other options.

        """
        queued = request.as_submitted()
        with self._transaction():
            existing = self._existing(queued.request_id, idempotency_key)
            if existing is not None:
                _check_same(existing, queued, idempotency_key)
                return existing, False
            self._db.execute(
                "INSERT INTO requests (request_id, idempotency_key, client_ids, method, options, "
                "not_before_round, submitted_at, submitted_round, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued')",
                (
                    queued.request_id,
                    idempotency_key,
                    json.dumps(list(queued.client_ids)),
                    queued.method,
                    json.dumps(queued.options, sort_keys=True),
                    queued.not_before_round,
                    queued.submitted_at,
                    submitted_round,
                ),
            )
        return RequestRecord(queued, idempotency_key, submitted_round), True

    def record(self, request_id: str) -> RequestRecord | None:
        """Return the stored record of a request, or None."""
        rows = self._query("SELECT * FROM requests WHERE request_id = ?", (request_id,))
        return _record(rows[0]) if rows else None

    def record_by_idempotency_key(self, key: str) -> RequestRecord | None:
        """Return the request an idempotency key created, or None."""
        rows = self._query("SELECT * FROM requests WHERE idempotency_key = ?", (key,))
        return _record(rows[0]) if rows else None

    def records(self, status: RequestStatus | None = None) -> list[RequestRecord]:
        """Return stored records (all, or those with ``status``), oldest first."""
        if status is None:
            rows = self._query("SELECT * FROM requests ORDER BY seq", ())
        else:
            rows = self._query("SELECT * FROM requests WHERE status = ? ORDER BY seq", (status,))
        return [_record(row) for row in rows]

    def applied(self) -> list[RequestRecord]:
        """Return applied requests in the order they took effect (the audit log)."""
        rows = self._query(
            "SELECT * FROM requests WHERE status = 'applied' "
            "ORDER BY applied_round, applied_at, seq",
            (),
        )
        return [_record(row) for row in rows]

    def carry_over(self, first_round: int) -> int:
        """Defer requests left queued by an earlier run to ``first_round`` or later.

        A restarted federation trains again from its initial model, so a request
        that an earlier run accepted can only take effect once the targets have
        trained in this run (methods act on their updates of *this* model). Return
        how many requests were carried over.
        """
        with self._transaction():
            return self._db.execute(
                "UPDATE requests SET not_before_round = ? "
                "WHERE status = 'queued' AND not_before_round < ?",
                (first_round, first_round),
            ).rowcount

    # --------------------------------------------------------- internals
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, parameters: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, parameters).fetchall())

    def _existing(self, request_id: str, idempotency_key: str | None) -> RequestRecord | None:
        """Return the record with this id or idempotency key (inside a transaction)."""
        row = self._db.execute(
            "SELECT * FROM requests WHERE request_id = ? OR "
            "(? IS NOT NULL AND idempotency_key = ?) ORDER BY seq LIMIT 1",
            (request_id, idempotency_key, idempotency_key),
        ).fetchone()
        return _record(row) if row is not None else None

    def _set_outcome(self, request_id: str, sql: str, parameters: tuple[Any, ...]) -> None:
        with self._transaction():
            changed = self._db.execute(sql, parameters).rowcount
        if not changed:
            record = self.record(request_id)
            state = record.request.status if record else "unknown"
            logger.warning(
                "Request %s is %s, not queued: its outcome was not changed", request_id, state
            )


def _create_private_database(path: Path) -> None:
    """Create the database 0600 before SQLite does (its -wal and -shm files take its mode)."""
    try:
        create_private_file(path, b"")
    except FileExistsError:
        for suffix in ("", "-wal", "-shm"):
            tighten_private_file(path.with_name(path.name + suffix))


def _record(row: sqlite3.Row) -> RequestRecord:
    request = UnlearningRequest(
        client_ids=tuple(json.loads(row["client_ids"])),
        method=row["method"],
        options=dict(json.loads(row["options"])),
        not_before_round=row["not_before_round"],
        request_id=row["request_id"],
        submitted_at=row["submitted_at"],
        status=cast(RequestStatus, row["status"]),
        applied_round=row["applied_round"],
        reason=row["reason"],
        update_norm=row["update_norm"],
    )
    return RequestRecord(request, row["idempotency_key"], row["submitted_round"], row["applied_at"])


def _check_same(existing: RequestRecord, new: UnlearningRequest, key: str | None) -> None:
    """Raise if an idempotency key is reused for a different request."""
    old = existing.request
    if key is None or existing.idempotency_key != key:
        return
    if (old.client_ids, old.method, old.options) != (new.client_ids, new.method, new.options):
        raise IdempotencyConflict(
            f"idempotency key {key!r} was used for request {old.request_id} (clients "
            f"{', '.join(old.client_ids)}); use a new key for a different request"
        )


def _migrate_from_v1(db: sqlite3.Connection) -> int:
    """Rewrite a version-1 ``requests`` table as version 2 (inside the caller's transaction).

    Every row keeps its ``seq`` (the queue's order), id, idempotency key,
    clients, rounds, status and outcome; ``mode``, ``eta`` and ``source``
    become ``method`` and ``options`` (:func:`_v1_method_and_options`).
    Return how many rows were migrated.
    """
    rows = db.execute("SELECT * FROM requests ORDER BY seq").fetchall()
    db.execute(_SCHEMA.format(table="requests_v2"))
    for row in rows:
        method, options = _v1_method_and_options(row["mode"], row["eta"], row["source"])
        db.execute(
            f"INSERT INTO requests_v2 ({_COLUMNS}) VALUES ({', '.join('?' * 14)})",
            (
                row["seq"],
                row["request_id"],
                row["idempotency_key"],
                row["client_ids"],
                method,
                json.dumps(options, sort_keys=True),
                row["not_before_round"],
                row["submitted_at"],
                row["submitted_round"],
                row["status"],
                row["applied_round"],
                row["applied_at"],
                row["update_norm"],
                row["reason"],
            ),
        )
    db.execute("DROP TABLE requests")
    db.execute("ALTER TABLE requests_v2 RENAME TO requests")
    return len(rows)


def _v1_method_and_options(
    mode: str | None, eta: float | None, source: str | None
) -> tuple[str | None, dict[str, OptionValue]]:
    """A version-1 request's PUF ``mode``, ``eta`` and ``source`` as a method and options.

    ``mode`` names the variant: ``"special"`` -> ``puf-special``; NULL stays
    NULL (the run's method, as before). ``eta`` is the scale of that variant:
    option ``eta-<mode>``. With NULL mode, the version-1 request meant "this eta,
    for whichever PUF variant the run uses", so it becomes both ``eta-special``
    and ``eta-regular`` (a PUF step reads only its own). ``source`` becomes
    option ``source``. (A run whose method is not PUF rejects the PUF options
    of such a request at its round boundary, with the reason.)
    """
    method = f"puf-{mode}" if mode else None
    options: dict[str, OptionValue] = {}
    if eta is not None:
        for variant in (mode,) if mode else ("special", "regular"):
            options[f"eta-{variant}"] = float(eta)
    if source is not None:
        options["source"] = source
    return method, options
