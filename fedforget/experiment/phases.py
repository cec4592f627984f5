"""The phases the protocol trains on a Flower grid: references, the original, method cells.

Everything here runs inside a ServerApp body (it is given the ``grid``):

* :func:`train_references`: the retrained references not in the cache;
* :func:`train_original`: the original federation, observed by every compared
  method that keeps history;
* :func:`run_cell`: one federated method's request after ``unlearn-at-round``,
  from copies of the original's state, then recovery.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fedforget.config import CLIENT_SCENARIOS, FederationConfig
from fedforget.experiment.records import Cell, PhaseRecord
from fedforget.experiment.references import reference_config, reference_variant
from fedforget.federated.clients import ClientDirectory
from fedforget.federated.federation import (
    RunRecord,
    build_methods,
    build_strategy,
    run_record,
    run_rounds,
)
from fedforget.methods import FederatedMethod, method_class
from fedforget.requests import InMemoryRequestQueue
from fedforget.scenarios import forget_set
from fedforget.state.disk_store import DiskPseudoGradientStore
from fedforget.state.store import PseudoGradientStore
from fedforget.task import model_arrays, new_model

CELLS_DIR = "cells"
"""Folder of the cells' store copies in ``state-dir`` during a comparison (``store = "disk"``)."""


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


def train_phase(grid: Any, config: FederationConfig, label: str) -> PhaseRecord:
    """Train ``config``'s federation from its initial model (no unlearning)."""
    strategy = build_strategy(config, InMemoryRequestQueue())
    final, history, wall_s = run_rounds(
        grid, config, strategy, model_arrays(new_model(config)), label=label
    )
    return PhaseRecord(final, strategy.rounds, history, wall_s)


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
        from fedforget.data import load_federated_data

        description = forget_set(config, load_federated_data(config)).description
        return Cell(
            name, reason=f"{name} forgets whole clients (the client scenario), not {description}"
        )
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
    reason = "" if record.events else refusal(record)
    return Cell(name, record if not reason else None, reason)


def refusal(record: RunRecord) -> str:
    """Why a run applied no unlearning step (its first rejected request's reason)."""
    reasons = [r.reason for r in record.requests if r.status == "rejected" and r.reason]
    return reasons[0] if reasons else "the request was not applied within num-server-rounds"
