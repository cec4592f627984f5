"""Unlearning requests during live rounds: a durable queue and an authenticated HTTP API.

* :mod:`fedforget.api.sqlite_queue`: :class:`SQLiteRequestQueue`, the
  strategy's request queue kept in SQLite (survives a server crash);
* :mod:`fedforget.api.app`: the FastAPI app (submit, read, status, audit log);
* :mod:`fedforget.api.server`: uvicorn in a thread of the ServerApp
  (:func:`live_api`);
* :mod:`fedforget.api.auth`: the bearer token;
* :mod:`fedforget.api.state_dir`: the state directory's permissions (0700
  folder, 0600 files, secrets never read through a symbolic link);
* :mod:`fedforget.api.client`: :class:`UnlearningClient`, used by
  ``fedforget unlearn``.

The web stack (FastAPI, uvicorn) is imported only by ``app`` and ``server``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["ApiError", "SQLiteRequestQueue", "UnlearningClient"]

_HOMES = {
    "ApiError": "fedforget.api.client",
    "UnlearningClient": "fedforget.api.client",
    "SQLiteRequestQueue": "fedforget.api.sqlite_queue",
}


def __getattr__(name: str) -> Any:
    """Import the public names lazily (``fedforget unlearn --help`` stays fast)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'fedforget.api' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
