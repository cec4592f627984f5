"""Prepared data on disk: each split and each client partition is built once per machine.

In a deployment every ClientApp message runs in a fresh process (Flower's
subprocess isolation), so whatever a process derives from the config, it
derives again for every message. Building a split and its partitions means
importing scikit-learn, Hugging Face ``datasets`` and flwr-datasets (seconds),
reading the raw files and drawing the partitions; reading the finished arrays
back takes milliseconds. :func:`cached_arrays` keeps them as ``.npz`` files
(NumPy's standard array archive, no pickles)::

    $FEDFORGET_CACHE/prepared/<kind>-<key>.npz     (default ~/.cache/fedforget)

``key`` is a SHA-256 of the settings that determine the arrays (for a split:
dataset, data-dir and a fingerprint of its files, test-fraction, seed,
image-size and the source of the modules the dataset registry says its loader
depends on; for partitions: the split's key, num-partitions, partitioner,
alpha, min-partition-size, seed, partition-file and its content), of the
versions of the libraries that draw them and of the source of the code that
splits, partitions and stores them: when any of them changes, the key changes
and the arrays are built again. A file is written to a temporary name in the same folder and
renamed into place (atomic: concurrent SuperNodes never read half a file),
and it records a SHA-256 of each array: a file that cannot be read or whose
arrays do not match their checksums is rebuilt, never trusted.

Set ``FEDFORGET_DATA_CACHE=0`` to build in every process instead (nothing is
read or written). Container images, whose data is prepared when they are
built, set ``FEDFORGET_PREPARED_RUN_CONFIG`` to the run config prepared: arrays
missing from the cache are then an error naming it and the build argument
that prepares them (:class:`DataNotPreparedError`), not a build in every
ClientApp process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

CACHE_ENV = "FEDFORGET_CACHE"
SWITCH_ENV = "FEDFORGET_DATA_CACHE"
PREPARED_ENV = "FEDFORGET_PREPARED_RUN_CONFIG"
FOLDER = "prepared"
FORMAT_VERSION = 1
META_KEY = "__meta__"
BUILDER_SOURCES = ("datasets.py", "partition.py", "split.py", "cache.py")
"""Modules of this package whose code shapes every dataset's cached arrays (part of every key);
a dataset's own loader code enters through its split settings (the dataset registry's
``depends_on``, :meth:`fedforget.registry.Registry.fingerprint`)."""
LIBRARIES = ("numpy", "scikit-learn", "flwr-datasets", "torch")
"""Libraries whose versions shape the cached arrays (part of every key)."""

Arrays = dict[str, NDArray[np.generic]]


class CorruptCacheError(ValueError):
    """A cache file that cannot be read or does not match its recorded checksums."""


class DataNotPreparedError(RuntimeError):
    """A run's data is not in the cache of an image that only reads prepared data."""


def cache_root() -> Path:
    """The folder of prepared arrays: ``$FEDFORGET_CACHE/prepared``."""
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "fedforget")
    return Path(base) / FOLDER


def cache_enabled() -> bool:
    """False when ``FEDFORGET_DATA_CACHE`` is ``0`` / ``false`` / ``off``."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def prepared_run_config() -> str | None:
    """The run config an image prepared (``FEDFORGET_PREPARED_RUN_CONFIG``); None if unset.

    When set, only prepared arrays are read: nothing is built.
    """
    return os.environ.get(PREPARED_ENV)


def cache_key(kind: str, settings: Mapping[str, object]) -> str:
    """SHA-256 (hex) of ``kind``, ``settings``, the format, library versions and builder code."""
    described = {
        "kind": kind,
        "format": FORMAT_VERSION,
        "settings": dict(settings),
        "libraries": _library_versions(),
        "code": _builder_fingerprint(),
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(kind: str, settings: Mapping[str, object]) -> Path:
    """The file that holds (or will hold) the arrays of ``kind`` under ``settings``."""
    return cache_root() / f"{kind}-{cache_key(kind, settings)[:32]}.npz"


def cached_arrays(
    kind: str,
    settings: Mapping[str, object],
    build: Callable[[], Mapping[str, NDArray[np.generic]]],
) -> Arrays:
    """The arrays ``build()`` returns for ``settings``: read from the cache, or built and stored.

    Parameters
    ----------
    kind : str
        What the arrays are (``"split"``, ``"partitions"``): the file name's prefix.
    settings : Mapping[str, object]
        Everything the arrays depend on (JSON-serialisable values).
    build : Callable[[], Mapping[str, NDArray]]
        Builds the arrays when the cache has no valid copy. Names must not
        start with ``__``; object (pickled) arrays are refused.

    Returns
    -------
    dict[str, NDArray]
        Exactly the arrays ``build()`` returned (now or when the file was written).

    """
    if not cache_enabled():
        return dict(build())
    path = cache_path(kind, settings)
    if path.is_file():
        try:
            return read_arrays(path)
        except CorruptCacheError as error:
            logger.warning("rebuilding %s: %s", path, error)
    prepared = prepared_run_config()
    if prepared is not None:
        described = " ".join(  # the settings a user sets, not the digests derived from them
            f"{key}={value!r}"
            for key, value in sorted(settings.items())
            if not (isinstance(value, str) and len(value) == 64)
        )
        raise DataNotPreparedError(
            f"the {kind} of this run ({described}) are not prepared in this image, which was "
            f"built with PREPARE_RUN_CONFIG={prepared!r} ({PREPARED_ENV}): run with those data "
            "settings (num-partitions must be the SuperNodes'), or rebuild the images with the "
            "build argument PREPARE_RUN_CONFIG set to this run's (e.g. "
            "docker-compose build --build-arg PREPARE_RUN_CONFIG='num-partitions=5')"
        )
    arrays = dict(build())
    try:
        write_arrays(path, arrays, {"kind": kind, "settings": dict(settings)})
    except OSError as error:  # a read-only or full cache folder costs time, not correctness
        logger.warning("could not cache %s in %s (%s): it is rebuilt next time", kind, path, error)
    return arrays


def write_arrays(path: Path, arrays: Mapping[str, NDArray[np.generic]], about: object) -> None:
    """Write ``arrays`` and their checksums to ``path`` atomically (temporary file + rename)."""
    for name, array in arrays.items():
        if name.startswith("__") or array.dtype.hasobject:
            raise ValueError(f"cannot cache array {name!r}: reserved name or object dtype")
    meta = {
        "format": FORMAT_VERSION,
        "about": about,
        "arrays": {name: _describe(np.asarray(a)) for name, a in arrays.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **{META_KEY: np.array(json.dumps(meta, default=str))}, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # readable by the app user of a container built as root
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_arrays(path: Path) -> Arrays:
    """The arrays of a cache file, each checked against its recorded shape, dtype and SHA-256.

    Raises
    ------
    CorruptCacheError
        If the file cannot be read, lacks an array, or an array does not match.

    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive[META_KEY][()]))
            if meta.get("format") != FORMAT_VERSION:
                raise CorruptCacheError(f"format {meta.get('format')!r} != {FORMAT_VERSION}")
            expected: dict[str, dict[str, object]] = meta["arrays"]
            arrays = {name: archive[name] for name in expected}
    except CorruptCacheError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        raise CorruptCacheError(f"unreadable ({type(error).__name__}: {error})") from error
    for name, array in arrays.items():
        if _describe(array) != expected[name]:
            raise CorruptCacheError(f"array {name!r} does not match its recorded checksum")
    return arrays


def fingerprint_files(path: str) -> str:
    """SHA-256 of the names, sizes and modification times of the files under ``path``.

    "" for an empty path; a missing path gives a fingerprint of its absence, so
    a loader's own error message still reaches the user.
    """
    if not path:
        return ""
    root = Path(path).expanduser().resolve()
    digest = hashlib.sha256(str(root).encode())
    if root.is_file():
        stat = root.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            with contextlib.suppress(OSError):
                stat = os.stat(os.path.join(folder, name))
                relative = os.path.relpath(os.path.join(folder, name), root)
                digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def fingerprint_content(data: bytes) -> str:
    """SHA-256 (hex) of some bytes (e.g. a partition file's content)."""
    return hashlib.sha256(data).hexdigest()


def _describe(array: NDArray[np.generic]) -> dict[str, object]:
    contiguous = np.ascontiguousarray(array)
    return {
        "dtype": contiguous.dtype.str,
        "shape": list(contiguous.shape),
        "sha256": hashlib.sha256(contiguous.reshape(-1).view(np.uint8)).hexdigest(),
    }


_versions: dict[str, str] = {}
_fingerprint: list[str] = []


def _library_versions() -> dict[str, str]:
    if not _versions:
        for name in LIBRARIES:
            try:
                _versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                _versions[name] = ""
    return _versions


def _builder_fingerprint() -> str:
    if not _fingerprint:
        digest = hashlib.sha256()
        folder = Path(__file__).parent
        for name in BUILDER_SOURCES:
            digest.update(name.encode())
            digest.update((folder / name).read_bytes())
        _fingerprint.append(digest.hexdigest())
    return _fingerprint[0]
