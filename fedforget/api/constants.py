"""Names and limits of the unlearning API, in one place."""

API_PREFIX = "/v1"
DATABASE_FILE = "requests.sqlite3"
"""SQLite database of unlearning requests, in ``state-dir``."""
ENDPOINT_FILE = "api.json"
"""Where a running API writes its URL (never the token), in ``state-dir``."""
TOKEN_FILE = "api-token"
"""The token used on loopback when none is configured, in ``state-dir``."""
TOKEN_ENV = "FEDFORGET_API_TOKEN"
"""Default environment variable holding the token (config key ``api-token-env``)."""
MAX_BODY_BYTES = 8 * 1024
MAX_CLIENTS_PER_REQUEST = 256
MAX_OPTIONS_PER_REQUEST = 32
MAX_OPTION_CHARS = 256
"""Longest string value of an option."""
