"""Unlearning requests: the one path by which "forget these clients" reaches a method.

A request names one or several clients, optionally the unlearning method (a
registry name; the run's ``method`` if None) and options that override that
method's settings (keys of its config table, e.g. ``{"eta-special": 3.0}``
for ``puf-special``). Requests wait in a queue; at each round boundary the
strategy takes every request that is due, applies the compatible ones (same
method and settings) together as one concurrent step, and records the step's
requests as applied all at once (one transaction in a durable queue: a crash
leaves all of them applied or none) or each as rejected (with the reason).

Simulations put the configured request (``unlearn-at-round``,
``unlearn-clients``) into the queue before training, with ``not_before_round``
set; a live API feeds the same queue while rounds run.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

OptionValue = int | float | str | bool
RequestStatus = Literal["queued", "applied", "rejected"]


class RequestNotApplied(RuntimeError):
    """A run's configured request ended without being applied; the message gives the reason."""


@dataclass(frozen=True)
class UnlearningRequest:
    """A request to forget ``client_ids`` together.

    ``method`` None takes the run's method; ``options`` override the method's
    settings. ``not_before_round`` delays the request until that round's boundary.
    """

    client_ids: tuple[str, ...]
    method: str | None = None
    options: dict[str, OptionValue] = field(default_factory=dict)
    not_before_round: int = 0
    request_id: str = ""
    submitted_at: float = 0.0
    status: RequestStatus = "queued"
    applied_round: int | None = None
    reason: str = ""
    update_norm: float | None = None

    def as_submitted(self) -> UnlearningRequest:
        """The request as a queue stores it: an id, a submission time, status queued."""
        if not self.client_ids:
            raise ValueError("an unlearning request must name at least one client")
        return replace(
            self,
            request_id=self.request_id or uuid.uuid4().hex,
            submitted_at=self.submitted_at or time.time(),
            status="queued",
            applied_round=None,
            reason="",
            update_norm=None,
        )


class RequestQueue(Protocol):
    """What the strategy needs from a queue of unlearning requests."""

    def submit(self, request: UnlearningRequest) -> UnlearningRequest:
        """Queue a request; return it with its id and submission time set."""

    def due(self, server_round: int) -> list[UnlearningRequest]:
        """Queued requests that may take effect in ``server_round``, oldest first."""

    def mark_step_applied(
        self, request_ids: Sequence[str], server_round: int, update_norm: float
    ) -> None:
        """Record that the requests of one step took effect in ``server_round``, all at once.

        Only requests still queued change; a durable queue commits them in one
        transaction, so a crash leaves either all of them applied or none.
        """

    def mark_rejected(self, request_id: str, reason: str) -> None:
        """Record that a request was refused, and why."""

    def get(self, request_id: str) -> UnlearningRequest | None:
        """A request by id, or None."""

    def all(self) -> list[UnlearningRequest]:
        """Every request, oldest first."""


class InMemoryRequestQueue:
    """A thread-safe request queue held in memory (simulations, tests)."""

    def __init__(self, requests: Iterable[UnlearningRequest] = ()) -> None:
        self._requests: dict[str, UnlearningRequest] = {}
        self._lock = threading.Lock()
        for request in requests:
            self.submit(request)

    def submit(self, request: UnlearningRequest) -> UnlearningRequest:
        """Queue a request; return it with its id and submission time set."""
        queued = request.as_submitted()
        with self._lock:
            if queued.request_id in self._requests:
                return self._requests[queued.request_id]
            self._requests[queued.request_id] = queued
        return queued

    def due(self, server_round: int) -> list[UnlearningRequest]:
        """Queued requests with ``not_before_round <= server_round``, oldest first."""
        with self._lock:
            return [
                r
                for r in self._requests.values()
                if r.status == "queued" and r.not_before_round <= server_round
            ]

    def mark_step_applied(
        self, request_ids: Sequence[str], server_round: int, update_norm: float
    ) -> None:
        """Record that the (queued) requests of one step took effect in ``server_round``."""
        with self._lock:
            for request_id in request_ids:
                request = self._requests[request_id]
                if request.status == "queued":
                    self._requests[request_id] = replace(
                        request,
                        status="applied",
                        applied_round=server_round,
                        update_norm=update_norm,
                    )

    def mark_rejected(self, request_id: str, reason: str) -> None:
        """Record that a request was refused, and why."""
        self._update(request_id, status="rejected", reason=reason)

    def get(self, request_id: str) -> UnlearningRequest | None:
        """A request by id, or None."""
        with self._lock:
            return self._requests.get(request_id)

    def all(self) -> list[UnlearningRequest]:
        """Every request, oldest first."""
        with self._lock:
            return list(self._requests.values())

    def _update(self, request_id: str, **changes: object) -> None:
        with self._lock:
            self._requests[request_id] = replace(self._requests[request_id], **changes)  # type: ignore[arg-type]


def forgotten_clients(queue: RequestQueue) -> set[str]:
    """Clients forgotten by the applied requests of ``queue``.

    A durable queue thus carries the forgotten set across a server restart:
    the strategy is seeded with it and never samples those clients again.
    """
    return {
        client
        for request in queue.all()
        if request.status == "applied"
        for client in request.client_ids
    }
