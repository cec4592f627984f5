"""The retrained references: their configs, their cache key and the reference cache.

Reference 0 is the federation trained without the forget set from round 1
for ``unlearn-at-round`` rounds (the original model's initial weights);
reference ``k >= 1`` is the same on the same data with its own training seed
(:func:`reference_variant`). Each is cached by what it computes
(:func:`reference_key`) under ``$FEDFORGET_CACHE/references``, so the
comparisons, experiments and runs that need it train it once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedforget.config import CLIENT_SCENARIOS, FederationConfig
from fedforget.experiment.records import PhaseRecord
from fedforget.federated.records import RoundRecord
from fedforget.registry import DATASET_REGISTRY, MODEL_REGISTRY

CACHE_ENV = "FEDFORGET_CACHE"
# Keys of the reference's config that do not change what it computes (its rounds do:
# reference_config sets num-server-rounds to unlearn-at-round)
_NOT_IN_REFERENCE_KEY = (
    "method",
    "methods",
    "recovery-target-acc",
    "out-dir",
    "progress",
    "round-timeout",
    "state-dir",
    "device",
    "mixed-precision",
    "download",
    "fraction-evaluate",
    "api-enabled",
    "api-host",
    "api-port",
    "api-token-file",
    "api-token-env",
    "plugins",  # what a plug-in computes enters through its code (reference_key)
)
_NEWER_KEYS = (
    "data-seed",
    "local-epochs-fraction",
    "backdoor-target-class",
    "backdoor-patch-size",
    "backdoor-patch-value",
    "backdoor-position",
    "backdoor-poison-fraction",
)
"""Keys added after references were first cached: in a reference's key only when they differ
from their default, so the references cached before keep their keys."""
_BACKDOOR_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(FederationConfig)
    if f.name.startswith("backdoor_")
}
REFERENCE_SEED_STRIDE = 10_007
"""Retrained reference ``k >= 1`` trains with ``seed + k * REFERENCE_SEED_STRIDE``."""


def reference_config(config: FederationConfig) -> FederationConfig:
    """The retrained reference: no forget set from round 1, ``unlearn-at-round`` rounds.

    In the ``client`` and ``backdoor`` scenarios the targets are excluded (so
    the trigger they carry changes nothing: both share one reference); in the
    others every client trains without its share of the forget set
    (``drop-forget-set``).
    """
    clients = config.forget_scenario in CLIENT_SCENARIOS
    return config.replace(
        num_server_rounds=config.unlearn_at_round,
        unlearn_at_round=0,
        forget_scenario="client" if clients else config.forget_scenario,
        data_seed=-1 if config.split_seed == config.seed else config.data_seed,
        **_BACKDOOR_DEFAULTS,
        drop_forget_set=not clients,
        exclude_clients=",".join((*config.excluded, *(config.targets if clients else ()))),
        recovery_target_acc=0.0,
        out_dir="",
        api_enabled=False,
        state_dir="",
        store="memory",
    )


def reference_variant(config: FederationConfig, index: int) -> FederationConfig:
    """The config whose retrained reference is reference ``index``: same data, its own seed.

    Reference 0 is ``config``'s own (training seed ``seed``, the original
    model's initial weights); reference ``k >= 1`` trains with seed
    ``seed + k * REFERENCE_SEED_STRIDE`` on the data of ``config``'s data seed.
    """
    if index == 0:
        return config
    return config.replace(
        seed=config.seed + index * REFERENCE_SEED_STRIDE, data_seed=config.split_seed
    )


def reference_key(config: FederationConfig) -> str:
    """Hash of everything the reference run depends on (configuration, targets, seeds).

    A plug-in dataset or model adds the source of the modules its registry
    entry depends on, so that editing a plug-in never reuses a stale reference.
    """
    defaults = FederationConfig().to_run_config()
    relevant: dict[str, Any] = {
        key: value
        for key, value in reference_config(config).to_run_config().items()
        if key not in _NOT_IN_REFERENCE_KEY
        and "." not in key
        and not (key in _NEWER_KEYS and value == defaults[key])
    }
    for key, registry, name in (
        ("dataset-code", DATASET_REGISTRY, config.dataset),
        ("model-code", MODEL_REGISTRY, config.model),
    ):
        if not registry.entry(name).builtin:
            relevant[key] = registry.fingerprint(name)
    text = json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where references are cached: ``$FEDFORGET_CACHE/references`` (~/.cache/fedforget)."""
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "fedforget"))
    return root / "references"


def load_reference(config: FederationConfig) -> PhaseRecord | None:
    """The cached reference of ``config``, or None."""
    from fedforget.federated.federation import read_arrays

    folder = cache_dir() / reference_key(config)
    if not (folder / "record.json").is_file() or not (folder / "model.npz").is_file():
        return None
    saved = json.loads((folder / "record.json").read_text())
    return PhaseRecord(
        arrays=read_arrays(folder / "model.npz"),
        rounds=[RoundRecord(**r) for r in saved["rounds"]],
        history=saved["history"],
        wall_s=saved["wall_s"],
    )


def save_reference(config: FederationConfig, reference: PhaseRecord) -> None:
    """Cache a reference (written to a temporary folder, then renamed)."""
    folder = cache_dir() / reference_key(config)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    np.savez(partial / "model.npz", **reference.arrays)
    record = {
        "config": reference_config(config).to_run_config(),
        "rounds": [asdict(r) for r in reference.rounds],
        "history": reference.history,
        "wall_s": reference.wall_s,
    }
    (partial / "record.json").write_text(json.dumps(record, indent=2))
    if folder.exists():  # another run cached it meanwhile: keep that one
        for path in partial.iterdir():
            path.unlink()
        partial.rmdir()
        return
    partial.rename(folder)


def load_references(config: FederationConfig, count: int) -> list[PhaseRecord | None]:
    """References ``0..count-1`` of ``config`` from the cache (None where not cached)."""
    return [load_reference(reference_variant(config, index)) for index in range(count)]


def save_references(
    config: FederationConfig, references: Sequence[PhaseRecord], first: int = 0
) -> None:
    """Cache references ``first, first + 1, ...`` that are not cached yet."""
    for index, reference in enumerate(references, start=first):
        variant = reference_variant(config, index)
        if not (cache_dir() / reference_key(variant)).is_dir():
            save_reference(variant, reference)
