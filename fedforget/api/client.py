"""A small Python client of the unlearning API (what ``fedforget unlearn`` uses).

>>> client = UnlearningClient.from_state_dir("state")        # doctest: +SKIP
>>> request = client.submit(["7"])                            # doctest: +SKIP
>>> client.submit(["3"], "puf-regular", {"eta-regular": 10})  # doctest: +SKIP
>>> client.wait(request["request_id"])["applied_round"]       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from fedforget.api.constants import ENDPOINT_FILE, TOKEN_ENV, TOKEN_FILE
from fedforget.requests import OptionValue


class ApiError(RuntimeError):
    """The API refused a call (``status_code``) or could not be reached (0)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{status_code}: {detail}" if status_code else detail)
        self.status_code = status_code
        self.detail = detail


class UnlearningClient:
    """Calls the unlearning API of a running federation.

    Parameters
    ----------
    url : str
        Base URL, e.g. ``http://127.0.0.1:8765``.
    token : str
        The API's bearer token.
    timeout : float (default: 10.0)
        Seconds per HTTP call.

    Raises
    ------
    ApiError
        If ``token`` is not printable ASCII (no server accepts such a token).

    """

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        if not token.isascii() or not token.isprintable() or " " in token:
            raise ApiError(
                0,
                "the API token must be printable ASCII without spaces (as the server requires): "
                "check --token-file, $FEDFORGET_API_TOKEN or <state-dir>/api-token",
            )
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    @classmethod
    def from_state_dir(
        cls,
        state_dir: str | Path,
        token: str | None = None,
        url: str | None = None,
        timeout: float = 10.0,
    ) -> UnlearningClient:
        """Connect to the federation whose state directory is ``state_dir``.

        The URL comes from ``<state_dir>/api.json`` unless given; the token,
        unless given, from ``$FEDFORGET_API_TOKEN`` or ``<state_dir>/api-token``.
        """
        state = Path(state_dir)
        if url is None:
            endpoint = state / ENDPOINT_FILE
            if not endpoint.is_file():
                raise ApiError(
                    0,
                    f"{endpoint} does not exist: is a federation with api-enabled=true and "
                    f"state-dir={state} running? Or pass the API's URL",
                )
            url = str(json.loads(endpoint.read_text())["url"])
        return cls(url, token or read_token(state), timeout)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> UnlearningClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- calls
    def submit(
        self,
        client_ids: Sequence[str | int],
        method: str | None = None,
        options: Mapping[str, OptionValue] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a request to forget ``client_ids``; return it (status ``queued``).

        ``method`` is a registry name (the run's method if None); ``options``
        override that method's settings, e.g. ``{"eta-regular": 10}``. A fresh
        idempotency key is used unless one is given, so retrying this call
        after a network error cannot queue the request twice.
        """
        body: dict[str, Any] = {"client_ids": [str(c) for c in client_ids]}
        if method is not None:
            body["method"] = method
        if options:
            body["options"] = dict(options)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self._call("POST", "/v1/unlearning-requests", json=body, headers=headers)

    def request(self, request_id: str) -> dict[str, Any]:
        """Read a request: queued, applied (``applied_round``) or rejected (``reason``)."""
        return self._call("GET", f"/v1/unlearning-requests/{request_id}")

    def status(self) -> dict[str, Any]:
        """Read the federation's status."""
        return self._call("GET", "/v1/status")

    def audit_log(self) -> list[dict[str, Any]]:
        """Read the audit log: applied unlearning, in the order it took effect."""
        return list(self._call("GET", "/v1/audit-log")["entries"])

    def wait(self, request_id: str, timeout: float = 600.0, poll: float = 0.2) -> dict[str, Any]:
        """Poll a request until it is applied or rejected; return it.

        Raises
        ------
        TimeoutError
            If it is still queued after ``timeout`` seconds.

        """
        deadline = time.monotonic() + timeout
        while True:
            request = self.request(request_id)
            if request["status"] != "queued":
                return request
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"request {request_id} still queued after {timeout:.0f} s: it takes effect "
                    "at the next round boundary; is the federation still training?"
                )
            time.sleep(poll)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(
                0, f"cannot reach the unlearning API at {self.url} ({error}): is the run alive?"
            ) from error
        if response.is_success:
            return response.json()
        try:
            detail = str(response.json().get("detail", response.text))
        except ValueError:
            detail = response.text
        raise ApiError(response.status_code, detail)


def read_token_file(path: Path) -> str:
    """Return the stripped token in ``path``, or an :class:`ApiError` saying what is wrong."""
    try:
        value = path.read_bytes().decode("ascii").strip()
    except OSError as error:
        raise ApiError(0, f"cannot read the token file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ApiError(
            0, f"the token file {path} holds non-ASCII bytes: an API token is printable ASCII"
        ) from None
    if not value:
        raise ApiError(0, f"the token file {path} is empty: write the API token into it")
    return value


def read_token(state_dir: Path) -> str:
    """Return the API token: ``$FEDFORGET_API_TOKEN``, else ``<state_dir>/api-token``."""
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value:
        return value
    path = state_dir / TOKEN_FILE
    if path.is_file():
        return read_token_file(path)
    raise ApiError(
        0,
        f"no API token: set {TOKEN_ENV}, pass --token-file, or run where {path} is readable",
    )
