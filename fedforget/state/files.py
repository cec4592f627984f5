"""Durable, verified tensor files: what every file of the server's state is written with.

Each file is a safetensors file (arrays plus a string-to-string metadata
header, no pickle) whose metadata carries a SHA-256 digest of its arrays, so
that a flipped or missing byte is detected on reading, not only a damaged
header. Files are replaced atomically and durably by :func:`write_durably`:

1. write a temporary file in the same folder (mode 0600, never through a link);
2. ``fsync`` it;
3. ``os.replace`` it over the target (atomic on POSIX file systems);
4. ``fsync`` the folder, so that the rename itself survives a power cut.

A crash at any point leaves either the old file or the new one, never a mix;
the temporary file it may leave (``.<name>.tmp``) is never read, and is
removed by the next write or by :func:`remove_temporary_files`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedforget.arrays import Arrays

DIGEST_KEY = "fedforget.sha256"
"""Metadata key of the digest of a file's arrays."""
PRIVATE_FILE_MODE = 0o600
TEMPORARY_PREFIX = "."
TEMPORARY_SUFFIX = ".tmp"


class DamagedFileError(ValueError):
    """A state file cannot be read back as written; the message says what is wrong."""


def temporary_path(path: Path) -> Path:
    """Where :func:`write_durably` writes ``path``'s content before renaming it."""
    return path.with_name(f"{TEMPORARY_PREFIX}{path.name}{TEMPORARY_SUFFIX}")


def is_temporary(path: Path) -> bool:
    """True for a temporary file of :func:`write_durably` (left if a write was interrupted)."""
    return path.name.startswith(TEMPORARY_PREFIX) and path.name.endswith(TEMPORARY_SUFFIX)


def fsync_directory(directory: Path) -> None:
    """Make the creations, renames and deletions in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically and durably (see the module docstring)."""
    temporary = temporary_path(path)
    temporary.unlink(missing_ok=True)  # left by an interrupted write; unlink never follows a link
    descriptor = os.open(
        temporary,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
        PRIVATE_FILE_MODE,
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def remove_durably(paths: Iterable[Path], directory: Path) -> int:
    """Delete ``paths`` (files of ``directory``; missing ones are skipped), then fsync it.

    Returns how many files were deleted.
    """
    removed = 0
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    if removed:
        fsync_directory(directory)
    return removed


def remove_temporary_files(directory: Path) -> int:
    """Delete the temporary files interrupted writes left in ``directory``."""
    return remove_durably((p for p in directory.iterdir() if is_temporary(p)), directory)


def arrays_digest(arrays: Mapping[str, NDArray[np.generic]]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``arrays`` (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.require(arrays[name], requirements="C")
        digest.update(json.dumps([name, value.dtype.str, list(value.shape)]).encode())
        digest.update(value.reshape(-1).view(np.uint8).data if value.size else b"")
    return digest.hexdigest()


def encode_tensors(arrays: Mapping[str, NDArray[np.generic]], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file of ``arrays`` whose metadata is ``metadata`` plus the digest."""
    from safetensors.numpy import save

    contiguous = {name: np.require(value, requirements="C") for name, value in arrays.items()}
    if DIGEST_KEY in metadata:
        raise ValueError(f"metadata key {DIGEST_KEY!r} is reserved for the arrays' digest")
    return save(contiguous, metadata={**metadata, DIGEST_KEY: arrays_digest(contiguous)})


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (its header only: the arrays are not read).

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    DamagedFileError
        If the header cannot be parsed (a truncated or foreign file).

    """
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise FileNotFoundError(path)
    try:
        with safe_open(str(path), framework="numpy") as file:
            return dict(file.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise DamagedFileError(f"its header cannot be read ({error})") from error


def read_tensors(path: Path) -> tuple[Arrays, dict[str, str]]:
    """The arrays and metadata of a file written with :func:`encode_tensors`, verified.

    The file is memory-mapped (safetensors ``safe_open``) and every array is
    checked against the digest in its metadata.

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    DamagedFileError
        If the header cannot be parsed, the file is shorter than its header
        says (truncated), the digest is missing, or the arrays do not match it.

    """
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise FileNotFoundError(path)
    try:
        with safe_open(str(path), framework="numpy") as file:
            metadata = dict(file.metadata() or {})
            arrays = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise DamagedFileError(f"it cannot be parsed ({error})") from error
    expected = metadata.get(DIGEST_KEY)
    if expected is None:
        raise DamagedFileError("it carries no digest: it was not written by fedforget")
    if arrays_digest(arrays) != expected:
        raise DamagedFileError("its arrays do not match their digest: the file was altered")
    return arrays, metadata
