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
(``<kind>-<method>@<hash>.json`` when the method's settings are not its
defaults: :func:`~fedforget.experiment.protocol.settings_variant`;
atomically), so an interrupted run started again with the same file and
``--out`` computes only the cells that are missing. ``DIR/experiment.toml``
keeps the experiment file; a different file for the same ``DIR`` is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedforget.arrays import Arrays
from fedforget.config import ConfigError
from fedforget.experiment.phases import train_original
from fedforget.experiment.protocol import (
    CELLS_DIR,
    CellKey,
    Plan,
    Protocol,
    reference_keys,
    settings_variant,
)
from fedforget.experiment.records import PhaseRecord
from fedforget.experiment.references import load_references
from fedforget.experiment.spec import ExperimentSpec, load_experiment
from fedforget.experiment.validity import REFERENCE_KIND

SPEC_FILE = "experiment.toml"
ORIGINALS_DIR = "originals"


def plan_of(spec: ExperimentSpec) -> Plan:
    """What the protocol computes for each (target set, seed) of ``spec``."""
    return Plan(
        methods=spec.methods,
        centralised=spec.centralised,
        references=spec.references,
        recovery_stop=spec.recovery_stop,
        metrics=spec.metrics,
    )


def protocol_of(spec: ExperimentSpec, targets: tuple[str, ...], seed: int) -> Protocol:
    """The protocol of one (target set, seed) of ``spec``."""
    return Protocol(spec.cell_config(targets, seed), plan_of(spec), targets, seed)


def all_cells(spec: ExperimentSpec) -> list[CellKey]:
    """Every cell of the experiment, in the order they are computed."""
    cells = []
    for seed in spec.seeds:
        protocols = [protocol_of(spec, targets, seed) for targets in spec.target_sets]
        for protocol in protocols:
            cells += protocol.federated_keys()
        for protocol in protocols:
            cells += protocol.centralised_keys()
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

    def record(self, key: CellKey, row: dict[str, Any], phase: PhaseRecord | None = None) -> None:
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
        """The ServerApp body of one seed: originals, then each target set's protocol.

        One original serves every target set of the seed (the targets train in
        it as every client does), except in the backdoor scenario, where the
        target set decides which clients carry the trigger.
        """
        spec = self.spec
        original = None
        for targets in spec.target_sets:
            protocol = protocol_of(spec, targets, seed)
            federated = not all(self.done(k) for k in protocol.federated_keys())
            if not federated and self.original_path(seed, targets).is_file():
                continue
            if original is None or self.original_per_target:
                original = train_original(grid, protocol.config, (*spec.methods, *self.observers))
            self.originals[(targets, seed)] = original
            save_arrays(self.original_path(seed, targets), original.phase.arrays)
            if federated:
                protocol.federated(grid, original, self)

    def run_centralised(self, seed: int) -> None:
        """The seed's centralised cells, from its saved original model(s)."""
        from fedforget.federated.federation import read_arrays

        spec = self.spec
        for targets in spec.target_sets:
            protocol = protocol_of(spec, targets, seed)
            if all(self.done(k) for k in protocol.centralised_keys()):
                continue
            references = load_references(protocol.config, spec.references)
            if any(r is None for r in references):
                raise RuntimeError(
                    f"a retrained reference of targets {list(targets)}, seed {seed} is not in "
                    "the reference cache: run the experiment again to train it"
                )
            original = read_arrays(self.original_path(seed, targets))
            protocol.centralised(original, [r.arrays for r in references if r], self)


__all__ = [
    "CellKey",
    "Runner",
    "read_cells",
    "reference_keys",
    "run_experiment",
    "settings_variant",
]


def prepare(spec_path: Path, out_dir: Path) -> ExperimentSpec:
    """Load the experiment and bind it to ``out_dir`` (a different file there is refused)."""
    from fedforget.scenarios import check_forget_set

    spec = load_experiment(spec_path)
    check_forget_set(spec.cell_config(spec.target_sets[0], spec.seeds[0]))  # before any training
    kept = out_dir / SPEC_FILE
    if kept.is_file():
        changed = _changed_keys(kept.read_text(), spec_path.read_text())
        if changed:
            raise ConfigError(
                f"{out_dir} holds the results of a different experiment file ({kept}: "
                f"{', '.join(changed)} differ): resume with the same file, or choose another --out"
            )
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec_path, kept)  # the folder keeps the file as last run
    return spec


def _changed_keys(kept: str, new: str) -> list[str]:
    """The dotted keys in which two experiment files differ in what decides their cells.

    Comments, layout and the ``[tune]`` table are left out: the tuning's protocol
    reaches the cells only through ``settings-from``'s chosen settings, which
    are part of each cell's key (:func:`settings_variant`).
    """

    def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if isinstance(value, dict):
                out |= flat(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value
        return out

    before, after = (tomllib.loads(text) for text in (kept, new))
    before.pop("tune", None)
    after.pop("tune", None)
    before, after = flat(before), flat(after)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


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
