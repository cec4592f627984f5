"""Unlearning methods side by side on one federation: ``fedforget compare`` and ``fedforget run``.

``fedforget compare`` runs in ONE Flower simulation:

1. the **retrained reference**: the federation without the targets for
   ``unlearn-at-round`` rounds (cached by configuration, targets and seed, so a
   second call reuses it);
2. the **original** federation with every client for the same rounds, while
   every compared method that keeps history (PUF's latest updates,
   FedEraser's history, ...) observes it;
3. one **cell** per method: from the original model and the method's state,
   the request for the targets arrives after round ``unlearn-at-round``, the
   method's step runs, and the remaining clients recover until the test score
   reaches the reference's (the paper's rule; ``num-server-rounds`` caps it)
   or for the whole budget;
4. after the simulation, each **centralised** method
   (:mod:`fedforget.methods.centralised`) unlearns the same forget set from the
   original model, seeing the forget and retain examples directly.

The forget set is a scenario (:mod:`fedforget.scenarios`): the targets' data
(``client``, where federated and centralised methods meet; ``backdoor``, the
same with a trigger in the targets' data), a random fraction of examples or a
whole class. Federated methods forget whole clients; in the other scenarios
they are listed as refused, and the retrained reference is the federation
trained without the forget set.

With ``references`` K >= 2, K - 1 more retrained references are trained on the
same data with other training seeds (:func:`reference_variant`, cached like the
first): their spread is the retraining noise floor the table marks gaps
against (:mod:`fedforget.experiment.validity`).

``fedforget run`` (the main job) is the same comparison for the run's
``method`` alone, as one continuous federation (so the live API can serve it
from round 1): the reference (from the cache when it is there), then the run.

Every model is evaluated the same way (:func:`fedforget.metrics.evaluate_unlearning`)
and becomes one row of ``results.json`` with its costs, measured from the
spine's round records: rounds after the request, client-epochs, bytes sent and
received (model arrays), bytes the method kept on the server, wall time.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedforget.arrays import Arrays
from fedforget.config import CLIENT_SCENARIOS, ConfigError, FederationConfig
from fedforget.data import load_federated_data
from fedforget.data.augment import get_augmentation
from fedforget.experiment.validity import REFERENCE_KIND, reference_name
from fedforget.federated.clients import ClientDirectory
from fedforget.federated.federation import (
    RunRecord,
    build_methods,
    build_strategy,
    open_store,
    read_arrays,
    run_record,
    run_rounds,
)
from fedforget.federated.records import RoundRecord
from fedforget.methods import FederatedMethod, method_class, method_names
from fedforget.methods.centralised import UnlearningData, centralised_class, centralised_names
from fedforget.metrics import (
    SegmentationUnlearningMetrics,
    UnlearningMetrics,
    evaluate_forget_set,
    scenario_metrics,
)
from fedforget.provenance import provenance
from fedforget.registry import DATASET_REGISTRY, MODEL_REGISTRY
from fedforget.requests import InMemoryRequestQueue, RequestNotApplied
from fedforget.results import REFERENCE, write_results
from fedforget.scenarios import ForgetSet, check_forget_set, forget_set
from fedforget.state.checkpoint import checkpoint_path
from fedforget.state.disk_store import DiskPseudoGradientStore
from fedforget.state.store import PseudoGradientStore
from fedforget.task import model_arrays, model_with, new_model
from fedforget.training import resolve_device

RECOVERY_STOPS = ("retrain-acc", "budget")
CELLS_DIR = "cells"
"""Folder of the cells' store copies in ``state-dir`` during a comparison (``store = "disk"``)."""
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


@dataclass
class PhaseRecord:
    """A phase that trained a model: its model, rounds, history and wall time."""

    arrays: Arrays
    rounds: list[RoundRecord]
    history: list[dict[str, Any]]
    wall_s: float

    def cost(self, first_round: int = 1) -> dict[str, float | int]:
        """Rounds, client-epochs and bytes from ``first_round`` on, and the wall time."""
        chosen = [r for r in self.rounds if r.server_round >= first_round]
        return {
            "rounds": len(chosen),
            "client_epochs": round(sum(r.client_epochs for r in chosen), 3),
            "bytes_up": sum(r.bytes_up for r in chosen),
            "bytes_down": sum(r.bytes_down for r in chosen),
            "server_storage_bytes": 0,
            "wall_s": round(self.wall_s, 2),
        }


@dataclass
class Cell:
    """One method applied to the original model: its run, or why it was refused."""

    method: str
    record: RunRecord | None = None
    reason: str = ""


@dataclass
class Comparison:
    """Everything the comparison trained."""

    reference: PhaseRecord
    original: PhaseRecord
    cells: list[Cell] = field(default_factory=list)
    reference_cached: bool = False
    more_references: list[PhaseRecord] = field(default_factory=list)
    """References 1..K-1: the same data, other training seeds (:func:`reference_variant`)."""


# ------------------------------------------------------------------ configs
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


def original_config(config: FederationConfig, methods: Sequence[str]) -> FederationConfig:
    """The original federation; every compared method that keeps history observes it.

    It touches no ``state-dir``: with ``store = "disk"``, :func:`train_original`
    is given the disk store to keep the pseudo-gradients in.
    """
    serving = methods if config.forget_scenario in CLIENT_SCENARIOS else ()
    keeping = [m for m in serving if method_class(m).needs.history]
    return config.replace(
        num_server_rounds=config.unlearn_at_round,
        unlearn_at_round=0,
        method=keeping[0] if keeping else config.method,
        methods=",".join(keeping),
        recovery_target_acc=0.0,
        out_dir="",
        api_enabled=False,
        state_dir="",
        store="memory",
    )


def cell_config(config: FederationConfig, method: str, target_score: float) -> FederationConfig:
    """One method's run after the original: its request, recovery to ``target_score``.

    Like the original it touches no ``state-dir``: :func:`run_cell` gives a
    disk-store method its own copy of the original's store.
    """
    return config.replace(
        method=method,
        methods="",
        recovery_target_acc=target_score,
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


# --------------------------------------------------------- reference cache
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


# ------------------------------------------------------------ the phases
def train_phase(grid: Any, config: FederationConfig, label: str) -> PhaseRecord:
    """Train ``config``'s federation from its initial model (no unlearning)."""
    strategy = build_strategy(config, InMemoryRequestQueue())
    final, history, wall_s = run_rounds(
        grid, config, strategy, model_arrays(new_model(config)), label=label
    )
    return PhaseRecord(final, strategy.rounds, history, wall_s)


@dataclass
class Original:
    """The original federation: its model and rounds, and the methods that observed it."""

    phase: PhaseRecord
    methods: dict[str, FederatedMethod]
    directory: ClientDirectory
    store: DiskPseudoGradientStore | None = None
    """The disk store the methods kept their pseudo-gradients in (None: in memory)."""


def train_original(
    grid: Any,
    config: FederationConfig,
    methods: Sequence[str],
    store: DiskPseudoGradientStore | None = None,
) -> Original:
    """Train the original federation; the methods of ``methods`` that keep history observe it.

    ``store``: the disk store they share (``store = "disk"``); None keeps
    each method's pseudo-gradients in memory.
    """
    before = original_config(config, methods)
    instances = build_methods(before, store=store)
    strategy = build_strategy(before, InMemoryRequestQueue(), instances)
    arrays, history, wall_s = run_rounds(
        grid, before, strategy, model_arrays(new_model(config)), label="[original] "
    )
    return Original(
        PhaseRecord(arrays, strategy.rounds, history, wall_s), instances, strategy.directory, store
    )


def fork(method: FederatedMethod, store: PseudoGradientStore | None = None) -> FederatedMethod:
    """A new instance of ``method`` in the same state (its checkpoint state), sharing nothing.

    ``store`` replaces the pseudo-gradient store of the method's context: a
    copy of the disk store ``method`` keeps its files in (its state names them).
    """
    context = method.context
    if store is not None:
        context = dataclasses.replace(context, pseudo_gradient_store=lambda: store)
    clone = type(method)(context)
    clone.load_state_dict(method.state_dict())
    return clone


@contextlib.contextmanager
def store_copy(original: Original, name: str) -> Iterator[PseudoGradientStore | None]:
    """A copy of the original's disk store for ``name``'s cell, removed afterwards (None: memory).

    The copy (``<state-dir>/cells/<name>/``) holds hard links to the files,
    which are never changed once written: the cell's erasure of its targets
    and its recovery rounds leave the original's store as it was.
    """
    if original.store is None:
        yield None
        return
    folder = original.store.directory.parent / CELLS_DIR / name
    shutil.rmtree(folder, ignore_errors=True)  # left by an interrupted comparison
    shutil.copytree(original.store.directory, folder, copy_function=_link_or_copy)
    try:
        yield DiskPseudoGradientStore(folder, original.store.dtype)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # the last cell's copy removes the folder of copies


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def run_cell(
    grid: Any, config: FederationConfig, name: str, original: Original, target_score: float
) -> Cell:
    """``name``'s request after ``unlearn-at-round``, from copies of the original's state.

    The method's state and the client directory are copied, so one original
    serves any number of cells.
    """
    if config.forget_scenario not in CLIENT_SCENARIOS:
        reason = (
            f"{name} forgets whole clients (the client scenario), not "
            f"{_forget_set(config).description}"
        )
        return Cell(name, reason=reason)
    cell = cell_config(config, name, target_score)
    with store_copy(original, name) as store:
        strategy = build_strategy(
            cell,
            InMemoryRequestQueue(),
            {name: fork(original.methods[name], store)},
            copy.deepcopy(original.directory),
        )
        final, history, wall_s = run_rounds(
            grid,
            cell,
            strategy,
            original.phase.arrays,
            first_round=config.unlearn_at_round + 1,
            label=f"[{name}] ",
        )
        record = run_record(cell, strategy, final, history, wall_s)
    reason = "" if record.events else _refusal(record)
    return Cell(name, record if not reason else None, reason)


def recovery_target(config: FederationConfig, reference: PhaseRecord, recovery_stop: str) -> float:
    """The test score recovery stops at: the reference's (``retrain-acc``), or none (0)."""
    return _evaluate(config, reference.arrays).test_score if recovery_stop == "retrain-acc" else 0.0


def train_references(
    grid: Any, config: FederationConfig, cached: Sequence[PhaseRecord | None], first: int = 1
) -> list[PhaseRecord]:
    """References ``first, first + 1, ...``: each cached one as given, the others trained."""
    return [
        reference
        if reference is not None
        else train_phase(
            grid,
            reference_config(reference_variant(config, index)),
            f"[reference {index}] " if index else "[reference] ",
        )
        for index, reference in enumerate(cached, start=first)
    ]


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


def compare_on_grid(
    grid: Any,
    config: FederationConfig,
    methods: Sequence[str],
    recovery_stop: str,
    reference: PhaseRecord | None,
    progress: bool = True,
    more_references: Sequence[PhaseRecord | None] = (),
) -> Comparison:
    """The comparison's ServerApp body: references (unless given), original, one cell per method.

    ``more_references`` holds references 1..K-1 (None: to train). With
    ``store = "disk"`` the original's methods keep their pseudo-gradients in
    ``state-dir/pseudo-gradients``, each cell works on a copy of them, and at
    the end the targets' files are erased from the original's store too.
    """
    started = time.monotonic()
    cached = reference is not None
    if reference is None:
        reference = train_phase(grid, reference_config(config), "[reference] ")
    more = train_references(grid, config, more_references)
    target = recovery_target(config, reference, recovery_stop)
    store = open_store(config, fresh=True)
    original = train_original(
        grid, config, methods, store if isinstance(store, DiskPseudoGradientStore) else None
    )
    comparison = Comparison(
        reference, original.phase, reference_cached=cached, more_references=more
    )
    for number, name in enumerate(methods, start=1):
        cell = run_cell(grid, config, name, original, target)
        comparison.cells.append(cell)
        if progress:
            elapsed = time.monotonic() - started
            left = elapsed / number * (len(methods) - number)
            print(
                f"compare: {number}/{len(methods)} methods done ({name}: "
                f"{'refused' if cell.reason else 'applied'}), {elapsed:.0f} s, about "
                f"{left:.0f} s left",
                flush=True,
            )
    if original.store is not None and config.forget_scenario == "client":
        for method in original.methods.values():  # the cells forgot the targets: so does the store
            method.forget(config.targets)
    return comparison


def _refusal(record: RunRecord) -> str:
    reasons = [r.reason for r in record.requests if r.status == "rejected" and r.reason]
    return reasons[0] if reasons else "the request was not applied within num-server-rounds"


def _forget_set(config: FederationConfig) -> ForgetSet:
    return forget_set(config, load_federated_data(config))


def _evaluate(
    config: FederationConfig, model: Arrays | nn.Module
) -> UnlearningMetrics | SegmentationUnlearningMetrics:
    """A model's unlearning metrics on the config's forget set (test-time inputs)."""
    if not isinstance(model, nn.Module):
        model = model_with(config, model)
    return evaluate_forget_set(
        model,
        load_federated_data(config).data,
        _forget_set(config),
        resolve_device(config.device),
    )


# ------------------------------------------------------------ centralised
def unlearning_data(config: FederationConfig) -> UnlearningData:
    """What a centralised method sees: the forget and retain examples of the scenario."""
    federated = load_federated_data(config)
    data = federated.data
    forget = _forget_set(config)
    forget_index = torch.from_numpy(forget.forget_index)
    retain_index = torch.from_numpy(forget.retain_index)
    return UnlearningData(
        forget_x=data.train_x[forget_index],
        forget_y=data.train_y[forget_index],
        retain_x=data.train_x[retain_index],
        retain_y=data.train_y[retain_index],
        task=data.task,
        num_classes=data.num_classes,
        scenario=forget.scenario,
        forget_class=forget.forget_class,
        new_model=lambda: new_model(config, federated),
        augmentation=get_augmentation(data.augmentation) if config.augment else None,
        seed=config.seed,
        device=str(resolve_device(config.device)),
    )


def centralised_cell(
    config: FederationConfig, original: Arrays, name: str, data: UnlearningData
) -> tuple[dict[str, Any], nn.Module | None]:
    """One centralised method unlearning ``data``'s forget set from ``original``: row, model.

    The model is None when the method refuses the scenario or diverges (a
    loss that is not finite): the row is ``refused`` with the reason, as a
    federated step that is not finite is, and the other cells go on.
    """
    cls = centralised_class(name)
    reason = cls.refusal(data.scenario, data.task)
    if reason:
        return refused_row(config, name, reason, kind="centralised"), None
    settings = cls.settings(config.settings_of(cls.table))
    started = time.monotonic()
    try:
        outcome = cls().unlearn(model_with(config, original), data, settings)
    except FloatingPointError as error:
        reason = f"diverged: {error} ({cls.table}.*)"
        return refused_row(config, name, reason, kind="centralised"), None
    cost = {
        "forget_epochs": round(outcome.forget_epochs, 3),
        "retain_epochs": round(outcome.retain_epochs, 3),
        "wall_s": round(time.monotonic() - started, 2),
    }
    return model_row(config, name, outcome.model, cost, kind="centralised"), outcome.model


def centralised_rows(
    config: FederationConfig, original: Arrays, names: Sequence[str], progress: bool = True
) -> list[dict[str, Any]]:
    """One row per centralised method: unlearned from ``original`` on the scenario's forget set."""
    data = unlearning_data(config)
    rows = []
    for number, name in enumerate(names, start=1):
        row, _ = centralised_cell(config, original, name, data)
        rows.append(row)
        if progress:
            print(
                f"compare: centralised {number}/{len(names)} ({name}: "
                f"{'refused' if row['status'] != 'ok' else 'applied'})",
                flush=True,
            )
    return rows


# ---------------------------------------------------------------- results
def refused_row(
    config: FederationConfig, name: str, reason: str, kind: str = "federated"
) -> dict[str, Any]:
    """The row of a method that could not serve the request, with the reason."""
    return {
        "method": name,
        "kind": kind,
        "status": "refused",
        "reason": reason,
        "scenario": config.forget_scenario,
        "targets": list(_forget_set(config).targets),
        "seed": config.seed,
    }


def model_row(
    config: FederationConfig,
    name: str,
    model: Arrays | nn.Module,
    cost: dict[str, Any],
    kind: str = "federated",
) -> dict[str, Any]:
    """One row: a model's unlearning metrics and the cost of getting it."""
    if not isinstance(model, nn.Module):
        model = model_with(config, model)
    metrics = _evaluate(config, model)
    forget = _forget_set(config)
    extra = scenario_metrics(
        model, load_federated_data(config).data, forget, resolve_device(config.device)
    )
    return {
        "method": name,
        "kind": kind,
        "status": "ok",
        "scenario": forget.scenario,
        "forget_size": len(forget.forget_index),
        "targets": list(forget.targets),
        "seed": config.seed,
        **metrics.as_dict(),
        **extra,
        "recovery_rounds": None,
        "recovered": None,
        "cost": cost,
    }


def test_score(row: dict[str, Any]) -> float:
    """The score the recovery rule compares: test accuracy, or test Dice with background."""
    return float(row["test_acc"] if "test_acc" in row else row["test_dice"])


def cell_row(config: FederationConfig, cell: Cell, reference_score: float) -> dict[str, Any]:
    """The row of one method: metrics after recovery, recovery rounds, costs (or the refusal)."""
    if cell.record is None:
        return refused_row(config, cell.method, cell.reason)
    return method_run_row(config, cell.method, cell.record, reference_score)


def method_run_row(
    config: FederationConfig, name: str, record: RunRecord, reference_score: float
) -> dict[str, Any]:
    """The row of a run that applied ``name``'s step after ``unlearn-at-round``."""
    first = config.unlearn_at_round + 1
    # a continuous run (fedforget run) also holds the original's rounds: not the method's time
    before_s = max((h["elapsed_s"] for h in record.history if h["round"] == first - 1), default=0)
    after = PhaseRecord(
        record.final_arrays, record.rounds, record.history, record.wall_s - before_s
    )
    event = record.events[0]
    cost = {
        **after.cost(first),
        "step_rounds": event.server_round - event.first_round + 1,
        "server_storage_bytes": event.stored_bytes,
    }
    row = model_row(config, name, record.final_arrays, cost)
    row["recovery_rounds"] = record.last_round - config.unlearn_at_round
    score = test_score(row)
    row["recovered"] = bool(score >= reference_score)
    row["unlearning_round"] = event.first_round
    row["update_norm"] = event.update_norm
    return row


def comparison_rows(config: FederationConfig, comparison: Comparison) -> list[dict[str, Any]]:
    """Rows of ``original``, every cell, ``retrain`` (the reference) and references 1..K-1."""
    reference = model_row(
        config, REFERENCE, comparison.reference.arrays, comparison.reference.cost()
    )
    original = model_row(config, "original", comparison.original.arrays, comparison.original.cost())
    score = test_score(reference)
    cells = [cell_row(config, cell, score) for cell in comparison.cells]
    return [original, *cells, reference, *more_reference_rows(config, comparison.more_references)]


def more_reference_rows(
    config: FederationConfig, references: Sequence[PhaseRecord]
) -> list[dict[str, Any]]:
    """Rows of references 1..K-1 (``"kind": "reference"``, ``retrain-1``, ...)."""
    return [
        model_row(config, reference_name(index), phase.arrays, phase.cost(), kind=REFERENCE_KIND)
        for index, phase in enumerate(references, start=1)
    ]


def _history(run: str, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"run": run, **entry} for entry in history]


def resolve_methods(names: Sequence[str] | None) -> list[str]:
    """The methods to compare (default: every registered one except ``retrain``)."""
    chosen = list(names) if names else [m for m in method_names() if m != REFERENCE]
    unknown = [m for m in chosen if m not in method_names()]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown)}; registered methods are "
            f"{', '.join(method_names())}"
        )
    # the reference IS retrain (same initial model, same seeds, no targets): not run twice
    return [m for m in dict.fromkeys(chosen) if m != REFERENCE]


def resolve_centralised(names: Sequence[str] | None) -> list[str]:
    """The centralised methods to compare (default: every registered one; ``[]`` for none)."""
    chosen = list(dict.fromkeys(names)) if names is not None else centralised_names()
    unknown = [m for m in chosen if m not in centralised_names()]
    if unknown:
        raise ConfigError(
            f"unknown centralised method(s) {', '.join(unknown)}; registered centralised "
            f"methods are {', '.join(centralised_names())}"
        )
    return chosen


def _check(config: FederationConfig, recovery_stop: str) -> None:
    if recovery_stop not in RECOVERY_STOPS:
        raise ConfigError(f"recovery-stop must be one of {', '.join(RECOVERY_STOPS)}")
    if not config.unlearn_at_round or (
        config.forget_scenario in CLIENT_SCENARIOS and not config.targets
    ):
        raise ConfigError(
            "a comparison forgets after round unlearn-at-round: set unlearn-at-round (and "
            "unlearn-clients for the client scenario)"
        )
    if config.pretrained_weights and not Path(config.pretrained_weights).is_file():
        raise ConfigError(
            f"pretrained-weights {config.pretrained_weights!r} does not exist: give the path of "
            f"a state dict saved with torch.save(model.state_dict(), path)"
        )
    check_forget_set(config)  # fail on missing data or a bad forget set before any training


def check_references(references: int) -> None:
    """Refuse a reference count below 1, saying what it means."""
    if references < 1:
        raise ConfigError(
            f"references must be >= 1 (retrained models on the same data; >= 2 gives the "
            f"retraining noise floor), got {references}"
        )


def run_comparison(
    config: FederationConfig,
    out_dir: Path,
    methods: Sequence[str] | None = None,
    recovery_stop: str = "retrain-acc",
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    centralised: Sequence[str] | None = None,
    references: int = 1,
) -> dict[str, Any]:
    """``fedforget compare``: every method on the same original model; write and return results.

    ``methods`` are federated methods (default: all), ``centralised`` the
    centralised ones (default: all; an empty list for none); ``references``
    the retrained models on the same data (K >= 2 adds the noise floor).
    """
    from fedforget.simulation import simulate_app

    check_references(references)
    _check(config, recovery_stop)
    if config.store == "disk" and checkpoint_path(config.state_dir).is_file():
        raise ConfigError(
            f"state-dir {config.state_dir} holds the checkpoint of a run, whose pseudo-gradients "
            f"the comparison would replace: give the comparison a state-dir of its own"
        )
    names = resolve_methods(methods)
    central = resolve_centralised(centralised)
    started = time.monotonic()
    cached, *more_cached = load_references(config, references)
    comparison = simulate_app(
        lambda grid: compare_on_grid(
            grid, config, names, recovery_stop, cached, config.progress, more_cached
        ),
        config.num_partitions,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        workload=config,
    )
    if not comparison.reference_cached:
        save_reference(config, comparison.reference)
    save_references(config, comparison.more_references, first=1)
    history = [
        *_history(REFERENCE, comparison.reference.history),
        *_history("original", comparison.original.history),
        *(
            entry
            for cell in comparison.cells
            if cell.record is not None
            for entry in _history(cell.method, cell.record.history)
        ),
    ]
    results = {
        "config": {**config.to_run_config(), "recovery-stop": recovery_stop},
        "targets": list(config.targets),
        "references": references,
        "rows": [
            *comparison_rows(config, comparison),
            *centralised_rows(config, comparison.original.arrays, central, config.progress),
        ],
        "history": history,
        "timing": {
            "reference_cached": comparison.reference_cached,
            "total_s": round(time.monotonic() - started, 2),
        },
        "provenance": provenance(),
    }
    write_results(out_dir, results)
    return results


def run_main_job(
    config: FederationConfig,
    out_dir: Path,
    recovery_stop: str = "retrain-acc",
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    references: int = 1,
) -> dict[str, Any]:
    """``fedforget run``: the references (cached), then one federation with the run's method.

    The run is one continuous federation (``flwr run`` would run the same), so
    the live unlearning API serves it from round 1 when ``api-enabled``.
    """
    from fedforget.simulation import simulate, simulate_app

    check_references(references)
    _check(config, recovery_stop)
    if config.forget_scenario not in CLIENT_SCENARIOS:
        raise ConfigError(
            f"fedforget run forgets clients with {config.method}; forget-scenario="
            f"{config.forget_scenario!r} is compared by `fedforget compare --scenario "
            f"{config.forget_scenario}`"
        )
    started = time.monotonic()
    stored = load_references(config, references)
    cached = stored[0] is not None
    if any(r is None for r in stored):
        trained = simulate_app(
            lambda grid: train_references(grid, config, stored, first=0),
            config.num_partitions,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            workload=reference_config(config),
        )
        save_references(config, trained)
    else:
        trained = [r for r in stored if r is not None]
    reference, *more = trained
    reference_score = _evaluate(config, reference.arrays).test_score
    run = config.replace(
        recovery_target_acc=reference_score if recovery_stop == "retrain-acc" else 0.0,
        out_dir=str(out_dir / "runs" / config.method),
    )
    record = simulate(run, num_cpus, num_gpus=num_gpus)
    if not record.events:
        raise RequestNotApplied(
            f"the unlearning request was not applied: {_refusal(record)} (see "
            f"{Path(run.out_dir) / 'requests.json'})"
        )
    original_rounds = [r for r in record.rounds if r.server_round <= config.unlearn_at_round]
    original_history = [h for h in record.history if h["round"] <= config.unlearn_at_round]
    original = PhaseRecord(
        record.events[0].model_before,
        original_rounds,
        original_history,
        original_history[-1]["elapsed_s"] if original_history else 0.0,
    )
    rows = [
        model_row(config, "original", original.arrays, original.cost()),
        method_run_row(config, config.method, record, reference_score),
        model_row(config, REFERENCE, reference.arrays, reference.cost()),
        *more_reference_rows(config, more),
    ]
    results = {
        "config": {**config.to_run_config(), "recovery-stop": recovery_stop},
        "targets": list(config.targets),
        "references": references,
        "rows": rows,
        "history": [
            *_history(REFERENCE, reference.history),
            *_history(config.method, record.history),
        ],
        "unlearning": [
            {k: v for k, v in asdict(e).items() if k != "model_before"} for e in record.events
        ],
        "timing": {"reference_cached": cached, "total_s": round(time.monotonic() - started, 2)},
        "provenance": provenance(),
    }
    write_results(out_dir, results)
    return results
