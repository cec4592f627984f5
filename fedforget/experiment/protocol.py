"""The one experiment protocol: references, original and cells of one (target set, seed).

``fedforget experiment`` runs it for every (target set, seed) of an experiment
file; ``fedforget compare`` is a one-seed experiment (one target set) whose
rows are kept in memory; ``fedforget run`` shares its references and rows
(:func:`fedforget.experiment.commands.run_main_job`), with the method's run
as one live federation.

For one (target set, seed), :meth:`Protocol.federated` (inside a ServerApp,
given the original federation trained by :func:`~fedforget.experiment.phases.train_original`):

1. the ``references`` retrained references, from the reference cache when
   they are there (trained and cached otherwise);
2. their rows (reference k against the others), then the original's row;
3. one cell per federated method: its request after ``unlearn-at-round`` from
   the original's state, recovery until the test score reaches reference 0's
   (``recovery-stop = "retrain-acc"``) or for the whole budget.

:meth:`Protocol.centralised` then runs each centralised method from the
original model, without a simulation. Every row is computed by one
:class:`~fedforget.experiment.evaluation.Evaluator` (each model evaluated
once) and handed to a :class:`Recorder` with the phase that trained it;
cells the recorder has already are skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Protocol as Interface

from fedforget.arrays import Arrays
from fedforget.config import FederationConfig
from fedforget.experiment.centralised import centralised_cell, unlearning_data
from fedforget.experiment.evaluation import Evaluator, test_score
from fedforget.experiment.phases import Original, run_cell, train_references
from fedforget.experiment.records import PhaseRecord
from fedforget.experiment.references import load_references, save_references
from fedforget.experiment.validity import REFERENCE_KIND, reference_name

RECOVERY_STOPS = ("retrain-acc", "budget")
CELLS_DIR = "cells"


@dataclass(frozen=True)
class Plan:
    """What the protocol computes for each (target set, seed)."""

    methods: tuple[str, ...]
    """Federated methods (one cell each; refused outside the client scenarios)."""
    centralised: tuple[str, ...] = ()
    references: int = 1
    """Retrained references K (K >= 2: the retraining noise floor)."""
    recovery_stop: str = "retrain-acc"
    metrics: tuple[str, ...] | None = None
    """Registry metrics of every row besides the headline ones (None: all that apply)."""


@dataclass(frozen=True)
class CellKey:
    """One cell: a method (or ``original`` / ``retrain``), a target set, a seed.

    ``variant`` names the method's settings when they are not its defaults
    (:func:`settings_variant`): cells computed with other settings never stand
    in for one another, and a cell with the defaults keeps the path it always had.
    """

    kind: str
    method: str
    targets: tuple[str, ...]
    seed: int
    variant: str = ""

    def path(self, out_dir: Path) -> Path:
        """Where the cell's row is written (``fedforget experiment``)."""
        targets = "+".join(self.targets) or "scenario"
        name = f"{self.kind}-{self.method}" + (f"@{self.variant}" if self.variant else "")
        return out_dir / CELLS_DIR / f"seed-{self.seed}" / targets / f"{name}.json"


def settings_variant(config: FederationConfig, kind: str, method: str) -> str:
    """A short hash of ``method``'s settings that differ from its defaults ('' if none)."""
    from fedforget.methods import method_class
    from fedforget.methods.centralised import centralised_class

    table = (method_class(method) if kind == "federated" else centralised_class(method)).table
    changed = [(k, v) for k, v in config.method_settings if k.startswith(f"{table}.")]
    if not changed:
        return ""
    return hashlib.sha256(json.dumps(changed).encode()).hexdigest()[:10]


class Recorder(Interface):
    """Where the protocol's rows go: a folder of cells, or a list in memory."""

    def done(self, key: CellKey) -> bool:
        """Whether the cell's row is there already (then it is not computed)."""
        ...

    def record(self, key: CellKey, row: dict[str, Any], phase: PhaseRecord | None) -> None:
        """Keep a finished cell's row (``phase``: what trained its model, None if refused)."""
        ...


def reference_keys(references: int, targets: tuple[str, ...], seed: int) -> list[CellKey]:
    """The cells of references 0..K-1 of one (target set, seed)."""
    return [
        CellKey("federated" if k == 0 else REFERENCE_KIND, reference_name(k), targets, seed)
        for k in range(references)
    ]


@dataclass
class Trained:
    """The references one (target set, seed) used, and which came from the cache."""

    references: list[PhaseRecord]
    cached: list[bool]


class Protocol:
    """The protocol of one (target set, seed): its cells, their rows."""

    def __init__(
        self, config: FederationConfig, plan: Plan, targets: tuple[str, ...], seed: int
    ) -> None:
        self.config, self.plan, self.targets, self.seed = config, plan, targets, seed

    def key(self, kind: str, method: str) -> CellKey:
        """The cell of ``method`` (of ``kind``) in this (target set, seed), by its settings."""
        variant = "" if method == "original" else settings_variant(self.config, kind, method)
        return CellKey(kind, method, self.targets, self.seed, variant)

    def federated_keys(self) -> list[CellKey]:
        """The references', the original's and the federated methods' cells, in order."""
        return [
            *reference_keys(self.plan.references, self.targets, self.seed),
            self.key("federated", "original"),
            *(self.key("federated", m) for m in self.plan.methods),
        ]

    def centralised_keys(self) -> list[CellKey]:
        """The centralised methods' cells."""
        return [self.key("centralised", m) for m in self.plan.centralised]

    def federated(self, grid: Any, original: Original, recorder: Recorder) -> Trained:
        """References, their rows, the original's row and one cell per federated method."""
        config, plan = self.config, self.plan
        stored = load_references(config, plan.references)
        references = train_references(grid, config, stored, first=0)
        save_references(config, references)
        evaluate = Evaluator(
            config, [r.arrays for r in references], original.phase.arrays, plan.metrics
        )
        score: float | None = None
        keys = reference_keys(plan.references, self.targets, self.seed)
        for index, key in enumerate(keys):
            if not recorder.done(key):
                row = evaluate.phase_row(key.method, references[index], key.kind, index)
                recorder.record(key, row, references[index])
                score = test_score(row) if index == 0 else score
        original_key = self.key("federated", "original")
        if not recorder.done(original_key):
            recorder.record(
                original_key, evaluate.phase_row("original", original.phase), original.phase
            )
        todo = [m for m in plan.methods if not recorder.done(self.key("federated", m))]
        if todo and score is None:  # reference 0's row was there: its score alone
            score = evaluate.test_score(references[0].arrays)
        for method in todo:
            assert score is not None
            target = score if plan.recovery_stop == "retrain-acc" else 0.0
            cell = run_cell(grid, config, method, original, target)
            phase = None if cell.record is None else PhaseRecord.from_run(cell.record)
            recorder.record(self.key("federated", method), evaluate.cell_row(cell, score), phase)
        return Trained(references, [r is not None for r in stored])

    def centralised(
        self, original: Arrays, references: Sequence[Arrays], recorder: Recorder
    ) -> None:
        """Each centralised method unlearning from ``original`` (no simulation)."""
        todo = [k for k in self.centralised_keys() if not recorder.done(k)]
        if not todo:
            return
        evaluate = Evaluator(self.config, references, original, self.plan.metrics)
        data = unlearning_data(self.config)
        for key in todo:
            row, _ = centralised_cell(evaluate, original, key.method, data)
            recorder.record(key, row, None)
