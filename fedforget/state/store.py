"""Where the server keeps each client's LATEST pseudo-gradient.

PUF needs one update per client, never a history: a store holds at most one
entry per client id, and an entry is erased once it has been used to forget
that client (right to be forgotten).

:class:`PseudoGradientStore` is the interface methods use; this module holds
:class:`InMemoryPseudoGradientStore` (memory = clients x model size, kept in
the checkpoint), :mod:`fedforget.state.disk_store` the disk-backed one (one
file per client; the checkpoint keeps only its index). Either keeps its
floating-point arrays in ``dtype`` (``store-dtype``: ``"float32"``, or
``"float16"`` for half the bytes) and returns them in their original dtype.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from fedforget.arrays import Arrays, arrays_nbytes, is_float_array
from fedforget.constants import STORE_DTYPES

logger = logging.getLogger(__name__)


class StoredEntryError(LookupError):
    """A client's stored entry exists but cannot be used (a damaged or missing file)."""


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
    """Latest pseudo-gradient per client id, and the state a checkpoint keeps of it."""

    def put(self, client_id: str, entry: StoredPseudoGradient) -> None:
        """Keep ``entry`` as the client's latest, replacing any older one."""

    def latest(self, client_id: str) -> StoredPseudoGradient | None:
        """The client's latest entry, or None if it has none.

        Raises :class:`StoredEntryError` if it has one that cannot be read.
        """

    def erase(self, client_id: str) -> None:
        """Delete the client's entry (no error if there is none)."""

    def client_ids(self) -> list[str]:
        """Ids of the clients that have an entry, sorted."""

    def nbytes(self) -> int:
        """Bytes held by all entries."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the store (arrays may be leaves)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Return to the state :meth:`state_dict` described."""

    def state_saved(self) -> None:
        """The checkpoint holding the last :meth:`state_dict` is durable."""


def to_storage(arrays: Arrays, dtype: str) -> tuple[Arrays, dict[str, str]]:
    """Copies of ``arrays`` with their float arrays in ``dtype``, and the dtypes cast from.

    An array that ``dtype`` cannot hold (a value beyond float16's range, which
    would become Inf) keeps its own dtype, with a warning.
    """
    target = np.dtype(dtype)
    stored: Arrays = {}
    originals: dict[str, str] = {}
    for name, value in arrays.items():
        if not is_float_array(value) or value.dtype == target:
            stored[name] = np.array(value, copy=True)
            continue
        with np.errstate(over="ignore"):
            cast = value.astype(target)
        if np.all(np.isfinite(cast)) or not np.all(np.isfinite(value)):
            stored[name] = cast
            originals[name] = value.dtype.str
        else:
            logger.warning(
                "%s of a pseudo-gradient exceeds %s's range: it is stored as %s",
                name,
                dtype,
                value.dtype,
            )
            stored[name] = np.array(value, copy=True)
    return stored, originals


def from_storage(arrays: Mapping[str, NDArray[np.generic]], originals: Mapping[str, str]) -> Arrays:
    """``arrays`` with the arrays named in ``originals`` cast back to their dtypes."""
    return {
        name: value.astype(np.dtype(originals[name])) if name in originals else value
        for name, value in arrays.items()
    }


@dataclass(frozen=True)
class _MemoryEntry:
    arrays: Arrays  # in the store's dtype
    originals: dict[str, str]
    num_examples: int
    server_round: int


class InMemoryPseudoGradientStore:
    """A thread-safe dictionary of private copies; the default store (``store = "memory"``).

    Parameters
    ----------
    dtype : str (default: "float32")
        Dtype of the kept floating-point arrays (:data:`STORE_DTYPES`).

    """

    def __init__(self, dtype: str = "float32") -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self._entries: dict[str, _MemoryEntry] = {}
        self._lock = threading.Lock()

    def put(self, client_id: str, entry: StoredPseudoGradient) -> None:
        """Keep a private copy of ``entry`` as the client's latest."""
        arrays, originals = to_storage(entry.pseudo_gradient, self.dtype)
        private = _MemoryEntry(arrays, originals, entry.num_examples, entry.server_round)
        with self._lock:
            self._entries[client_id] = private

    def latest(self, client_id: str) -> StoredPseudoGradient | None:
        """The client's latest entry, or None."""
        with self._lock:
            entry = self._entries.get(client_id)
        if entry is None:
            return None
        return StoredPseudoGradient(
            from_storage(entry.arrays, entry.originals),
            entry.num_examples,
            entry.server_round,
        )

    def erase(self, client_id: str) -> None:
        """Delete the client's entry."""
        with self._lock:
            self._entries.pop(client_id, None)

    def client_ids(self) -> list[str]:
        """Ids of the clients with an entry, sorted."""
        with self._lock:
            return sorted(self._entries)

    def nbytes(self) -> int:
        """Bytes held by all entries (in the store's dtype)."""
        with self._lock:
            return sum(arrays_nbytes(entry.arrays) for entry in self._entries.values())

    def state_dict(self) -> dict[str, Any]:
        """Every entry with its arrays, as kept (a checkpoint holds them)."""
        with self._lock:
            entries = dict(self._entries)
        return {
            "dtype": self.dtype,
            "entries": {
                client_id: {
                    "arrays": entry.arrays,
                    "originals": entry.originals,
                    "num_examples": entry.num_examples,
                    "server_round": entry.server_round,
                }
                for client_id, entry in entries.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace every entry by those of ``state``."""
        if state.get("dtype", self.dtype) != self.dtype:
            raise ValueError(
                f"the saved store keeps {state['dtype']} arrays, this one {self.dtype}: resume "
                f"with the store-dtype the run started with"
            )
        entries = {
            client_id: _MemoryEntry(
                dict(saved["arrays"]),
                dict(saved["originals"]),
                int(saved["num_examples"]),
                int(saved["server_round"]),
            )
            for client_id, saved in state.get("entries", {}).items()
        }
        with self._lock:
            self._entries = entries

    def state_saved(self) -> None:
        """Nothing to do: the checkpoint holds the arrays themselves."""
