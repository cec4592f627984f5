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
from fedforget.api.state_dir import (
    InsecureFileError,
    check_own_dir,
    read_own_file,
    read_private_file,
)
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
        Nothing is read from ``state_dir``, and no token is sent, unless the
        folder and the file read are this user's and no one else may change
        them (:func:`fedforget.api.state_dir.check_own_dir`): whoever can
        write ``api.json`` chooses where the token goes.

        Raises
        ------
        ApiError
            If ``api.json`` is missing or not this user's own file, or
            ``state_dir`` is not this user's own folder.

        """
        state = Path(state_dir)
        if url is None:
            url = endpoint_url(state)
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
    if path.is_dir():
        raise ApiError(0, f"the token file {path} is a directory: give the file that holds it")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ApiError(0, f"cannot read the token file {path}: {error.strerror}") from None
    return token_text(raw, path)


def token_text(raw: bytes, path: Path) -> str:
    """The stripped ASCII token in the bytes of ``path``, or an :class:`ApiError`."""
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ApiError(
            0, f"the token file {path} holds non-ASCII bytes: an API token is printable ASCII"
        ) from None
    if not value:
        raise ApiError(0, f"the token file {path} is empty: write the API token into it")
    return value


def endpoint_url(state_dir: Path) -> str:
    """The URL in ``<state_dir>/api.json``, once the folder and the file are checked as ours."""
    endpoint = state_dir / ENDPOINT_FILE
    try:
        check_own_dir(state_dir, "state-dir")
        record = json.loads(read_own_file(endpoint, "the API's endpoint file"))
    except FileNotFoundError:
        raise ApiError(
            0,
            f"{endpoint} does not exist: is a federation with api-enabled=true and "
            f"state-dir={state_dir} running? Or pass the API's URL",
        ) from None
    except InsecureFileError as error:
        raise ApiError(0, f"refusing to send the API token: {error}") from None
    except (ValueError, OSError) as error:
        raise ApiError(0, f"cannot read {endpoint} ({error}): pass the API's URL") from None
    if not isinstance(record, dict) or not isinstance(record.get("url"), str):
        raise ApiError(0, f"{endpoint} names no URL: pass the API's URL")
    return str(record["url"])


def read_token(state_dir: Path) -> str:
    """Return the API token: ``$FEDFORGET_API_TOKEN``, else ``<state_dir>/api-token``.

    The token file of the state directory is read only under the server's
    rules: a regular file of this user, in a folder of this user, that no one
    else may read or change.
    """
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value:
        return value
    path = state_dir / TOKEN_FILE
    try:
        check_own_dir(state_dir, "state-dir")
        raw = read_private_file(path, "the token file")
    except FileNotFoundError:
        raise ApiError(
            0,
            f"no API token: set {TOKEN_ENV}, pass --token-file, or run where {path} is readable",
        ) from None
    except InsecureFileError as error:
        raise ApiError(0, f"refusing to use the token: {error}") from None
    return token_text(raw, path)
