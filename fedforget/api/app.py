"""The unlearning API: a FastAPI app over the strategy's durable request queue.

Endpoints (all under ``/v1``, all require ``Authorization: Bearer <token>``):

``POST /v1/unlearning-requests``
    Queue a request to forget one or several clients (optional ``mode``,
    ``eta``, ``source`` overriding the run config; optional
    ``Idempotency-Key`` header). 202 with the request once it is committed to
    SQLite; it takes effect at the next round boundary.
``GET /v1/unlearning-requests/{request_id}``
    The request: queued, applied (with its round) or rejected (with why).
``GET /v1/status``
    Current round, clients seen / forgotten, stored pseudo-gradients
    (count and bytes), pending requests.
``GET /v1/audit-log``
    Applied unlearning: request id, round, clients, update norm, time. No
    client data.

The API only writes into the queue the strategy reads at each round boundary
(one request path). Refused calls change nothing: 401 (token), 409 (already
forgotten), 413 (body over the limit), 422 (malformed or invalid input,
unknown client).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedforget.api.auth import ApiToken
from fedforget.api.constants import API_PREFIX, MAX_BODY_BYTES, MAX_CLIENTS_PER_REQUEST
from fedforget.api.sqlite_queue import IdempotencyConflict, RequestRecord, SQLiteRequestQueue
from fedforget.config import FederationConfig
from fedforget.requests import UnlearningRequest, forgotten_clients
from fedforget.strategy import PUFStrategy

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ClientId = (
    Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    | Annotated[StrictInt, Field(ge=0, le=2**62)]
)


# ------------------------------------------------------------------ schemas
class SubmitBody(BaseModel):
    """A request to forget clients; options left out take the run's configuration."""

    model_config = ConfigDict(extra="forbid", strict=True)

    client_ids: list[ClientId] = Field(
        min_length=1,
        max_length=MAX_CLIENTS_PER_REQUEST,
        description='Client ids (partition ids) to forget together, e.g. ["7"] or [7, 3].',
    )
    mode: Literal["special", "regular"] | None = Field(None, description="PUF variant.")
    eta: float | None = Field(None, gt=0, allow_inf_nan=False, description="PUF step scale.")
    source: Literal["stored", "fresh"] | None = Field(
        None, description="Pseudo-gradient source: the stored latest one, or recomputed."
    )


class RequestView(BaseModel):
    """An unlearning request and its outcome."""

    request_id: str
    status: Literal["queued", "applied", "rejected"]
    client_ids: list[str]
    mode: str | None
    eta: float | None
    source: str | None
    submitted_at: float
    submitted_round: int | None = Field(description="Round running when it arrived.")
    applied_round: int | None = Field(description="Round it took effect in (if applied).")
    applied_at: float | None
    update_norm: float | None = Field(description="L2 norm of the applied model update.")
    reason: str = Field(description="Why it was rejected ('' otherwise).")


class PseudoGradientStats(BaseModel):
    """What the server stores for unlearning."""

    count: int
    bytes: int


class StatusView(BaseModel):
    """The federation as the strategy sees it now."""

    current_round: int
    num_server_rounds: int
    clients_seen: list[str]
    clients_forgotten: list[str]
    clients_excluded: list[str]
    pseudo_gradients: PseudoGradientStats
    pending_requests: list[str] = Field(description="Ids of queued requests, oldest first.")


class AuditEntry(BaseModel):
    """One applied request (requests applied in the same round were one PUF step)."""

    request_id: str
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
        409: "A client of the request has already been forgotten.",
        413: f"Body larger than {MAX_BODY_BYTES} bytes.",
        422: "Malformed JSON, wrong types, invalid values, or an unknown client.",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}


# ----------------------------------------------------------- federation view
class FederationView:
    """What the API reads from the running strategy (thread-safe snapshots)."""

    def __init__(self, strategy: PUFStrategy, config: FederationConfig) -> None:
        self.strategy = strategy
        self.config = config

    def clients_seen(self) -> set[str]:
        """Client ids the strategy has identified."""
        return set(self.strategy.node_clients.copy().values())

    def known_clients(self) -> set[str]:
        """Ids a request may name: the configured partitions and every client seen."""
        return {str(i) for i in range(self.config.num_partitions)} | self.clients_seen()

    def forgotten(self, queue: SQLiteRequestQueue) -> set[str]:
        """Forgotten clients: applied in this run or persisted from earlier ones."""
        return set(self.strategy.forgotten.copy()) | forgotten_clients(queue)

    def status(self, queue: SQLiteRequestQueue) -> StatusView:
        """Return the federation's status."""
        store = self.strategy.store
        return StatusView(
            current_round=self.strategy.current_round,
            num_server_rounds=self.config.num_server_rounds,
            clients_seen=sorted(self.clients_seen(), key=natural_order),
            clients_forgotten=sorted(self.forgotten(queue), key=natural_order),
            clients_excluded=sorted(self.strategy.excluded, key=natural_order),
            pseudo_gradients=PseudoGradientStats(
                count=len(store.client_ids()), bytes=store.nbytes()
            ),
            pending_requests=[r.request.request_id for r in queue.records("queued")],
        )


def natural_order(client_id: str) -> tuple[int, str]:
    """Sort key: numeric ids by value, then the others by name."""
    return (int(client_id), "") if client_id.isdigit() else (1 << 62, client_id)


def request_view(record: RequestRecord) -> RequestView:
    """Return the API's view of a stored request."""
    request = record.request
    return RequestView(
        request_id=request.request_id,
        status=request.status,
        client_ids=list(request.client_ids),
        mode=request.mode,
        eta=request.eta,
        source=request.source,
        submitted_at=request.submitted_at,
        submitted_round=record.submitted_round,
        applied_round=request.applied_round,
        applied_at=record.applied_at,
        update_norm=request.update_norm,
        reason=request.reason,
    )


# ------------------------------------------------------------- middleware
class BearerTokenMiddleware:
    """Refuse every HTTP call without the right bearer token, before anything is read."""

    def __init__(self, app: ASGIApp, token: ApiToken) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check ``Authorization: Bearer <token>``; answer 401 otherwise."""
        if scope["type"] == "http":
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
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes`` (declared or streamed) before parsing."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer the body up to the limit, then pass it on; 413 beyond it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        body = bytearray()
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
    """Build the unlearning API over ``queue`` (the queue ``federation.strategy`` reads).

    Parameters
    ----------
    queue : SQLiteRequestQueue
        The strategy's durable request queue.
    federation : FederationView
        The running strategy and its config (status, known clients).
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
        responses=_errors(401, 409, 413, 422),
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
        request = UnlearningRequest(client_ids, mode=body.mode, eta=body.eta, source=body.source)
        existing = queue_record_by_key(queue, idempotency_key)
        if existing is None:
            refuse_unknown_or_forgotten(client_ids, queue, federation)
        try:
            record, _ = queue.submit_record(
                request,
                idempotency_key=idempotency_key,
                submitted_round=federation.strategy.current_round,
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
        summary="The federation's round, clients, stored pseudo-gradients and pending requests",
    )
    def read_status() -> StatusView:
        return federation.status(queue)

    @app.get(
        f"{API_PREFIX}/audit-log",
        response_model=AuditLog,
        responses=_errors(401),
        summary="Applied unlearning: request, round, clients, update norm, time",
    )
    def audit_log() -> AuditLog:
        entries = [
            AuditEntry(
                request_id=r.request.request_id,
                server_round=r.request.applied_round or 0,
                client_ids=list(r.request.client_ids),
                update_norm=r.request.update_norm or 0.0,
                applied_at=r.applied_at or 0.0,
            )
            for r in queue.applied()
        ]
        return AuditLog(entries=entries)

    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(BearerTokenMiddleware, token=token)  # outermost: checked first
    return app


def queue_record_by_key(queue: SQLiteRequestQueue, key: str | None) -> RequestRecord | None:
    """Return the request an idempotency key created, if any."""
    return queue.record_by_idempotency_key(key) if key else None


def refuse_unknown_or_forgotten(
    client_ids: tuple[str, ...], queue: SQLiteRequestQueue, federation: FederationView
) -> None:
    """Raise 422 for an unknown or excluded client, 409 for a forgotten one."""
    known = federation.known_clients()
    excluded = federation.strategy.excluded
    forgotten = federation.forgotten(queue)
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


def jsonable(value: Any) -> Any:
    """Make validation error details JSON-safe (they may hold bytes or exceptions)."""
    return json.loads(json.dumps(value, default=str))
