"""A pseudo-gradient store on disk: one safetensors file per client (``store = "disk"``).

Memory stays flat however many clients there are: the server holds only an
index (client id -> file, round, examples, bytes); the arrays are read, by
memory map, only when a step needs them.

Files live in ``state-dir/pseudo-gradients/``, named
``<client id, percent-encoded>.r<round>.safetensors``; each carries the
client id, round, example count and original dtypes in its metadata and a
digest of its arrays (:mod:`fedforget.state.files`). A put writes the new
file atomically and durably; an erase deletes the file and fsyncs the folder,
so a forgotten client's update is gone from the disk, not only from the index.

Checkpoints (:mod:`fedforget.state.checkpoint`) keep the index, not the
arrays. So that a crash between two checkpoints can always go back to the
last one, a file the last saved index names is *pinned*: replacing or erasing
its client leaves the file in place until the next checkpoint is durable
(:meth:`DiskPseudoGradientStore.state_saved`), which then deletes every file
the index no longer names. Without checkpoints nothing is pinned and a put or
an erase deletes the old file at once.

A file that cannot be read back as written (truncated, altered, missing) is
refused: :meth:`~DiskPseudoGradientStore.latest` raises
:class:`~fedforget.state.store.StoredEntryError` naming the file, and the
run goes on without that client's stored update (PUF refuses a request that
needs it, with the reason) until the client's next training round replaces it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fedforget.state.files import (
    DamagedFileError,
    encode_tensors,
    is_temporary,
    read_metadata,
    read_tensors,
    remove_durably,
    write_durably,
)
from fedforget.state.store import (
    STORE_DTYPES,
    StoredEntryError,
    StoredPseudoGradient,
    from_storage,
    to_storage,
)

PSEUDO_GRADIENT_DIR = "pseudo-gradients"
"""Folder of the disk store in ``state-dir``."""
ENTRY_KEY = "fedforget.pseudo-gradient"
"""Metadata key of an entry's description (JSON)."""
SUFFIX = ".safetensors"
FORMAT_VERSION = 1
PRIVATE_DIR_MODE = 0o700

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexEntry:
    """What the index knows of a client's file (all a checkpoint keeps of the store)."""

    file: str
    server_round: int
    num_examples: int
    nbytes: int


def entry_file_name(client_id: str, server_round: int) -> str:
    """The file of a client's entry of ``server_round`` (the client id percent-encoded)."""
    return f"{quote(client_id, safe='')}.r{server_round}{SUFFIX}"


def client_of_file(name: str) -> str | None:
    """The client id a file name encodes, or None for a name the store does not write."""
    if not name.endswith(SUFFIX):
        return None
    stem, separator, round_text = name.removesuffix(SUFFIX).rpartition(".r")
    if not separator or not stem or not round_text.split(".", 1)[0].isdigit():
        return None
    return unquote(stem)


class DiskPseudoGradientStore:
    """Each client's latest pseudo-gradient in its own file under ``directory``.

    Opening a folder that holds files rebuilds the index from their headers
    (the newest round of each client wins; nothing is deleted until
    :meth:`state_saved`, :meth:`load_state_dict` or :meth:`clear`). A
    checkpoint's index replaces it with :meth:`load_state_dict`.

    Parameters
    ----------
    directory : Path
        The store's folder (created with mode 0700 if missing).
    dtype : str (default: "float32")
        Dtype of the stored floating-point arrays (:data:`STORE_DTYPES`).

    """

    def __init__(self, directory: Path, dtype: str = "float32") -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        self.directory = Path(directory)
        self.dtype = dtype
        self.directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        self._index: dict[str, IndexEntry] = {}
        self._pinned: set[str] = set()
        self._lock = threading.RLock()
        self._rebuild_index()

    # ------------------------------------------------------------ the store
    def put(self, client_id: str, entry: StoredPseudoGradient) -> None:
        """Write ``entry`` as the client's file (atomically, durably), then drop the old one."""
        arrays, originals = to_storage(entry.pseudo_gradient, self.dtype)
        description = {
            "format": FORMAT_VERSION,
            "client_id": client_id,
            "server_round": entry.server_round,
            "num_examples": entry.num_examples,
            "originals": originals,
        }
        data = encode_tensors(arrays, {ENTRY_KEY: json.dumps(description)})
        with self._lock:
            name = self._free_name(client_id, entry.server_round)
            write_durably(self.directory / name, data)
            old = self._index.get(client_id)
            self._index[client_id] = IndexEntry(
                name,
                entry.server_round,
                entry.num_examples,
                sum(int(a.nbytes) for a in arrays.values()),
            )
            if old is not None and old.file != name:
                self._drop(old.file)

    def latest(self, client_id: str) -> StoredPseudoGradient | None:
        """The client's latest entry, read by memory map and verified; None if it has none.

        Raises
        ------
        StoredEntryError
            If its file is missing, truncated or altered, or holds another
            client's or round's entry; the message names the file.

        """
        with self._lock:
            indexed = self._index.get(client_id)
        if indexed is None:
            return None
        path = self.directory / indexed.file
        try:
            arrays, metadata = read_tensors(path)
            description = json.loads(metadata[ENTRY_KEY])
            if description.get("format") != FORMAT_VERSION:
                raise DamagedFileError(f"it has format {description.get('format')!r}")
            if (description["client_id"], description["server_round"]) != (
                client_id,
                indexed.server_round,
            ):
                raise DamagedFileError(
                    f"it holds client {description['client_id']}'s entry of round "
                    f"{description['server_round']}, not client {client_id}'s of round "
                    f"{indexed.server_round}"
                )
            pseudo_gradient = from_storage(arrays, description["originals"])
        except FileNotFoundError:
            raise StoredEntryError(self._unusable(client_id, path, "the file is missing")) from None
        except (DamagedFileError, KeyError, TypeError, ValueError) as error:
            raise StoredEntryError(self._unusable(client_id, path, str(error))) from error
        return StoredPseudoGradient(pseudo_gradient, indexed.num_examples, indexed.server_round)

    def erase(self, client_id: str) -> None:
        """Delete the client's entry and, unless a saved checkpoint still names it, its file."""
        with self._lock:
            old = self._index.pop(client_id, None)
            if old is not None:
                self._drop(old.file)

    def client_ids(self) -> list[str]:
        """Ids of the clients with an entry, sorted."""
        with self._lock:
            return sorted(self._index)

    def nbytes(self) -> int:
        """Bytes of the stored arrays (in the store's dtype) of all entries."""
        with self._lock:
            return sum(entry.nbytes for entry in self._index.values())

    def path_of(self, client_id: str) -> Path | None:
        """The file of the client's entry, or None."""
        with self._lock:
            entry = self._index.get(client_id)
        return self.directory / entry.file if entry else None

    def clear(self) -> None:
        """Delete every entry and file (a fresh run starts with an empty store)."""
        with self._lock:
            self._index.clear()
            self._pinned.clear()
            self._collect_garbage()

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The index (no arrays: they stay in the files)."""
        with self._lock:
            return {
                "dtype": self.dtype,
                "entries": {cid: asdict(entry) for cid, entry in self._index.items()},
            }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take a checkpoint's index; delete every file it does not name.

        Those are files written after the checkpoint (the rounds that will run
        again) and files of clients erased since (their erasure completes here).
        A named file that is missing stays in the index: :meth:`latest` refuses it.
        """
        if state.get("dtype", self.dtype) != self.dtype:
            raise ValueError(
                f"the saved store keeps {state['dtype']} arrays, this one {self.dtype}: resume "
                f"with the store-dtype the run started with"
            )
        index = {cid: IndexEntry(**entry) for cid, entry in state.get("entries", {}).items()}
        with self._lock:
            self._index = index
            self._pinned = {entry.file for entry in index.values()}
            missing = sorted(c for c, e in index.items() if not (self.directory / e.file).exists())
            if missing:
                logger.error(
                    "The stored pseudo-gradients of client(s) %s are missing from %s: requests "
                    "that need them will be refused until the clients train again",
                    ", ".join(missing),
                    self.directory,
                )
            self._collect_garbage()

    def state_saved(self) -> None:
        """The saved index is durable: pin its files, delete every other file, fsync."""
        with self._lock:
            self._pinned = {entry.file for entry in self._index.values()}
            self._collect_garbage()

    # --------------------------------------------------------------- helpers
    def _free_name(self, client_id: str, server_round: int) -> str:
        """The entry's file name; never that of a pinned file (a saved checkpoint names it)."""
        name = entry_file_name(client_id, server_round)
        version = 1
        while name in self._pinned:
            version += 1
            name = entry_file_name(client_id, server_round).replace(SUFFIX, f".{version}{SUFFIX}")
        return name

    def _drop(self, name: str) -> None:
        """Delete a file the index no longer names, unless it is pinned."""
        if name not in self._pinned:
            remove_durably([self.directory / name], self.directory)

    def _collect_garbage(self) -> None:
        """Delete the files that neither the index nor a pin names, and stale temporary files."""
        keep = self._pinned | {entry.file for entry in self._index.values()}
        stale = [
            path
            for path in self.directory.iterdir()
            if is_temporary(path) or (path.name.endswith(SUFFIX) and path.name not in keep)
        ]
        remove_durably(stale, self.directory)

    def _rebuild_index(self) -> None:
        """The index of the files in the folder: the newest round of each client."""
        found: dict[str, tuple[int, IndexEntry]] = {}
        for path in sorted(self.directory.iterdir()):
            client_id = client_of_file(path.name)
            if client_id is None or is_temporary(path):
                continue
            entry = self._describe(client_id, path)
            if client_id not in found or entry.server_round >= found[client_id][0]:
                found[client_id] = (entry.server_round, entry)
        # nothing is deleted here: an older version may be the one a checkpoint names, and
        # only load_state_dict (with that checkpoint) or state_saved knows which files may go
        self._index = {cid: entry for cid, (_, entry) in found.items()}

    def _describe(self, client_id: str, path: Path) -> IndexEntry:
        """An index entry from a file's header; a damaged one is kept (and refused when read)."""
        try:
            description = json.loads(read_metadata(path)[ENTRY_KEY])
            return IndexEntry(
                path.name,
                int(description["server_round"]),
                int(description["num_examples"]),
                int(os.path.getsize(path)),
            )
        except (DamagedFileError, KeyError, TypeError, ValueError) as error:
            logger.error("%s", self._unusable(client_id, path, str(error)))
            return IndexEntry(path.name, 0, 0, int(os.path.getsize(path)))

    @staticmethod
    def _unusable(client_id: str, path: Path, why: str) -> str:
        return (
            f"the stored pseudo-gradient of client {client_id} ({path}) cannot be used: {why}. "
            f"It is ignored until the client's next training round replaces it; until then use "
            f"puf.source='fresh' for this client"
        )
