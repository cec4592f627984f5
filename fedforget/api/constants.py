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
AUTHORISED_SCOPE_KEY = "fedforget.authorised"
"""Set (True) in a request's ASGI scope once its bearer token matched: the connection cap
evicts connections without an authorised request under way first."""
MIN_PUBLIC_TOKEN_CHARS = 32
"""Shortest token accepted on a non-loopback address (tokens are printable ASCII everywhere)."""

# --- connections (uvicorn; see fedforget.api.server)
REQUEST_HEAD_TIMEOUT_S = 5.0
"""A connection must send a complete request line and headers within this after it opens
or after its previous response; otherwise it is closed."""
REQUEST_BODY_TIMEOUT_S = 5.0
"""The body of a request must arrive within this; otherwise 408 and the connection closes."""
KEEP_ALIVE_TIMEOUT_S = 5
"""Idle keep-alive connections are closed after this many seconds (``timeout_keep_alive``)."""
WRITE_TIMEOUT_S = 5.0
"""A response must be taken by the client: a connection whose writes stay paused (more than
the transport's high-water mark unsent) or that stays closing with data unsent for this long
is aborted, so that a client that never reads cannot hold a connection."""
MAX_CONNECTIONS = 64
"""Open connections at most: a new one beyond it evicts another (those already closing, then
stalled writers, then those without an authorised request under way, oldest first, then the
oldest authorised request), never itself, so that a flood of idle, half-sent or never-read
connections never locks out the token holder."""
MAX_HEADER_BYTES = 8 * 1024
"""Request line and headers larger than this are refused (h11's incomplete-event limit)."""
MAX_REQUESTS_IN_PROGRESS = 4 * MAX_CONNECTIONS
"""uvicorn's ``limit_concurrency``: beyond it a request gets 503. uvicorn counts open
connections and requests in progress; the connection cap keeps both near ``MAX_CONNECTIONS``
(a burst of new connections evicts as many, which leave the count an instant later)."""
