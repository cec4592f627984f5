"""``fedforget experiment FILE --out DIR``: every (method, target set, seed) cell, resumable.

Per seed, one Flower simulation trains the original federation once (every
compared method that keeps history observes it), then for each target set
the ``references`` retrained references (from the reference cache when they
are there: the same data, each its own training seed) and one cell per
federated method. Centralised methods then run from the saved original
model, without a simulation.

Reference 0 is the ``retrain`` row (kind ``federated``), references 1..K-1
the ``retrain-1``... rows (kind ``reference``). Every row is evaluated against
the references (a reference against the others), and records K: a row
computed with another K is computed again.

Each finished cell is written at once to ``DIR/cells/seed-<s>/<targets>/<kind>-<method>.json``
(atomically), so an interrupted run started again with the same file and
``--out`` computes only the cells that are missing. ``DIR/experiment.toml``
keeps the experiment file; a different file for the same ``DIR`` is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedforget.arrays import Arrays
from fedforget.config import ConfigError, FederationConfig
from fedforget.experiment.spec import ExperimentSpec, load_experiment
from fedforget.experiment.validity import REFERENCE, REFERENCE_KIND, reference_name

SPEC_FILE = "experiment.toml"
CELLS_DIR = "cells"
ORIGINALS_DIR = "originals"


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
        """Where the cell's row is written."""
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


def method_cell(
    spec: ExperimentSpec, kind: str, method: str, targets: tuple[str, ...], seed: int
) -> CellKey:
    """The cell of a federated or centralised method, keyed by its settings in ``spec``."""
    return CellKey(kind, method, targets, seed, settings_variant(spec.config, kind, method))


def all_cells(spec: ExperimentSpec) -> list[CellKey]:
    """Every cell of the experiment, in the order they are computed."""
    cells = []
    for seed in spec.seeds:
        for targets in spec.target_sets:
            cells.append(CellKey("federated", REFERENCE, targets, seed))
            cells += [
                CellKey("reference", reference_name(k), targets, seed)
                for k in range(1, spec.references)
            ]
            cells.append(CellKey("federated", "original", targets, seed))
            cells += [method_cell(spec, "federated", m, targets, seed) for m in spec.methods]
        for targets in spec.target_sets:
            cells += [method_cell(spec, "centralised", m, targets, seed) for m in spec.centralised]
    return cells


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(value, indent=1, allow_nan=False))
    os.replace(partial, path)


def save_arrays(path: Path, arrays: Arrays) -> None:
    """Write arrays as ``.npz`` under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)


class Progress:
    """Cells done out of the total, and an estimate of the time left."""

    def __init__(self, total: int, done: int, show: bool) -> None:
        self.total, self.done, self.show = total, done, show
        self.computed = 0
        self.started = time.monotonic()

    def tick(self, key: CellKey) -> None:
        """Count one computed cell and print the progress line."""
        self.done += 1
        self.computed += 1
        if not self.show:
            return
        elapsed = time.monotonic() - self.started
        left = elapsed / self.computed * (self.total - self.done)
        targets = ",".join(key.targets) or "-"
        print(
            f"experiment: {self.done}/{self.total} cells ({key.kind} {key.method}, targets "
            f"{targets}, seed {key.seed}), {elapsed:.0f} s, about {left:.0f} s left",
            flush=True,
        )


class Runner:
    """Runs the missing cells of one experiment into ``out_dir``."""

    def __init__(
        self,
        spec: ExperimentSpec,
        out_dir: Path,
        num_cpus: int | None = None,
        progress: bool = True,
        observers: tuple[str, ...] = (),
    ) -> None:
        self.spec, self.out_dir, self.num_cpus = spec, out_dir, num_cpus
        self.observers = observers
        """More methods that observe the originals (``fedforget tune``'s, for its trials)."""
        self.originals: dict[tuple[tuple[str, ...], int], Any] = {}
        """The originals this runner trained, by (target set, seed)."""
        self.cells = all_cells(spec)
        self._done = {key for key in self.cells if self._on_disk(key)}
        self.progress = Progress(len(self.cells), len(self._done), progress)
        self.computed: list[CellKey] = []
        self.finished_at: list[float] = []
        """``time.monotonic()`` when each computed cell was written (for benchmarks)."""

    def _on_disk(self, key: CellKey) -> bool:
        """Whether the cell's row is on disk, computed with the experiment's references."""
        path = key.path(self.out_dir)
        if not path.is_file():
            return False
        return json.loads(path.read_text()).get("references", 1) == self.spec.references

    def done(self, key: CellKey) -> bool:
        """Whether the cell's row is on disk (computed with the experiment's references)."""
        return key in self._done

    def record(self, key: CellKey, row: dict[str, Any]) -> None:
        """Write a finished cell (with the references it was computed with, and where)."""
        from fedforget.provenance import provenance

        row = {**row, "references": self.spec.references, "provenance": provenance()}
        write_json_atomic(key.path(self.out_dir), row)
        self._done.add(key)
        self.computed.append(key)
        self.finished_at.append(time.monotonic())
        self.progress.tick(key)

    @property
    def original_per_target(self) -> bool:
        """Whether each target set has its own original: the backdoor poisons the targets."""
        return self.spec.config.forget_scenario == "backdoor"

    def original_path(self, seed: int, targets: tuple[str, ...] = ()) -> Path:
        """Where the original model of a seed (backdoor: of a target set too) is kept."""
        name = f"seed-{seed}"
        if self.original_per_target:
            name += f"-{'+'.join(targets)}"
        return self.out_dir / ORIGINALS_DIR / f"{name}.npz"

    def run(self) -> list[CellKey]:
        """Compute every missing cell; return the cells computed by this call."""
        from fedforget.simulation import simulate_app

        for seed in self.spec.seeds:
            missing = [k for k in self.cells if k.seed == seed and not self.done(k)]
            federated = [k for k in missing if k.kind == "federated" or k.kind == REFERENCE_KIND]
            originals = {k.targets for k in missing if k.kind == "centralised"}
            if federated or any(not self.original_path(seed, t).is_file() for t in originals):
                simulate_app(
                    lambda grid, seed=seed: self.run_seed(grid, seed),
                    self.spec.config.num_partitions,
                    num_cpus=self.num_cpus,
                    workload=self.spec.config,
                )
            if originals:
                self.run_centralised(seed)
        return self.computed

    def run_seed(self, grid: Any, seed: int) -> None:
        """The ServerApp body of one seed: originals, then references and federated cells.

        One original serves every target set of the seed (the targets train in
        it as every client does), except in the backdoor scenario, where the
        target set decides which clients carry the trigger.
        """
        from fedforget.comparison import (
            load_references,
            recovery_target,
            run_cell,
            save_references,
            train_original,
            train_references,
        )

        spec = self.spec
        original = None
        for targets in spec.target_sets:
            config = spec.cell_config(targets, seed)
            keys = reference_keys(spec, targets, seed)
            original_key = CellKey("federated", "original", targets, seed)
            todo = [
                m
                for m in spec.methods
                if not self.done(method_cell(spec, "federated", m, targets, seed))
            ]
            federated = bool(todo) or not all(self.done(k) for k in (*keys, original_key))
            if not federated and self.original_path(seed, targets).is_file():
                continue
            if original is None or self.original_per_target:
                original = train_original(grid, config, (*spec.methods, *self.observers))
            self.originals[(targets, seed)] = original
            save_arrays(self.original_path(seed, targets), original.phase.arrays)
            if not federated:
                continue
            references = train_references(
                grid, config, load_references(config, spec.references), first=0
            )
            save_references(config, references)
            target = recovery_target(config, references[0], spec.recovery_stop)
            evaluate = CellEvaluator(config, [r.arrays for r in references], original.phase.arrays)
            for index, key in enumerate(keys):
                if not self.done(key):
                    row = evaluate.phase_row(key.method, references[index], key.kind, index)
                    self.record(key, row)
            if not self.done(original_key):
                self.record(original_key, evaluate.phase_row("original", original.phase))
            for method in todo:
                cell = run_cell(grid, config, method, original, target)
                self.record(
                    method_cell(spec, "federated", method, targets, seed),
                    evaluate.cell_row(cell, target),
                )

    def run_centralised(self, seed: int) -> None:
        """The seed's centralised cells, from its saved original model(s)."""
        from fedforget.comparison import load_references
        from fedforget.federated.federation import read_arrays

        spec = self.spec
        for targets in spec.target_sets:
            todo = [
                m
                for m in spec.centralised
                if not self.done(method_cell(spec, "centralised", m, targets, seed))
            ]
            if not todo:
                continue
            config = spec.cell_config(targets, seed)
            references = load_references(config, spec.references)
            if any(r is None for r in references):
                raise RuntimeError(
                    f"a retrained reference of targets {list(targets)}, seed {seed} is not in "
                    "the reference cache: run the experiment again to train it"
                )
            original = read_arrays(self.original_path(seed, targets))
            evaluate = CellEvaluator(config, [r.arrays for r in references if r], original)
            for method in todo:
                self.record(
                    method_cell(spec, "centralised", method, targets, seed),
                    evaluate.centralised_row(method),
                )


def reference_keys(spec: ExperimentSpec, targets: tuple[str, ...], seed: int) -> list[CellKey]:
    """The cells of references 0..K-1 of one (target set, seed)."""
    return [
        CellKey("federated" if k == 0 else "reference", reference_name(k), targets, seed)
        for k in range(spec.references)
    ]


class CellEvaluator:
    """Rows of one (target set, seed): metrics against its retrained references."""

    def __init__(
        self, config: FederationConfig, references: list[Arrays], original: Arrays
    ) -> None:
        self.config, self.references, self.original = config, references, original

    def _row(self, row: dict[str, Any], model: Any, leave_out: int | None = None) -> dict[str, Any]:
        """``row`` with the cell metrics, against every reference but ``leave_out``."""
        from fedforget.experiment.evaluation import cell_metrics

        started = time.monotonic()
        # a lone reference is compared with itself, as before there were several
        references = [r for i, r in enumerate(self.references) if i != leave_out]
        references = references or self.references
        metrics = cell_metrics(self.config, model, references, self.original)
        cost = {**row.get("cost", {}), "eval_s": round(time.monotonic() - started, 2)}
        return {**row, **metrics, "cost": cost}

    def phase_row(
        self, name: str, phase: Any, kind: str = "federated", reference: int | None = None
    ) -> dict[str, Any]:
        """The row of the original or of reference ``reference`` (against the others)."""
        from fedforget.comparison import model_row

        row = model_row(self.config, name, phase.arrays, phase.cost(), kind=kind)
        return self._row(row, phase.arrays, leave_out=reference)

    def cell_row(self, cell: Any, target_score: float) -> dict[str, Any]:
        """The row of a federated method's cell, with its recovery curve."""
        from fedforget.comparison import cell_row

        row = cell_row(self.config, cell, target_score)
        if cell.record is None:
            return row
        first = self.config.unlearn_at_round
        row["curve"] = [
            {"after": h["round"] - first, **{k: v for k, v in h.items() if k.startswith("test_")}}
            for h in cell.record.history
        ]
        return self._row(row, cell.record.final_arrays)

    def centralised_row(self, name: str) -> dict[str, Any]:
        """The row of a centralised method unlearning from the original model."""
        from fedforget.comparison import centralised_cell, unlearning_data

        row, model = centralised_cell(
            self.config, self.original, name, unlearning_data(self.config)
        )
        return row if model is None else self._row(row, model)


def prepare(spec_path: Path, out_dir: Path) -> ExperimentSpec:
    """Load the experiment and bind it to ``out_dir`` (a different file there is refused)."""
    from fedforget.scenarios import check_forget_set

    spec = load_experiment(spec_path)
    check_forget_set(spec.cell_config(spec.target_sets[0], spec.seeds[0]))  # before any training
    kept = out_dir / SPEC_FILE
    if kept.is_file():
        if kept.read_text() != spec_path.read_text():
            raise ConfigError(
                f"{out_dir} holds the results of a different experiment file ({kept}): resume "
                "with the same file, or choose another --out"
            )
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spec_path, kept)
    return spec


def read_cells(out_dir: Path) -> Iterator[dict[str, Any]]:
    """Every finished cell's row under ``out_dir``."""
    for path in sorted((out_dir / CELLS_DIR).rglob("*.json")):
        yield json.loads(path.read_text())


def run_experiment(
    spec_path: Path,
    out_dir: Path,
    num_cpus: int | None = None,
    progress: bool = True,
    after: Callable[[Path], None] | None = None,
) -> list[CellKey]:
    """Run the missing cells, then write the results files; return the cells computed."""
    from fedforget.experiment.results import write_experiment_results

    spec = prepare(spec_path, out_dir)
    if spec.settings_from is not None:  # the report's "How each method was set"
        shutil.copyfile(spec.settings_from, out_dir / "tuned.toml")
    runner = Runner(spec, out_dir, num_cpus, progress)
    computed = runner.run()
    # only this experiment's cells: not those of settings it no longer uses
    rows = [json.loads(k.path(out_dir).read_text()) for k in runner.cells]
    write_experiment_results(out_dir, rows)
    if after is not None:
        after(out_dir)
    return computed
