"""The API's bearer token: where it comes from and how it is checked.

Resolution order (:func:`resolve_token`):

1. ``api-token-file``: the file's content (stripped); it must exist and not
   be empty.
2. The environment variable named by ``api-token-env`` (default
   ``FEDFORGET_API_TOKEN``), if set and not empty.
3. Nothing configured: on a loopback address the token in
   ``<state-dir>/api-token`` is used, generated at random (mode 0600) if the
   file does not exist yet; ``fedforget unlearn`` finds it there. On any
   other address the API refuses to start.

Every call must carry ``Authorization: Bearer <token>``; the comparison is
constant-time (SHA-256 digests compared with :func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fedforget.api.constants import TOKEN_FILE
from fedforget.config import ConfigError, FederationConfig


class ApiStartError(RuntimeError):
    """The API cannot start as configured; the message says what to change."""


@dataclass(frozen=True)
class ApiToken:
    """A bearer token and where it came from (for messages, never the value)."""

    value: str
    origin: str

    def matches(self, presented: str) -> bool:
        """Constant-time check of a presented token."""
        expected = hashlib.sha256(self.value.encode()).digest()
        given = hashlib.sha256(presented.encode()).digest()
        return hmac.compare_digest(expected, given)


def is_loopback(host: str) -> bool:
    """Tell whether only this machine can reach ``host`` (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(config: FederationConfig) -> ApiToken:
    """Return the token the API of ``config`` requires (see the module docstring).

    Raises
    ------
    ConfigError
        If ``api-token-file`` is set but missing or empty.
    ApiStartError
        If no token is configured and ``api-host`` is not a loopback address.

    """
    if config.api_token_file:
        path = Path(config.api_token_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"api-token-file {path} does not exist: create it or unset the key")
        value = path.read_text().strip()
        if not value:
            raise ConfigError(f"api-token-file {path} is empty: write the token into it")
        return ApiToken(value, f"file {path}")
    if config.api_token_env and os.environ.get(config.api_token_env, "").strip():
        return ApiToken(
            os.environ[config.api_token_env].strip(), f"environment variable {config.api_token_env}"
        )
    if not is_loopback(config.api_host):
        raise ApiStartError(
            f"refusing to serve the unlearning API on {config.api_host} without a token: set "
            "api-token-file, or the environment variable "
            f"{config.api_token_env or '<api-token-env>'}, or use api-host=127.0.0.1"
        )
    return state_dir_token(Path(config.state_dir))


def state_dir_token(state_dir: Path) -> ApiToken:
    """Return the token in ``<state_dir>/api-token``, creating a random one if none yet."""
    path = state_dir / TOKEN_FILE
    if path.is_file() and path.read_text().strip():
        return ApiToken(path.read_text().strip(), f"file {path}")
    state_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(value + "\n")
    os.chmod(path, 0o600)
    return ApiToken(value, f"file {path} (generated)")
