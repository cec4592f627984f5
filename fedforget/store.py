"""Where the server keeps each client's LATEST pseudo-gradient.

PUF needs one update per client, never a history: the store holds at most one
entry per client id (memory = clients x model size), and an entry is erased
once it has been used to forget that client (right to be forgotten).

``PseudoGradientStore`` is the interface the strategy uses, so that a
disk-backed store can replace :class:`InMemoryPseudoGradientStore`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from fedforget.arrays import Arrays


@dataclass(frozen=True)
class StoredPseudoGradient:
    """A client's latest pseudo-gradient, with its example count and round."""

    pseudo_gradient: Arrays
    num_examples: int
    server_round: int

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(int(a.nbytes) for a in self.pseudo_gradient.values())


@runtime_checkable
class PseudoGradientStore(Protocol):
    """Latest pseudo-gradient per client id."""

    def put(self, client_id: str, entry: StoredPseudoGradient) -> None:
        """Keep ``entry`` as the client's latest, replacing any older one."""

    def latest(self, client_id: str) -> StoredPseudoGradient | None:
        """The client's latest entry, or None if it has none."""

    def erase(self, client_id: str) -> None:
        """Delete the client's entry (no error if there is none)."""

    def client_ids(self) -> list[str]:
        """Ids of the clients that have an entry, sorted."""

    def nbytes(self) -> int:
        """Bytes held by all entries."""


class InMemoryPseudoGradientStore:
    """A thread-safe dictionary of copies; the default store."""

    def __init__(self) -> None:
        self._entries: dict[str, StoredPseudoGradient] = {}
        self._lock = threading.Lock()

    def put(self, client_id: str, entry: StoredPseudoGradient) -> None:
        """Keep a private copy of ``entry`` as the client's latest."""
        private = StoredPseudoGradient(
            {k: np.array(v, copy=True) for k, v in entry.pseudo_gradient.items()},
            entry.num_examples,
            entry.server_round,
        )
        with self._lock:
            self._entries[client_id] = private

    def latest(self, client_id: str) -> StoredPseudoGradient | None:
        """The client's latest entry, or None."""
        with self._lock:
            return self._entries.get(client_id)

    def erase(self, client_id: str) -> None:
        """Delete the client's entry."""
        with self._lock:
            self._entries.pop(client_id, None)

    def client_ids(self) -> list[str]:
        """Ids of the clients with an entry, sorted."""
        with self._lock:
            return sorted(self._entries)

    def nbytes(self) -> int:
        """Bytes held by all entries."""
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())
