"""Serve the unlearning API with uvicorn in a background thread of the ServerApp.

:func:`live_api` is what :func:`fedforget.federated.federation.run_federation` wraps the
round loop in: with ``api-enabled=true`` the API answers while rounds run and
stops when the run ends. The address it listens on (``api-port=0`` picks a
free port) is written to ``<state-dir>/api.json`` so that ``fedforget
unlearn --state-dir DIR`` finds it (mode 0600); the file is removed on a clean stop.

Connections are bounded so that a local user without the token cannot lock
the token holder out (:class:`GuardedH11Protocol`, limits in
:mod:`fedforget.api.constants`): a connection must send a complete request
head within ``REQUEST_HEAD_TIMEOUT_S`` of opening or of its previous
response, and a body within ``REQUEST_BODY_TIMEOUT_S``; it must take its
responses (a connection that reads nothing for ``WRITE_TIMEOUT_S`` once its
send buffer is full is aborted); idle keep-alive connections close after
``KEEP_ALIVE_TIMEOUT_S``; at most ``MAX_CONNECTIONS`` are open, and a new
one beyond that evicts another (closing, stalled, without an authorised
request, then the oldest authorised request), never itself, so requests
sent promptly are always served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from fedforget.api.app import FederationView, create_app
from fedforget.api.auth import ApiToken, resolve_token
from fedforget.api.constants import (
    AUTHORISED_SCOPE_KEY,
    ENDPOINT_FILE,
    KEEP_ALIVE_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_REQUESTS_IN_PROGRESS,
    REQUEST_HEAD_TIMEOUT_S,
    WRITE_TIMEOUT_S,
)
from fedforget.api.sqlite_queue import SQLiteRequestQueue
from fedforget.api.state_dir import prepare_state_dir, write_private_file
from fedforget.config import FederationConfig

if TYPE_CHECKING:  # the API serves the federation and imports none of it at run time
    from fedforget.federated.strategy import UnlearningStrategy

START_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 5
WATCH_INTERVAL_S = 0.5
"""How often each connection checks its write deadline."""

logger = logging.getLogger(__name__)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 connection with deadlines for reading and writing and a cap on connections.

    uvicorn times out idle keep-alive connections only after a response, never
    a connection that has not sent a complete request, and never a response
    the client does not read: such connections would stay open for good. Here

    * a connection must complete a request head within
      ``REQUEST_HEAD_TIMEOUT_S`` of opening (or of its previous response);
    * a response must be taken: a connection whose writes stay paused (the
      client reads nothing, e.g. pipelined requests on a tiny receive
      buffer), or that stays closing with data unsent, for
      ``WRITE_TIMEOUT_S`` is aborted (:meth:`_watch`, every
      ``WATCH_INTERVAL_S``);
    * at most ``MAX_CONNECTIONS`` are open: a new one beyond it evicts
      another, never itself (:meth:`_enforce_connection_cap`).
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        """Start the deadlines; make room if the connections are at the cap."""
        super().connection_made(transport)  # type: ignore[arg-type]
        now = time.monotonic()
        self.vouched_at = now
        self.busy_since = now
        self.stalled_since: float | None = None
        self.closing_since: float | None = None
        self.aborted = False
        self._cycle_seen: RequestResponseCycle | None = None
        self._head_deadline: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = self.loop.call_later(
            WATCH_INTERVAL_S, self._watch
        )
        self._await_request_head()
        self._enforce_connection_cap()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the timers with the connection."""
        for timer in (self._head_deadline, self._watchdog):
            if timer is not None:
                timer.cancel()
        self._watchdog = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse as uvicorn does; note when a new request begins."""
        super().data_received(data)
        self._note_request()

    def on_response_complete(self) -> None:
        """After a response the next request head is due within the deadline too."""
        if self._authorised():
            self.vouched_at = time.monotonic()
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_request_head()
        self._note_request()  # a pipelined request may have begun at once

    def pause_writing(self) -> None:
        """The client is not taking what was sent: the write deadline starts."""
        super().pause_writing()
        if self.stalled_since is None:
            self.stalled_since = time.monotonic()

    def resume_writing(self) -> None:
        """The client took enough of what was sent: no write deadline."""
        super().resume_writing()
        self.stalled_since = None

    def is_idle(self) -> bool:
        """No request under way: nothing sent yet, a partial head, or a finished response."""
        return not self.transport.is_closing() and (
            self.cycle is None or self.cycle.response_complete
        )

    def abort(self) -> None:
        """Close the connection at once, dropping what the client has not taken."""
        self.aborted = True
        self.transport.abort()

    def eviction_rank(self) -> tuple[int, float]:
        """Which connection the cap closes first: the lowest rank, then the longest in it.

        0: closing (its owner is gone or it was told to go), since when; 1:
        stalled writer (the client takes nothing), since when; 2: no
        authorised request under way (idle, a partial head, a 401, the public
        page), since its last authorised response or its opening; 3: an
        authorised request under way, since it began. A client without the
        token therefore evicts its own older connections before the token
        holder's new one, and never the holder's request.
        """
        if self.transport.is_closing():
            return 0, self.closing_since or time.monotonic()
        if self.stalled_since is not None:
            return 1, self.stalled_since
        if not self.is_idle() and self._authorised():
            return 3, self.busy_since
        return 2, self.vouched_at

    def _authorised(self) -> bool:
        """Whether the current (or just answered) request carried the token."""
        return self.cycle is not None and bool(self.cycle.scope.get(AUTHORISED_SCOPE_KEY))

    def _note_request(self) -> None:
        if self.cycle is not None and self.cycle is not self._cycle_seen:
            self._cycle_seen = self.cycle
            self.busy_since = time.monotonic()

    def _await_request_head(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(
            REQUEST_HEAD_TIMEOUT_S, self._head_overdue, self.cycle
        )

    def _head_overdue(self, cycle: RequestResponseCycle | None) -> None:
        # no request began since the deadline was set (uvicorn replaces cycle per request)
        if self.cycle is cycle and self.is_idle():
            self.transport.close()

    def _watch(self) -> None:
        """Abort a connection that has not taken its data for ``WRITE_TIMEOUT_S``."""
        now = time.monotonic()
        if self.transport.is_closing() and self.closing_since is None:
            self.closing_since = now
        overdue = [
            since
            for since in (self.stalled_since, self.closing_since)
            if since is not None and now - since >= WRITE_TIMEOUT_S
        ]
        if overdue and not self.aborted:
            self.abort()
        self._watchdog = self.loop.call_later(WATCH_INTERVAL_S, self._watch)

    def _enforce_connection_cap(self) -> None:
        """Beyond ``MAX_CONNECTIONS``, abort the others of the lowest :meth:`eviction_rank`.

        Connections still closing count (their sockets are open until their
        data is sent): a flood of responses never read cannot pile them up.
        The new connection itself is never the one closed, so the token
        holder's request always gets in.
        """
        others = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol) and c is not self and not c.aborted
        ]
        excess = len(others) + 1 - MAX_CONNECTIONS
        if excess > 0:
            for victim in sorted(others, key=GuardedH11Protocol.eviction_rank)[:excess]:
                victim.abort()


class ApiServer:
    """The API of one federation, served by uvicorn in a daemon thread.

    Parameters
    ----------
    queue : SQLiteRequestQueue
        The strategy's durable request queue.
    federation : FederationView
        The strategy's status snapshots and the config the API reports on.
    token : ApiToken
        The bearer token every call must carry.
    host : str (default: "127.0.0.1")
        Address to listen on.
    port : int (default: 0)
        Port to listen on; 0 picks a free one (see :attr:`url`).

    """

    def __init__(
        self,
        queue: SQLiteRequestQueue,
        federation: FederationView,
        token: ApiToken,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.host = host
        self._socket = _listen(host, port)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(queue, federation, token),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            http=GuardedH11Protocol,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S,
            limit_concurrency=MAX_REQUESTS_IN_PROGRESS,
            timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="fedforget-api", daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the API."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections the server holds now (those closing included, until their socket closes)."""
        return len(self._server.server_state.connections)

    def start(self) -> ApiServer:
        """Start serving; return once the API accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the unlearning API did not start on {self.url}; see the log")
            time.sleep(0.01)
        logger.info("Unlearning API on %s (token from %s)", self.url, self.token.origin)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=START_TIMEOUT_S)
        self._socket.close()

    def _serve(self) -> None:
        self._server.run(sockets=[self._socket])


@contextlib.contextmanager
def live_api(config: FederationConfig, strategy: UnlearningStrategy) -> Iterator[ApiServer | None]:
    """Serve the API of ``strategy`` while the block runs (nothing unless ``api-enabled``).

    The API writes into ``strategy.requests`` and reads only ``strategy.status``.
    """
    if not config.api_enabled:
        yield None
        return
    if not isinstance(strategy.requests, SQLiteRequestQueue):
        raise TypeError(
            "the unlearning API needs the strategy's durable queue: build the strategy with "
            "fedforget.federated.federation.request_queue(config) (state-dir set)"
        )
    token = resolve_token(config)
    federation = FederationView(lambda: strategy.status, config)
    server = ApiServer(
        strategy.requests, federation, token, config.api_host, config.api_port
    ).start()
    endpoint = prepare_state_dir(Path(config.state_dir)) / ENDPOINT_FILE
    write_endpoint(endpoint, server)
    if config.progress:
        print(f"unlearning API on {server.url} (token: {token.origin})", flush=True)
    try:
        yield server
    finally:
        endpoint.unlink(missing_ok=True)
        server.stop()


def write_endpoint(path: Path, server: ApiServer) -> None:
    """Write where the API listens (never the token), atomically, mode 0600."""
    record = {"url": server.url, "host": server.host, "port": server.port, "pid": os.getpid()}
    write_private_file(path, json.dumps(record, indent=2))


def _listen(host: str, port: int) -> socket.socket:
    """Open a listening socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise RuntimeError(
            f"cannot listen on {host}:{port} for the unlearning API ({error.strerror}): choose "
            "another api-port, or api-port=0 for a free one"
        ) from error
    sock.listen(64)
    sock.set_inheritable(True)
    return sock
