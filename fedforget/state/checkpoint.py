"""The server's checkpoint: one file in ``state-dir`` that a restarted run resumes from.

``state-dir/checkpoint.safetensors`` is replaced after every round that ends
outside an unlearning step (:func:`save_checkpoint`, atomically and durably:
:mod:`fedforget.state.files`). It is one safetensors file:

* arrays: the global model (``model/<name>``) and every array of the
  strategy's state (``state/<n>``: a method's kept arrays, e.g. PUF's
  pseudo-gradients with the memory store, FedEraser's history);
* metadata ``fedforget.checkpoint``, one JSON document: the round, whether
  the recovery target ended the run, the training-relevant run config and its hash, the
  strategy's state with each array replaced by ``{"__array__": "state/<n>"}``
  (clients, forgotten and excluded sets, sampling RNG, each method's state,
  round records, completed steps, the request outcomes this checkpoint
  commits) and the per-round history;
* metadata ``fedforget.sha256``, the digest of all arrays.

No pickle: a checkpoint is data, readable with any safetensors reader.

:func:`resume_point` is what a starting run calls: no checkpoint means a
fresh start; a checkpoint of another configuration or a damaged one is an
error that says what to do (a half-written checkpoint is never loaded: an
interrupted save leaves only a temporary file, which is ignored).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedforget.arrays import Arrays
from fedforget.config import ConfigValue, FederationConfig
from fedforget.state.files import (
    DamagedFileError,
    encode_tensors,
    read_tensors,
    remove_temporary_files,
    write_durably,
)

CHECKPOINT_FILE = "checkpoint.safetensors"
"""The checkpoint, in ``state-dir``."""
FORMAT_VERSION = 1
STATE_KEY = "fedforget.checkpoint"
MODEL_PREFIX = "model/"
STATE_PREFIX = "state/"
ARRAY_REFERENCE = "__array__"
NOT_IN_FINGERPRINT = frozenset(
    {
        "out-dir",
        "progress",
        "api-enabled",
        "api-host",
        "api-port",
        "api-token-file",
        "api-token-env",
        "state-dir",
        "round-timeout",
        "data-dir",
        "download",
        "num-server-rounds",
    }
)
"""Run-config keys that do not change what the federation computes: a run may resume
under other values (another output folder, API port, data location), and with another
``num-server-rounds`` (a higher cap trains on; one at or below the checkpoint's round
runs no further round)."""

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed from; the message says what to do."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint in ``state-dir`` was written by a run of another configuration."""


@dataclass
class Checkpoint:
    """A run's state at the end of a round.

    ``state`` is the strategy's state (:meth:`UnlearningStrategy.state_dict`):
    JSON values, with numpy arrays at any leaf. ``recovered``: the recovery
    target ended the run after this round (a resumed run runs no further
    round). ``config`` is the training-relevant run config
    (:func:`config_fingerprint`) of the run that wrote it.
    """

    server_round: int
    arrays: Arrays
    state: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    recovered: bool = False
    config: dict[str, ConfigValue] = field(default_factory=dict)


def config_fingerprint(config: FederationConfig) -> dict[str, ConfigValue]:
    """The run config without the keys that do not change what the run computes."""
    return {
        key: value
        for key, value in sorted(config.to_run_config().items())
        if key not in NOT_IN_FINGERPRINT
    }


def config_hash(fingerprint: Mapping[str, ConfigValue]) -> str:
    """SHA-256 of a config fingerprint (canonical JSON)."""
    text = json.dumps(dict(sorted(fingerprint.items())), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def checkpoint_path(state_dir: str | Path) -> Path:
    """The checkpoint file of a state directory."""
    return Path(state_dir) / CHECKPOINT_FILE


# ---------------------------------------------------------------- writing
def save_checkpoint(
    state_dir: str | Path, checkpoint: Checkpoint, config: FederationConfig
) -> Path:
    """Replace the checkpoint of ``state_dir`` by ``checkpoint`` (atomic, durable); its path."""
    path = checkpoint_path(state_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {f"{MODEL_PREFIX}{k}": v for k, v in checkpoint.arrays.items()}
    fingerprint = config_fingerprint(config)
    document = {
        "format": FORMAT_VERSION,
        "server_round": checkpoint.server_round,
        "recovered": checkpoint.recovered,
        "config_hash": config_hash(fingerprint),
        "config": fingerprint,
        "model_keys": list(checkpoint.arrays),
        "state": _pack(checkpoint.state, tensors, "state"),
        "history": checkpoint.history,
    }
    # NaN (the loss of a diverged model) round-trips through Python's JSON; this file is
    # read back by fedforget only
    data = encode_tensors(tensors, {STATE_KEY: json.dumps(document)})
    write_durably(path, data)
    return path


def _pack(tree: Any, tensors: dict[str, np.ndarray], where: str) -> Any:
    """``tree`` as JSON values, its arrays moved into ``tensors`` (replaced by references)."""
    if isinstance(tree, np.ndarray):
        key = f"{STATE_PREFIX}{len(tensors)}"
        tensors[key] = tree
        return {ARRAY_REFERENCE: key}
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    if isinstance(tree, Mapping):
        packed = {}
        for key, value in tree.items():
            if not isinstance(key, str) or key == ARRAY_REFERENCE:
                raise TypeError(f"checkpoint state {where} has key {key!r}: keys must be strings")
            packed[key] = _pack(value, tensors, f"{where}.{key}")
        return packed
    if isinstance(tree, list | tuple):
        return [_pack(value, tensors, f"{where}[{i}]") for i, value in enumerate(tree)]
    raise TypeError(
        f"checkpoint state {where} is a {type(tree).__name__}: a state_dict may hold JSON "
        f"values (dict, list, str, int, float, bool, None) and numpy arrays only"
    )


# ---------------------------------------------------------------- reading
def load_checkpoint(state_dir: str | Path) -> Checkpoint | None:
    """The checkpoint of ``state_dir``, or None if it has none.

    Temporary files of an interrupted save are removed, never read.

    Raises
    ------
    CheckpointError
        If the checkpoint file is damaged (truncated, altered) or of another
        format version.

    """
    path = checkpoint_path(state_dir)
    if path.parent.is_dir():
        remove_temporary_files(path.parent)
    if not path.exists():
        return None
    try:
        tensors, metadata = read_tensors(path)
        document = json.loads(metadata[STATE_KEY])
    except (DamagedFileError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"{path} is damaged ({error}); an interrupted save never leaves a damaged "
            f"checkpoint, so the file was altered afterwards: restore it from a backup, or "
            f"delete it to start the federation again from round 1 (the request queue in the "
            f"same folder keeps the requests and the forgotten clients)"
        ) from error
    if document.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {document.get('format')!r}; this fedforget reads "
            f"format {FORMAT_VERSION}: resume with the fedforget that wrote it, or use a fresh "
            f"state-dir"
        )
    if config_hash(document["config"]) != document["config_hash"]:
        raise CheckpointError(f"{path}: its configuration does not match its hash: it was altered")
    return Checkpoint(
        server_round=int(document["server_round"]),
        arrays={k: tensors[f"{MODEL_PREFIX}{k}"] for k in document["model_keys"]},
        state=_unpack(document["state"], tensors),
        history=list(document["history"]),
        recovered=bool(document["recovered"]),
        config=dict(document["config"]),
    )


def _unpack(tree: Any, tensors: Mapping[str, np.ndarray]) -> Any:
    """The inverse of :func:`_pack`."""
    if isinstance(tree, dict):
        if set(tree) == {ARRAY_REFERENCE}:
            return tensors[tree[ARRAY_REFERENCE]]
        return {key: _unpack(value, tensors) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_unpack(value, tensors) for value in tree]
    return tree


def config_differences(
    saved: Mapping[str, ConfigValue], current: Mapping[str, ConfigValue]
) -> list[str]:
    """The keys whose values differ, in words (empty: the run may resume).

    Only keys both configs have are compared: a key only one of them has was
    added or removed by another fedforget version (a new method's settings, a
    new option at its default), not set by the user.
    """
    if config_hash(saved) == config_hash(current):
        return []
    return [
        f"{key}: {saved[key]!r} in the checkpoint, {current[key]!r} now"
        for key in sorted(set(saved) & set(current))
        if saved[key] != current[key]
    ]


def resume_point(config: FederationConfig) -> Checkpoint | None:
    """The checkpoint a run of ``config`` resumes from (None: no state-dir or no checkpoint).

    Raises
    ------
    CheckpointMismatch
        If the checkpoint was written by a run of another configuration; the
        message names the keys that differ.
    CheckpointError
        If the checkpoint is damaged or of another format.

    """
    if not config.state_dir:
        return None
    checkpoint = load_checkpoint(config.state_dir)
    if checkpoint is None:
        return None
    differences = config_differences(checkpoint.config, config_fingerprint(config))
    if differences:
        raise CheckpointMismatch(
            f"state-dir {config.state_dir} holds a checkpoint (round {checkpoint.server_round}) "
            f"of another configuration ({'; '.join(differences)}): resume with the same "
            f"configuration, or use a fresh state-dir for this one"
        )
    return checkpoint
