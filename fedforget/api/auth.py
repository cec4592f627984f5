"""The API's bearer token: where it comes from, what it must look like, how it is checked.

Resolution order (:func:`resolve_token`):

1. ``api-token-file``: the file's content (stripped); it must exist and not
   be empty.
2. The environment variable named by ``api-token-env`` (default
   ``FEDFORGET_API_TOKEN``), if set and not empty.
3. Nothing configured: on a loopback address the token in
   ``<state-dir>/api-token`` is used, generated at random (43 characters,
   mode 0600, created with ``O_EXCL | O_NOFOLLOW``) if the file does not exist
   yet; ``fedforget unlearn`` finds it there. On any other address the API
   refuses to start.

A token file (configured or in ``state-dir``) is read only if it is a regular
file, not a symbolic link, owned by the server's user and not readable by
group or others (:func:`fedforget.api.state_dir.read_private_file`); the API
refuses to start otherwise, saying how to fix it. A token must be printable
ASCII without spaces (clients send header bytes; anything else could never
match) and, on a non-loopback address, at least 32 characters long.

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

from fedforget.api.constants import MIN_PUBLIC_TOKEN_CHARS, TOKEN_FILE
from fedforget.api.state_dir import (
    InsecureFileError,
    create_private_file,
    prepare_state_dir,
    read_private_file,
)
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


def token_problem(value: str, public: bool) -> str:
    """Why ``value`` cannot be the API's token ('' if it can); ``public``: not on loopback."""
    if not all(33 <= ord(character) <= 126 for character in value):
        return (
            "it must be printable ASCII without spaces (HTTP clients send the header as bytes, "
            "so other characters can never match): generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if public and len(value) < MIN_PUBLIC_TOKEN_CHARS:
        return (
            f"it has {len(value)} characters; on a non-loopback address it needs at least "
            f"{MIN_PUBLIC_TOKEN_CHARS}: generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return ""


def resolve_token(config: FederationConfig) -> ApiToken:
    """Return the token the API of ``config`` requires (see the module docstring).

    Raises
    ------
    ConfigError
        If ``api-token-file`` is set but missing or empty.
    ApiStartError
        If no token is configured and ``api-host`` is not a loopback address;
        if a token file is a symbolic link, someone else's or readable by
        others; if the token is not printable ASCII, or shorter than 32
        characters on a non-loopback address.

    """
    public = not is_loopback(config.api_host)
    if config.api_token_file:
        path = Path(config.api_token_file).expanduser()
        try:
            value = read_token_file(path, "api-token-file")
        except FileNotFoundError:
            raise ConfigError(
                f"api-token-file {path} does not exist: create it or unset the key"
            ) from None
        if not value:
            raise ConfigError(f"api-token-file {path} is empty: write the token into it")
        token = ApiToken(value, f"file {path}")
    elif config.api_token_env and os.environ.get(config.api_token_env, "").strip():
        token = ApiToken(
            os.environ[config.api_token_env].strip(), f"environment variable {config.api_token_env}"
        )
    elif public:
        raise ApiStartError(
            f"refusing to serve the unlearning API on {config.api_host} without a token: set "
            "api-token-file, or the environment variable "
            f"{config.api_token_env or '<api-token-env>'}, or use api-host=127.0.0.1"
        )
    else:
        token = state_dir_token(Path(config.state_dir))
    problem = token_problem(token.value, public)
    if problem:
        raise ApiStartError(f"the API token from {token.origin} cannot be used: {problem}")
    return token


def state_dir_token(state_dir: Path) -> ApiToken:
    """Return the token in ``<state_dir>/api-token``, creating a random one if none yet.

    The file is created with mode 0600 and ``O_EXCL | O_NOFOLLOW``; an existing
    one is read only if it passes :func:`read_token_file`'s checks. An empty
    one (a crash between creating and writing it) is replaced.
    """
    try:
        path = prepare_state_dir(state_dir) / TOKEN_FILE
    except InsecureFileError as error:
        raise ApiStartError(f"refusing to start the unlearning API: {error}") from None
    for _ in range(2):
        try:
            value = read_token_file(path, "the token file")
        except FileNotFoundError:
            value = ""
        if value:
            return ApiToken(value, f"file {path}")
        path.unlink(missing_ok=True)
        value = secrets.token_urlsafe(32)
        try:
            create_private_file(path, (value + "\n").encode())
        except FileExistsError:
            continue  # another process created it meanwhile: read theirs
        return ApiToken(value, f"file {path} (generated)")
    raise ApiStartError(f"{path} keeps being replaced while the API starts: check who writes it")


def read_token_file(path: Path, what: str) -> str:
    """The stripped token in ``path`` if the file is safe to trust, else :class:`ApiStartError`."""
    try:
        raw = read_private_file(path, what)
    except InsecureFileError as error:
        raise ApiStartError(f"refusing to start the unlearning API: {error}") from None
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ApiStartError(
            f"{what} {path} holds non-ASCII bytes: a token must be printable ASCII; generate one "
            "with python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        ) from None
