"""``fedforget experiment FILE --out DIR``: every (method, target set, seed) cell, resumable.

Per seed, one Flower simulation trains the original federation once (every
compared method that keeps history observes it), then for each target set
the retrained reference (from the reference cache when it is there) and one
cell per federated method. Centralised methods then run from the saved
original model, without a simulation.

Each finished cell is written at once to ``DIR/cells/seed-<s>/<targets>/<kind>-<method>.json``
(atomically), so an interrupted run started again with the same file and
``--out`` computes only the cells that are missing. ``DIR/experiment.toml``
keeps the experiment file; a different file for the same ``DIR`` is refused.
"""

from __future__ import annotations

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

SPEC_FILE = "experiment.toml"
CELLS_DIR = "cells"
ORIGINALS_DIR = "originals"


@dataclass(frozen=True)
class CellKey:
    """One cell: a method (or ``original`` / ``retrain``), a target set, a seed."""

    kind: str
    method: str
    targets: tuple[str, ...]
    seed: int

    def path(self, out_dir: Path) -> Path:
        """Where the cell's row is written."""
        targets = "+".join(self.targets) or "scenario"
        return (
            out_dir / CELLS_DIR / f"seed-{self.seed}" / targets / f"{self.kind}-{self.method}.json"
        )


def all_cells(spec: ExperimentSpec) -> list[CellKey]:
    """Every cell of the experiment, in the order they are computed."""
    cells = []
    for seed in spec.seeds:
        for targets in spec.target_sets:
            cells.append(CellKey("federated", "retrain", targets, seed))
            cells.append(CellKey("federated", "original", targets, seed))
            cells += [CellKey("federated", m, targets, seed) for m in spec.methods]
        for targets in spec.target_sets:
            cells += [CellKey("centralised", m, targets, seed) for m in spec.centralised]
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
    ) -> None:
        self.spec, self.out_dir, self.num_cpus = spec, out_dir, num_cpus
        self.cells = all_cells(spec)
        done = sum(key.path(out_dir).is_file() for key in self.cells)
        self.progress = Progress(len(self.cells), done, progress)
        self.computed: list[CellKey] = []
        self.finished_at: list[float] = []
        """``time.monotonic()`` when each computed cell was written (for benchmarks)."""

    def done(self, key: CellKey) -> bool:
        """Whether the cell's row is on disk."""
        return key.path(self.out_dir).is_file()

    def record(self, key: CellKey, row: dict[str, Any]) -> None:
        """Write a finished cell."""
        write_json_atomic(key.path(self.out_dir), row)
        self.computed.append(key)
        self.finished_at.append(time.monotonic())
        self.progress.tick(key)

    def original_path(self, seed: int) -> Path:
        """Where the seed's original model is kept for the centralised cells."""
        return self.out_dir / ORIGINALS_DIR / f"seed-{seed}.npz"

    def run(self) -> list[CellKey]:
        """Compute every missing cell; return the cells computed by this call."""
        from fedforget.simulation import simulate_app

        for seed in self.spec.seeds:
            missing = [k for k in self.cells if k.seed == seed and not self.done(k)]
            federated = [k for k in missing if k.kind == "federated"]
            if federated or (missing and not self.original_path(seed).is_file()):
                simulate_app(
                    lambda grid, seed=seed: self.run_seed(grid, seed),
                    self.spec.config.num_partitions,
                    num_cpus=self.num_cpus,
                    workload=self.spec.config,
                )
            if any(k.kind == "centralised" for k in missing):
                self.run_centralised(seed)
        return self.computed

    def run_seed(self, grid: Any, seed: int) -> None:
        """The ServerApp body of one seed: original, then references and federated cells."""
        from fedforget.comparison import (
            load_reference,
            recovery_target,
            reference_config,
            run_cell,
            save_reference,
            train_original,
            train_phase,
        )

        spec = self.spec
        base = spec.cell_config(spec.target_sets[0], seed)
        original = train_original(grid, base, spec.methods)
        save_arrays(self.original_path(seed), original.phase.arrays)
        for targets in spec.target_sets:
            config = spec.cell_config(targets, seed)
            keys = {m: CellKey("federated", m, targets, seed) for m in ("retrain", "original")}
            todo = [
                m for m in spec.methods if not self.done(CellKey("federated", m, targets, seed))
            ]
            if not todo and all(self.done(k) for k in keys.values()):
                continue
            reference = load_reference(config)
            if reference is None:
                reference = train_phase(grid, reference_config(config), "[reference] ")
                save_reference(config, reference)
            target = recovery_target(config, reference, spec.recovery_stop)
            evaluate = CellEvaluator(config, reference.arrays, original.phase.arrays)
            if not self.done(keys["retrain"]):
                self.record(keys["retrain"], evaluate.phase_row("retrain", reference))
            if not self.done(keys["original"]):
                self.record(keys["original"], evaluate.phase_row("original", original.phase))
            for method in todo:
                cell = run_cell(grid, config, method, original, target)
                self.record(
                    CellKey("federated", method, targets, seed), evaluate.cell_row(cell, target)
                )

    def run_centralised(self, seed: int) -> None:
        """The seed's centralised cells, from its saved original model."""
        from fedforget.comparison import load_reference
        from fedforget.federated.federation import read_arrays

        spec = self.spec
        original = read_arrays(self.original_path(seed))
        for targets in spec.target_sets:
            config = spec.cell_config(targets, seed)
            reference = load_reference(config)
            if reference is None:
                raise RuntimeError(
                    f"the retrained reference of targets {list(targets)}, seed {seed} is not in "
                    "the reference cache: run the experiment again to train it"
                )
            evaluate = CellEvaluator(config, reference.arrays, original)
            for method in spec.centralised:
                key = CellKey("centralised", method, targets, seed)
                if not self.done(key):
                    self.record(key, evaluate.centralised_row(method))


class CellEvaluator:
    """Rows of one (target set, seed): metrics against its retrained reference."""

    def __init__(self, config: FederationConfig, reference: Arrays, original: Arrays) -> None:
        self.config, self.reference, self.original = config, reference, original

    def _row(self, row: dict[str, Any], model: Any) -> dict[str, Any]:
        from fedforget.experiment.evaluation import cell_metrics

        started = time.monotonic()
        metrics = cell_metrics(self.config, model, self.reference, self.original)
        cost = {**row.get("cost", {}), "eval_s": round(time.monotonic() - started, 2)}
        return {**row, **metrics, "cost": cost}

    def phase_row(self, name: str, phase: Any) -> dict[str, Any]:
        """The row of the original or the retrained model."""
        from fedforget.comparison import model_row

        return self._row(model_row(self.config, name, phase.arrays, phase.cost()), phase.arrays)

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
    spec = load_experiment(spec_path)
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
    computed = Runner(spec, out_dir, num_cpus, progress).run()
    write_experiment_results(out_dir, list(read_cells(out_dir)))
    if after is not None:
        after(out_dir)
    return computed
