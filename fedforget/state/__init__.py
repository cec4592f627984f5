"""What survives a crash of the server: pseudo-gradient stores and the checkpoint.

* :mod:`fedforget.state.store`: the :class:`PseudoGradientStore` interface
  and the in-memory store;
* :mod:`fedforget.state.disk_store`: one safetensors file per client;
* :mod:`fedforget.state.checkpoint`: the per-round checkpoint a restarted run
  resumes from;
* :mod:`fedforget.state.files`: atomic, durable, verified tensor files.

The request queue, the other durable part of the state, is
:class:`fedforget.api.sqlite_queue.SQLiteRequestQueue`.
"""

from fedforget.state.store import (
    STORE_DTYPES,
    InMemoryPseudoGradientStore,
    PseudoGradientStore,
    StoredEntryError,
    StoredPseudoGradient,
)

__all__ = [
    "STORE_DTYPES",
    "InMemoryPseudoGradientStore",
    "PseudoGradientStore",
    "StoredEntryError",
    "StoredPseudoGradient",
]
