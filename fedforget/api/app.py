"""The unlearning API: a FastAPI app over the strategy's durable request queue.

Endpoints (all under ``/v1``, all require ``Authorization: Bearer <token>``):

``POST /v1/unlearning-requests``
    Queue a request to forget one or several clients, optionally with an
    unlearning ``method`` (a registry name; the run's ``method`` if left out)
    and ``options`` overriding that method's settings (keys of its config
    table, e.g. ``{"eta-regular": 10}`` for ``puf-regular``); optional
    ``Idempotency-Key`` header. 202 with the request once it is committed to
    SQLite; it takes effect at the next round boundary.
``GET /v1/unlearning-requests/{request_id}``
    The request: queued, applied (with its round) or rejected (with why).
``GET /v1/status``
    Current round, the run's method and the methods whose history it keeps,
    clients seen / forgotten / excluded, what the server stores for
    unlearning (clients and bytes), pending requests, the test score after
    each evaluated round.
``GET /v1/audit-log``
    Applied unlearning: request id, method, round, clients, update norm,
    time. No client data.

``GET /view`` (outside the schema) is a read-only HTML page of the federation
that reads these endpoints with the token the user gives it; the page itself
holds no data and is the one path served without the token
(:mod:`fedforget.api.view`).

The API only writes into the queue the strategy reads at each round boundary
(one request path) and reads only the strategy's status snapshot
(:class:`~fedforget.federated.records.FederationStatus`). Refused calls change
nothing: 401 (token), 408 (body not sent within the time limit), 409 (already
forgotten, or no client would be left to recover with), 413 (body over the
limit), 422 (malformed or invalid input, unknown client, unknown method or
option, a setting out of its bounds such as ``eta-special`` above
``puf.eta-max`` or any setting above the upper bound its method declares in
``limits``, or a setting only the run's configuration may change). What
only a round boundary can tell (e.g. whether a stored update exists, or the
run keeps the history a method needs) is checked there: the request is then
``rejected`` with the reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedforget.api.auth import ApiToken
from fedforget.api.constants import (
    API_PREFIX,
    AUTHORISED_SCOPE_KEY,
    MAX_BODY_BYTES,
    MAX_CLIENTS_PER_REQUEST,
    MAX_OPTION_CHARS,
    MAX_OPTIONS_PER_REQUEST,
    REQUEST_BODY_TIMEOUT_S,
)
from fedforget.api.sqlite_queue import IdempotencyConflict, RequestRecord, SQLiteRequestQueue
from fedforget.api.view import PAGE, PAGE_HEADERS, VIEW_PATH
from fedforget.config import FederationConfig
from fedforget.methods import method_class, method_names
from fedforget.methods.base import request_settings
from fedforget.protocol import natural_order
from fedforget.requests import OptionValue, UnlearningRequest, forgotten_clients

if TYPE_CHECKING:  # the API serves the federation and imports none of it at run time
    from fedforget.federated.records import FederationStatus

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

StatusSource = Callable[[], "FederationStatus"]
"""Returns the strategy's latest status snapshot (``lambda: strategy.status``)."""

ClientId = (
    Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    | Annotated[StrictInt, Field(ge=0, le=2**62)]
)
MethodName = Annotated[
    StrictStr, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.\-]*$")
]
OptionKey = Annotated[
    StrictStr, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]*$")
]
# bool before int: JSON true is a bool, never the number 1
OptionInput = (
    StrictBool
    | Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
    | Annotated[StrictStr, Field(max_length=MAX_OPTION_CHARS)]
)


# ------------------------------------------------------------------ schemas
class SubmitBody(BaseModel):
    """A request to forget clients; what it leaves out takes the run's configuration."""

    model_config = ConfigDict(extra="forbid", strict=True)

    client_ids: list[ClientId] = Field(
        min_length=1,
        max_length=MAX_CLIENTS_PER_REQUEST,
        description='Client ids (partition ids) to forget together, e.g. ["7"] or [7, 3].',
    )
    method: MethodName | None = Field(
        None,
        description='Unlearning method (registry name, e.g. "puf-regular"); the run\'s '
        "method if left out.",
    )
    options: dict[OptionKey, OptionInput] = Field(
        default_factory=dict,
        max_length=MAX_OPTIONS_PER_REQUEST,
        description="Overrides of the method's settings (keys of its config table), e.g. "
        '{"eta-regular": 10}; the run\'s settings otherwise.',
    )


class RequestView(BaseModel):
    """An unlearning request and its outcome."""

    request_id: str
    status: Literal["queued", "applied", "rejected"]
    client_ids: list[str]
    method: str | None = Field(description="Unlearning method; null: the run's method.")
    options: dict[str, OptionValue] = Field(description="Overrides of the method's settings.")
    submitted_at: float
    submitted_round: int | None = Field(description="Round running when it arrived.")
    applied_round: int | None = Field(description="Round it took effect in (if applied).")
    applied_at: float | None
    update_norm: float | None = Field(description="L2 norm of the applied model update.")
    reason: str = Field(description="Why it was rejected ('' otherwise).")


class ServerStorage(BaseModel):
    """What the kept methods store on the server for unlearning (e.g. PUF's updates)."""

    clients: int = Field(description="Clients something is stored of.")
    bytes: int


class RoundScore(BaseModel):
    """The global model's test score after a round (round 0: the initial model)."""

    server_round: int
    value: float


class StatusView(BaseModel):
    """The federation as the strategy sees it now."""

    current_round: int
    num_server_rounds: int
    method: str = Field(description="The run's method: requests that name none use it.")
    methods_kept: list[str] = Field(description="Methods whose history the run keeps.")
    clients_seen: list[str]
    clients_forgotten: list[str]
    clients_excluded: list[str]
    server_storage: ServerStorage
    pending_requests: list[str] = Field(description="Ids of queued requests, oldest first.")
    test_metric: str = Field(description='Metric of test_scores, e.g. "accuracy" or "dice".')
    test_scores: list[RoundScore] = Field(
        description="Server-side test score after each evaluated round, oldest first."
    )


class AuditEntry(BaseModel):
    """One applied request (requests applied in the same round were one step)."""

    request_id: str
    method: str | None = Field(description="The method applied; null: the run's method.")
    server_round: int
    client_ids: list[str]
    update_norm: float
    applied_at: float


class AuditLog(BaseModel):
    """Applied unlearning, in the order it took effect."""

    entries: list[AuditEntry]


class ErrorBody(BaseModel):
    """Why a call was refused."""

    detail: str
    errors: list[dict[str, Any]] | None = None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "Missing or wrong bearer token.",
        404: "No such request.",
        408: f"The body was not received within {REQUEST_BODY_TIMEOUT_S:g} s.",
        409: (
            "A client of the request has already been forgotten, or forgetting them would "
            "leave no client to recover with."
        ),
        413: f"Body larger than {MAX_BODY_BYTES} bytes.",
        422: (
            "Malformed JSON, wrong types, invalid values, an unknown client, or an unknown "
            "method or option."
        ),
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}


# ----------------------------------------------------------- federation view
class FederationView:
    """What the API knows of the federation: the run config and the strategy's status.

    Parameters
    ----------
    read_status : StatusSource
        Returns the strategy's latest :class:`FederationStatus` (a frozen
        snapshot the strategy replaces at round boundaries: safe to read from
        the API's thread).
    config : FederationConfig
        The run's configuration (partitions, rounds, method settings).

    """

    def __init__(self, read_status: StatusSource, config: FederationConfig) -> None:
        self.read_status = read_status
        self.config = config

    def known_clients(self, snapshot: FederationStatus) -> set[str]:
        """Ids a request may name: the configured partitions and every client seen."""
        return {str(i) for i in range(self.config.num_partitions)} | set(snapshot.clients_seen)

    def forgotten(self, queue: SQLiteRequestQueue, snapshot: FederationStatus) -> set[str]:
        """Forgotten clients: applied in this run or persisted from earlier ones."""
        return set(snapshot.clients_forgotten) | forgotten_clients(queue)

    def status(self, queue: SQLiteRequestQueue) -> StatusView:
        """Return the federation's status."""
        snapshot = self.read_status()
        return StatusView(
            current_round=snapshot.current_round,
            num_server_rounds=self.config.num_server_rounds,
            method=snapshot.method or self.config.method,
            methods_kept=list(snapshot.methods_kept),
            clients_seen=list(snapshot.clients_seen),
            clients_forgotten=sorted(self.forgotten(queue, snapshot), key=natural_order),
            clients_excluded=list(snapshot.clients_excluded),
            server_storage=ServerStorage(
                clients=snapshot.stored_clients, bytes=snapshot.stored_bytes
            ),
            pending_requests=[r.request.request_id for r in queue.records("queued")],
            test_metric=snapshot.test_metric,
            test_scores=[RoundScore(server_round=r, value=v) for r, v in snapshot.test_scores],
        )

    def checked_options(
        self, method: str, options: dict[str, OptionValue]
    ) -> dict[str, OptionValue]:
        """``options`` as ``method`` takes them (typed as its settings), or 422 with why.

        The method must be registered; each option must be a key of its config
        table with a value of the key's type and not one of the settings only
        the run's configuration may change (the method's ``run_only``,
        e.g. PUF's bound ``eta-max``), and the run's settings with the options
        applied must pass the method's own check (e.g. eta within the bound).
        """
        if method not in method_names():
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"unknown unlearning method {method!r}: registered methods are "
                f"{', '.join(method_names())}",
            )
        cls = method_class(method)
        try:
            settings = request_settings(cls, self.config.settings_of(cls.table), options)
        except ValueError as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
        return {key: settings[key] for key in options}


def request_view(record: RequestRecord) -> RequestView:
    """Return the API's view of a stored request."""
    request = record.request
    return RequestView(
        request_id=request.request_id,
        status=request.status,
        client_ids=list(request.client_ids),
        method=request.method,
        options=dict(request.options),
        submitted_at=request.submitted_at,
        submitted_round=record.submitted_round,
        applied_round=request.applied_round,
        applied_at=record.applied_at,
        update_norm=request.update_norm,
        reason=request.reason,
    )


# ------------------------------------------------------------- middleware
class BearerTokenMiddleware:
    """Refuse every HTTP call without the right bearer token, before anything is read.

    ``public_paths`` are answered to a ``GET`` without the token: only pages
    that hold no data (the live view's constant document) may be listed.
    """

    def __init__(
        self, app: ASGIApp, token: ApiToken, public_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.token = token
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check ``Authorization: Bearer <token>``; answer 401 otherwise."""
        public = scope.get("method") == "GET" and scope.get("path") in self.public_paths
        if scope["type"] == "http" and not public:
            headers = dict(scope.get("headers") or [])
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, presented = authorization.partition(" ")
            if scheme.lower() != "bearer" or not self.token.matches(presented.strip()):
                await _send_error(
                    send,
                    status.HTTP_401_UNAUTHORIZED,
                    "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                    "with the token of api-token-file, the api-token-env variable, or "
                    "<state-dir>/api-token",
                    {"www-authenticate": "Bearer"},
                )
                return
            # the connection cap closes connections without an authorised request last
            scope[AUTHORISED_SCOPE_KEY] = True
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes`` (declared or streamed) before parsing."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout_s: float = REQUEST_BODY_TIMEOUT_S
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer the body up to the limit, then pass it on; 413 beyond it, 408 if too slow."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        body = bytearray()
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body.extend(message.get("body", b""))
                    if len(body) > self.max_bytes:
                        await self._too_large(send)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            # a half-sent body must not hold the connection: answer and let it close
            await _send_error(
                send,
                status.HTTP_408_REQUEST_TIMEOUT,
                f"request body not received within {self.timeout_s:g} s: send it at once",
                {"connection": "close"},
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await _send_error(
            send,
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"request body larger than {self.max_bytes} bytes: an unlearning request is a "
            "short list of client ids",
        )


async def _send_error(
    send: Send, code: int, detail: str, extra_headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -------------------------------------------------------------------- app
def create_app(
    queue: SQLiteRequestQueue,
    federation: FederationView,
    token: ApiToken,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """Build the unlearning API over ``queue`` (the queue the strategy reads).

    Parameters
    ----------
    queue : SQLiteRequestQueue
        The strategy's durable request queue.
    federation : FederationView
        The strategy's status snapshots and the run config.
    token : ApiToken
        The bearer token every call must carry.
    max_body_bytes : int (default: 8192)
        Larger bodies are refused with 413.

    """
    app = FastAPI(
        title="fedforget unlearning API",
        version="1",
        description=__doc__,
        # The middleware enforces the token; this only documents it in the schema.
        dependencies=[Depends(HTTPBearer(auto_error=False))],
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_input(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in error.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            content=jsonable({"detail": f"invalid request: {summary}", "errors": errors}),
        )

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 to a body it cannot decode (not UTF-8): malformed input is 422 here
        malformed = error.status_code == status.HTTP_400_BAD_REQUEST
        code = status.HTTP_422_UNPROCESSABLE_CONTENT if malformed else error.status_code
        detail = (
            f"malformed request body ({error.detail}): send a UTF-8 JSON object"
            if malformed
            else str(error.detail)
        )
        return JSONResponse({"detail": detail}, status_code=code, headers=error.headers)

    @app.post(
        f"{API_PREFIX}/unlearning-requests",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=RequestView,
        responses=_errors(401, 408, 409, 413, 422),
        summary="Ask the federation to forget clients at the next round boundary",
    )
    def submit(
        body: SubmitBody,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=200,
                description="Resubmitting with the same key returns the same request.",
            ),
        ] = None,
    ) -> RequestView:
        client_ids = tuple(dict.fromkeys(str(c) for c in body.client_ids))
        # the request names its method from the start: the one its options were checked for
        method = body.method or federation.config.method
        options = federation.checked_options(method, dict(body.options))
        request = UnlearningRequest(client_ids, method=method, options=options)
        snapshot = federation.read_status()
        existing = queue_record_by_key(queue, idempotency_key)
        if existing is None:
            refuse_unknown_or_forgotten(client_ids, queue, federation, snapshot)
        try:
            record, _ = queue.submit_record(
                request,
                idempotency_key=idempotency_key,
                submitted_round=snapshot.current_round,
            )
        except IdempotencyConflict as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
        response.headers["Location"] = (
            f"{API_PREFIX}/unlearning-requests/{record.request.request_id}"
        )
        return request_view(record)

    @app.get(
        f"{API_PREFIX}/unlearning-requests/{{request_id}}",
        response_model=RequestView,
        responses=_errors(401, 404, 422),
        summary="Read a request: queued, applied (and when) or rejected (and why)",
    )
    def read_request(request_id: Annotated[str, Path(max_length=200)]) -> RequestView:
        record = queue.record(request_id)
        if record is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"no unlearning request {request_id!r}: use the request_id that the submit "
                "call returned",
            )
        return request_view(record)

    @app.get(
        f"{API_PREFIX}/status",
        response_model=StatusView,
        responses=_errors(401),
        summary="The federation's round, methods, clients, server storage and pending requests",
    )
    def read_status() -> StatusView:
        return federation.status(queue)

    @app.get(
        f"{API_PREFIX}/audit-log",
        response_model=AuditLog,
        responses=_errors(401),
        summary="Applied unlearning: request, method, round, clients, update norm, time",
    )
    def audit_log() -> AuditLog:
        entries = [
            AuditEntry(
                request_id=r.request.request_id,
                method=r.request.method,
                server_round=r.request.applied_round or 0,
                client_ids=list(r.request.client_ids),
                update_norm=r.request.update_norm or 0.0,
                applied_at=r.applied_at or 0.0,
            )
            for r in queue.applied()
        ]
        return AuditLog(entries=entries)

    @app.get(VIEW_PATH, response_class=HTMLResponse, include_in_schema=False)
    async def live_view() -> HTMLResponse:
        # constant and data-free: served without the token (see fedforget.api.view); async, so
        # a flood of requests for it never waits for (or holds) the threads the API's calls use
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    # outermost: checked first
    app.add_middleware(BearerTokenMiddleware, token=token, public_paths=frozenset({VIEW_PATH}))
    return app


def queue_record_by_key(queue: SQLiteRequestQueue, key: str | None) -> RequestRecord | None:
    """Return the request an idempotency key created, if any."""
    return queue.record_by_idempotency_key(key) if key else None


def refuse_unknown_or_forgotten(
    client_ids: tuple[str, ...],
    queue: SQLiteRequestQueue,
    federation: FederationView,
    snapshot: FederationStatus,
) -> None:
    """Raise 422 for an unknown or excluded client, 409 for a forgotten one or none left.

    None left: the clients known now (the configured partitions and those
    seen), less the forgotten, the excluded and the request's own, would be
    empty, so no client would be left to recover with (the round boundary
    would refuse it; refusing now tells the caller at once).
    """
    known = federation.known_clients(snapshot)
    excluded = set(snapshot.clients_excluded)
    forgotten = federation.forgotten(queue, snapshot)
    for client_id in client_ids:
        if client_id not in known:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"unknown client {client_id}: client ids are the partition ids "
                f"0..{federation.config.num_partitions - 1} and the ids of connected clients",
            )
        if client_id in excluded:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"client {client_id} is excluded from this federation: it never trained",
            )
        if client_id in forgotten:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"client {client_id} has already been forgotten: see GET {API_PREFIX}/audit-log",
            )
    if not known - forgotten - excluded - set(client_ids):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"forgetting client(s) {', '.join(client_ids)} would leave no client to recover "
            f"with: of the clients {', '.join(sorted(known, key=natural_order))}, the others "
            "are forgotten or excluded",
        )


def jsonable(value: Any) -> Any:
    """Make validation error details JSON-safe (they may hold bytes or exceptions)."""
    return json.loads(json.dumps(value, default=str))
