"""``fedforget tune EXPERIMENT.toml --out DIR``: each method's settings, chosen on validation cells.

The experiment file's ``[tune]`` table declares the protocol::

    [tune]
    validation-targets = [["1"], ["3"]]  # target sets tuned on
    validation-seeds = [100]              # seeds tuned on
    trials = 20                           # budget per method (default 20)
    methods = ["puf-special", "scrub"]    # default: every method of the experiment
    objective = "avg_gap"                 # a cell metric (default: SalUn's Average Gap)
    direction = "minimize"                # or "maximize"
    max-test-drop = 0.01                  # feasible: test accuracy >= the reference's - 0.01
    sampler-seed = 0

A validation cell (target set, seed) that is also a test cell of the
experiment is refused, naming it. Each method's search space is its class's
``space`` (:mod:`fedforget.methods.space`), checked against its settings
before any trial. Per method, an Optuna study (TPE, seeded per trial: the
sampler of trial ``n`` is seeded ``sampler-seed + n``, so a resumed tuning
proposes what an uninterrupted one would) in ``DIR/optuna.db`` runs the
budget; trial 0 is the paper's defaults. A trial's score is the mean of the
objective over the validation cells; it is infeasible when the mean test
accuracy falls more than ``max-test-drop`` below the retrained references'
(an Optuna constraint: TPE steers away from it). A trial whose method
refuses or diverges on a cell, or raises, is recorded failed with the reason
and the tuning goes on.

The validation cells are the experiment runner's cells, under ``DIR/cells``
keyed by the method's settings (:func:`fedforget.experiment.runner.settings_variant`):
the retrained references come from the reference cache, each seed's
original is trained once per call (the federated methods' trials share it in
one simulation; centralised trials start from the saved original model), and
a killed tuning started again resumes: finished trials stay, an interrupted
one runs again with the same settings (its finished cells are reused).

What runs in parallel: the studies of different centralised methods, each in
a worker process of its own (as many workers as ``num_cpus``, default the
machine's cores), each trial at :data:`CENTRALISED_THREADS` torch thread(s)
whether in a worker or not, since a float reduction's result depends on the
thread count. The trials of one study run one after another (TPE's proposal
for trial ``n`` depends on trials ``0 .. n-1``), so the chosen settings and
every trial's score do not depend on the number of workers. The federated
methods' studies run one after another in one simulation (its one Grid
serves one trial at a time); each trial's clients train in parallel on Ray's
CPUs.

``DIR/tuned.toml`` records, per method, the chosen settings, the validation
score, the paper-default score, the budget, the space and each trial's score.
An experiment file names it in ``[experiment] settings-from`` to run with them
(the tuning itself leaves ``settings-from`` out: it tunes from the defaults,
so one file can declare both the tuning and the tuned run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedforget.config import ConfigError, ConfigValue
from fedforget.experiment.runner import (
    SPEC_FILE,
    CellKey,
    Runner,
    settings_variant,
    write_json_atomic,
)
from fedforget.experiment.spec import DEFAULT_REFERENCES, ExperimentSpec, _target_sets
from fedforget.experiment.validity import REFERENCE
from fedforget.methods.base import settings_problem
from fedforget.methods.space import describe_space, space_problem, suggest

if TYPE_CHECKING:
    import optuna

TUNE_KEYS = (
    "validation-targets",
    "validation-seeds",
    "trials",
    "methods",
    "objective",
    "direction",
    "max-test-drop",
    "sampler-seed",
    "references",
)
DEFAULT_TRIALS = 20
TUNED_FILE = "tuned.toml"
TUNING_REPORT = "tuning.md"
STORAGE_FILE = "optuna.db"
STORAGE_TIMEOUT_S = 60
"""Seconds a writer waits for SQLite's lock (the centralised workers share ``optuna.db``)."""
CENTRALISED_THREADS = 1
"""Torch threads of a centralised trial, in a worker or not (results depend on the count)."""


@dataclass(frozen=True)
class TuneSpec:
    """The ``[tune]`` table of an experiment file."""

    validation_targets: tuple[tuple[str, ...], ...]
    validation_seeds: tuple[int, ...]
    methods: tuple[tuple[str, str], ...]
    """(kind, name) of each method to tune."""
    trials: int = DEFAULT_TRIALS
    objective: str = "avg_gap"
    direction: str = "minimize"
    max_test_drop: float = 0.01
    sampler_seed: int = 0
    references: int | None = None
    """Retrained references per validation cell; None: the experiment's ``references``."""


# ------------------------------------------------------------------ parsing
def method_type(kind: str, name: str) -> Any:
    """The class of a federated or centralised method."""
    from fedforget.methods import method_class
    from fedforget.methods.centralised import centralised_class

    return method_class(name) if kind == "federated" else centralised_class(name)


def load_tune(path: Path, spec: ExperimentSpec) -> TuneSpec:
    """Parse and check the ``[tune]`` table of the experiment file ``path``.

    Raises
    ------
    ConfigError
        On a missing or unknown key, a validation cell that is a test cell
        (named), a method the experiment does not run, or a search space that
        does not fit its method (the key named).

    """
    table = tomllib.loads(path.read_text()).get("tune")
    if not isinstance(table, dict):
        raise ConfigError(
            f"{path} has no [tune] table: add one with validation-targets and validation-seeds "
            "(see docs/experiments.md, Tuning)"
        )
    unknown = sorted(set(table) - set(TUNE_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown [tune] key(s) {', '.join(unknown)}; valid: {', '.join(TUNE_KEYS)}"
        )
    for key in ("validation-targets", "validation-seeds"):
        if key not in table:
            raise ConfigError(
                f"[tune] needs {key}: the target sets and seeds to tune on, outside the "
                "experiment's test cells"
            )
    seeds = table["validation-seeds"]
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise ConfigError(f"[tune] validation-seeds must be a list of integers, got {seeds!r}")
    try:
        targets = _target_sets(table["validation-targets"], spec.config)
    except ConfigError as error:
        message = str(error).replace("[experiment] targets", "[tune] validation-targets")
        raise ConfigError(message) from None
    overlap = [
        f"targets {list(t)} seed {s}"
        for t in targets
        for s in seeds
        if t in spec.target_sets and s in spec.seeds
    ]
    if overlap:
        raise ConfigError(
            f"[tune] validation cell(s) {'; '.join(overlap)} are test cells of the experiment: "
            "tune on other seeds (outside "
            f"{list(spec.seeds)}) or other target sets, so that no result is tuned on"
        )
    trials = table.get("trials", DEFAULT_TRIALS)
    if type(trials) is not int or trials < 1:
        raise ConfigError(f"[tune] trials must be an integer >= 1, got {trials!r}")
    direction = table.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f'[tune] direction must be "minimize" or "maximize", got {direction!r}')
    drop = table.get("max-test-drop", 0.01)
    if isinstance(drop, bool) or not isinstance(drop, int | float) or not 0 <= drop <= 1:
        raise ConfigError(f"[tune] max-test-drop must be a number in [0, 1], got {drop!r}")
    objective = table.get("objective", "avg_gap")
    if not isinstance(objective, str) or not objective:
        raise ConfigError(f"[tune] objective must be a cell metric's name, got {objective!r}")
    sampler_seed = table.get("sampler-seed", 0)
    if type(sampler_seed) is not int:
        raise ConfigError(f"[tune] sampler-seed must be an integer, got {sampler_seed!r}")
    references = table.get("references")
    if references is not None and (type(references) is not int or references < 1):
        raise ConfigError(
            f"[tune] references must be an integer >= 1 (retrained references per validation "
            f"cell; default: the experiment's references), got {references!r}"
        )
    return TuneSpec(
        references=references,
        validation_targets=targets,
        validation_seeds=tuple(dict.fromkeys(seeds)),
        methods=_tuned_methods(table.get("methods"), spec),
        trials=trials,
        objective=objective,
        direction=direction,
        max_test_drop=float(drop),
        sampler_seed=sampler_seed,
    )


def _tuned_methods(value: Any, spec: ExperimentSpec) -> tuple[tuple[str, str], ...]:
    """(kind, name) of the methods ``[tune] methods`` names (default: the experiment's)."""
    run = [
        *(("federated", m) for m in spec.methods),
        *(("centralised", m) for m in spec.centralised),
    ]
    if value is None:
        chosen = run
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        chosen = []
        for name in value:
            # a name both kinds use (retrain) is the federated one
            found = [(kind, m) for kind, m in run if m == name][:1]
            if not found:
                raise ConfigError(
                    f"[tune] methods names {name!r}, which the experiment does not run; it runs "
                    f"{', '.join(m for _, m in run) or 'none'}"
                )
            chosen += found
    else:
        raise ConfigError(f"[tune] methods must be a list of method names, got {value!r}")
    for kind, name in chosen:
        problem = space_problem(method_type(kind, name))
        if problem:
            raise ConfigError(problem)
    return tuple(dict.fromkeys(chosen))


def validation_spec(spec: ExperimentSpec, tune: TuneSpec) -> ExperimentSpec:
    """The experiment on the validation cells, without methods (their trials add them)."""
    return dataclasses.replace(
        spec,
        references=spec.references if tune.references is None else tune.references,
        target_sets=tune.validation_targets,
        seeds=tune.validation_seeds,
        methods=(),
        centralised=(),
    )


def with_settings(
    spec: ExperimentSpec, table: str, settings: Mapping[str, ConfigValue]
) -> ExperimentSpec:
    """``spec`` with ``settings`` (keys of the method table ``table``) in its run config."""
    from fedforget.config import FederationConfig

    overrides = {f"{table}.{k}": v for k, v in settings.items()}
    config = FederationConfig.from_run_config({**spec.config.to_run_config(), **overrides})
    return dataclasses.replace(spec, config=config)


# ------------------------------------------------------------------ tuned.toml
def _toml_value(value: Any) -> str:
    """A TOML literal of a str, bool, int, float (nan as ``nan``), list or dict."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"no TOML literal for {value!r}")


def write_tuned(path: Path, header: Mapping[str, Any], entries: Sequence[dict[str, Any]]) -> None:
    """Write ``tuned.toml``: the protocol, then one table per method."""
    lines = [
        "# Written by `fedforget tune`: each method's chosen settings, validation score,",
        "# budget and space. Name this file in [experiment] settings-from to run with them.",
        "[tune]",
        *(f"{key} = {_toml_value(value)}" for key, value in header.items()),
    ]
    for entry in entries:
        lines += ["", f'[{entry["kind"]}."{entry["method"]}"]']
        lines += [
            f"{key} = {_toml_value(value)}"
            for key, value in entry.items()
            if key not in ("kind", "method")
        ]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)
    tomllib.loads(path.read_text())  # what was written reads back


# ------------------------------------------------------------------ trials
@dataclass
class TrialOutcome:
    """A trial's score over the validation cells, or why it failed."""

    score: float = math.nan
    test_drop: float = math.nan
    """Mean reference test score minus the trial's (positive: below the references)."""
    reason: str = ""


class Tuner:
    """Runs the budget of each method of ``tune`` on the validation cells into ``out_dir``."""

    def __init__(
        self,
        spec: ExperimentSpec,
        tune: TuneSpec,
        out_dir: Path,
        num_cpus: int | None = None,
        progress: bool = True,
    ) -> None:
        self.spec, self.tune, self.out_dir = spec, tune, out_dir
        self.num_cpus, self.progress = num_cpus, progress
        self.validation = validation_spec(spec, tune)
        self.cells = [
            (targets, seed)
            for seed in self.validation.seeds
            for targets in self.validation.target_sets
        ]
        self.trial_seconds: list[tuple[str, str, float]] = []
        """(kind, method, wall seconds) of each trial this call ran (for the benchmark)."""
        self.centralised_s = 0.0
        """Wall seconds of the centralised studies, in parallel or not (for the benchmark)."""

    # ------------------------------------------------------------- studies
    @cached_property
    def storage(self) -> optuna.storages.RDBStorage:
        """``DIR/optuna.db``, opened once per process (the workers each open their own)."""
        import optuna

        return optuna.storages.RDBStorage(
            f"sqlite:///{self.out_dir / STORAGE_FILE}",
            engine_kwargs={"connect_args": {"timeout": STORAGE_TIMEOUT_S}},
        )

    def study(self, kind: str, name: str, number: int = 0) -> optuna.Study:
        """The method's study, its TPE sampler seeded for trial ``number``."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=self.tune.sampler_seed + number, constraints_func=_constraints
        )
        return optuna.create_study(
            study_name=f"{kind}-{name}",
            storage=self.storage,
            sampler=sampler,
            direction=self.tune.direction,
            load_if_exists=True,
        )

    def budget(self, kind: str, name: str) -> int:
        """The method's budget: ``trials``, or 1 (its defaults, which say why).

        One trial for a method with an empty space, and for a centralised
        method that refuses the experiment's scenario.
        """
        cls = method_type(kind, name)
        refuses = kind == "centralised" and self.spec.config.forget_scenario not in cls.scenarios
        return self.tune.trials if cls.space and not refuses else 1

    def remaining(self, kind: str, name: str) -> int:
        """Trials left of the method's budget; an interrupted trial is queued again."""
        import optuna
        from optuna.trial import TrialState

        study = self.study(kind, name)
        trials = study.get_trials(deepcopy=False)
        if not trials:
            cls = method_type(kind, name)
            study.enqueue_trial(
                {k: cls.defaults[k] for k in cls.space}, user_attrs={"paper-default": True}
            )
        for frozen in trials:
            if frozen.state == TrialState.RUNNING:
                # left running by a killed tuning: run its settings again (its cells are kept)
                study.enqueue_trial(dict(frozen.params), user_attrs=dict(frozen.user_attrs))
                trial = optuna.Trial(study, frozen._trial_id)
                trial.set_user_attr("interrupted", True)
                study.tell(trial, state=TrialState.FAIL)
        counted = [t for t in study.get_trials(deepcopy=False) if _counts(t)]
        return max(0, self.budget(kind, name) - len(counted))

    # -------------------------------------------------------------- running
    def run(self) -> list[dict[str, Any]]:
        """Run every method's missing trials; write and return the tuned entries."""
        # every study exists (its defaults queued, an interrupted trial re-queued) before any runs
        left = [(k, n) for k, n in self.tune.methods if self.remaining(k, n)]
        federated = [n for k, n in left if k == "federated"]
        if not federated:  # the validation cells' references and originals, if missing
            Runner(self.validation, self.out_dir, self.num_cpus, self.progress).run()
        else:  # the same, in the simulation of the federated trials
            from fedforget.simulation import simulate_app

            simulate_app(
                lambda grid: self._federated(grid, federated),
                self.spec.config.num_partitions,
                num_cpus=self.num_cpus,
                workload=self.spec.config,
            )
        self._centralised_studies([n for k, n in left if k == "centralised"])
        entries = [self.entry(kind, name) for kind, name in self.tune.methods]
        header = {
            "experiment": self.spec.name,
            "objective": self.tune.objective,
            "direction": self.tune.direction,
            "max-test-drop": self.tune.max_test_drop,
            "validation-targets": [list(t) for t in self.tune.validation_targets],
            "validation-seeds": list(self.tune.validation_seeds),
            "validation-references": self.validation.references,
            "sampler": "optuna TPESampler (seed sampler-seed + trial number)",
            "sampler-seed": self.tune.sampler_seed,
        }
        write_tuned(self.out_dir / TUNED_FILE, header, entries)
        return entries

    def _federated(self, grid: Any, names: Sequence[str]) -> None:
        """The ServerApp body: the validation cells' references and originals, then every trial.

        Each seed's original is trained once, with the tuned methods observing
        it: by the experiment runner when the validation cells' references or
        originals are missing (it writes them), else here.
        """
        from fedforget.experiment.evaluation import Evaluator
        from fedforget.experiment.phases import run_cell, train_original
        from fedforget.experiment.references import load_references

        validation = self.validation
        runner = Runner(validation, self.out_dir, progress=self.progress, observers=tuple(names))
        for seed in validation.seeds:
            runner.run_seed(grid, seed)
        originals = runner.originals
        per_target = validation.config.forget_scenario == "backdoor"
        for targets, seed in self.cells:
            if (targets, seed) in originals:
                continue
            same_seed = [o for (_, s), o in originals.items() if s == seed]
            if per_target or not same_seed:
                config = validation.cell_config(targets, seed)
                originals[(targets, seed)] = train_original(grid, config, names)
            else:
                originals[(targets, seed)] = same_seed[0]

        def cells(name: str, spec: ExperimentSpec) -> dict[tuple[tuple[str, ...], int], Any]:
            def one(targets: tuple[str, ...], seed: int) -> dict[str, Any]:
                config = spec.cell_config(targets, seed)
                references = [r.arrays for r in load_references(config, spec.references) if r]
                original = originals[(targets, seed)]
                evaluate = Evaluator(config, references, original.phase.arrays, spec.metrics)
                score = evaluate.test_score(references[0])
                target = score if spec.recovery_stop == "retrain-acc" else 0.0
                return evaluate.cell_row(run_cell(grid, config, name, original, target), score)

            return dict.fromkeys(self.cells, one)

        for name in names:
            self._trials("federated", name, lambda spec, name=name: cells(name, spec))

    def workers(self, studies: int) -> int:
        """Worker processes for ``studies`` centralised studies: one each, up to the CPUs."""
        return max(1, min(studies, self.num_cpus or os.cpu_count() or 1))

    def _centralised_studies(self, names: Sequence[str]) -> None:
        """Run the centralised methods' trials: one study per worker process, or here.

        A study's trials run one after another in one process; different
        studies run at once when there are CPUs for them. Either way a trial
        runs at :data:`CENTRALISED_THREADS` torch thread(s), so its result is
        the same.
        """
        started = time.monotonic()
        workers = self.workers(len(names))
        if workers == 1:
            with torch_threads(CENTRALISED_THREADS):
                for name in names:
                    self._trials("centralised", name, self._centralised_cells(name))
        else:
            spawn = multiprocessing.get_context("spawn")  # no copy of this process's Ray
            with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
                futures = [
                    pool.submit(
                        _centralised_study, self.spec, self.tune, self.out_dir, name, self.progress
                    )
                    for name in names
                ]
                for future in futures:
                    self.trial_seconds += future.result()
        self.centralised_s += time.monotonic() - started

    def _centralised_cells(
        self, name: str
    ) -> Callable[[ExperimentSpec], dict[tuple[tuple[str, ...], int], Any]]:
        """How a centralised trial computes its cells: from the saved originals."""
        from fedforget.experiment.centralised import centralised_cell, unlearning_data
        from fedforget.experiment.evaluation import Evaluator
        from fedforget.experiment.references import load_references
        from fedforget.federated.federation import read_arrays

        def cells(spec: ExperimentSpec) -> dict[tuple[tuple[str, ...], int], Any]:
            runner = Runner(spec, self.out_dir, progress=False)

            def one(targets: tuple[str, ...], seed: int) -> dict[str, Any]:
                config = spec.cell_config(targets, seed)
                references = [r.arrays for r in load_references(config, spec.references) if r]
                original = read_arrays(runner.original_path(seed, targets))
                evaluate = Evaluator(config, references, original, spec.metrics)
                row, _ = centralised_cell(evaluate, original, name, unlearning_data(config))
                return row

            return dict.fromkeys(self.cells, one)

        return cells

    def _trials(
        self,
        kind: str,
        name: str,
        compute: Callable[[ExperimentSpec], Mapping[tuple[tuple[str, ...], int], Any]],
    ) -> None:
        """Run the method's remaining trials; ``compute(spec)`` gives each cell's row function."""
        from optuna.trial import TrialState

        cls = method_type(kind, name)
        while self.remaining(kind, name):
            number = len(self.study(kind, name).get_trials(deepcopy=False))
            study = self.study(kind, name, number)
            trial = study.ask()
            started = time.monotonic()
            settings = suggest(trial, cls.space)
            trial.set_user_attr("settings", json.dumps(settings))
            problem = settings_problem(cls, {**cls.defaults, **settings})
            outcome = (
                TrialOutcome(reason=f"settings refused: {problem}")
                if problem
                else self._score(
                    kind, name, with_settings(self.validation, cls.table, settings), compute
                )
            )
            self.trial_seconds.append((kind, name, time.monotonic() - started))
            if outcome.reason:
                trial.set_user_attr("reason", outcome.reason)
                study.tell(trial, state=TrialState.FAIL)
                state = f"failed ({outcome.reason})"
            else:
                constraint = outcome.test_drop - self.tune.max_test_drop
                trial.set_user_attr("constraint", [constraint])
                trial.set_user_attr("test_drop", outcome.test_drop)
                study.tell(trial, outcome.score)
                state = f"{self.tune.objective} {outcome.score:.4f}" + (
                    "" if constraint <= 0 else " (infeasible: test accuracy too low)"
                )
            if self.progress:
                print(
                    f"tune: {kind} {name} trial {trial.number} {settings}: {state}, "
                    f"{self.trial_seconds[-1][2]:.0f} s",
                    flush=True,
                )

    def _score(
        self,
        kind: str,
        name: str,
        spec: ExperimentSpec,
        compute: Callable[[ExperimentSpec], Mapping[tuple[tuple[str, ...], int], Any]],
    ) -> TrialOutcome:
        """Compute (or read) the trial's validation cells and score them."""
        functions = compute(spec)
        variant = settings_variant(spec.config, kind, name)
        rows, references = [], []
        for targets, seed in self.cells:
            key = CellKey(kind, name, targets, seed, variant)
            path = key.path(self.out_dir)
            if path.is_file():
                row = json.loads(path.read_text())
            else:
                try:
                    row = functions[(targets, seed)](targets, seed)
                except Exception as error:  # a method that raises fails its trial, not the tuning
                    row = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
                row = {
                    **row,
                    "settings": dict(spec.config.settings_of(method_type(kind, name).table)),
                }
                write_json_atomic(path, _finite(row))
            rows.append(row)
            reference = CellKey("federated", REFERENCE, targets, seed).path(self.out_dir)
            references.append(json.loads(reference.read_text()))
        failed = [r for r in rows if r.get("status") != "ok"]
        if failed:
            return TrialOutcome(reason=str(failed[0].get("reason") or "no result"))
        missing = [r for r in rows if not _is_finite(r.get(self.tune.objective))]
        if missing:
            return TrialOutcome(
                reason=f"objective {self.tune.objective} is not a finite cell metric of {name} "
                f"(got {missing[0].get(self.tune.objective)!r})"
            )
        from fedforget.experiment.evaluation import test_score

        score = sum(float(r[self.tune.objective]) for r in rows) / len(rows)
        drop = (sum(map(test_score, references)) - sum(map(test_score, rows))) / len(rows)
        return TrialOutcome(score=score, test_drop=drop)

    # -------------------------------------------------------------- results
    def entry(self, kind: str, name: str) -> dict[str, Any]:
        """The method's table of ``tuned.toml``: chosen settings, scores, budget, space, trials."""
        from optuna.trial import TrialState

        cls = method_type(kind, name)
        trials = [t for t in self.study(kind, name).get_trials(deepcopy=False) if _counts(t)]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        feasible = [t for t in complete if _feasible(t)]
        sign = 1 if self.tune.direction == "minimize" else -1
        if feasible:
            best = min(feasible, key=lambda t: (sign * t.value, t.number))
        elif complete:  # none keeps test accuracy: the one closest to keeping it
            best = min(complete, key=lambda t: (t.user_attrs["constraint"][0], t.number))
        else:
            best = None
        default = next((t for t in trials if t.user_attrs.get("paper-default")), None)
        return {
            "kind": kind,
            "method": name,
            "table": cls.table,
            "budget": self.budget(kind, name),
            "space": describe_space(cls.space),
            "settings": {k: best.params[k] for k in cls.space} if best else {},
            "score": best.value if best else math.nan,
            "feasible": bool(feasible),
            "default-score": default.value
            if default is not None and default.state == TrialState.COMPLETE
            else math.nan,
            "default-feasible": default is not None and _feasible(default),
            "trial-scores": [
                t.value if t.state == TrialState.COMPLETE else math.nan for t in trials
            ],
            "trial-feasible": [_feasible(t) for t in trials],
            "failed": [
                f"trial {t.number}: {t.user_attrs.get('reason', '')}"
                for t in trials
                if t.state == TrialState.FAIL
            ],
        }


def _constraints(trial: optuna.trial.FrozenTrial) -> Sequence[float]:
    """Optuna's constraint: > 0 when test accuracy fell more than allowed (infeasible)."""
    return trial.user_attrs.get("constraint", [1.0])


def _feasible(trial: optuna.trial.FrozenTrial) -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE and trial.user_attrs["constraint"][0] <= 0


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial uses the budget: finished, and not cut short by a killed tuning."""
    from optuna.trial import TrialState

    finished = trial.state in (TrialState.COMPLETE, TrialState.FAIL)
    return finished and not trial.user_attrs.get("interrupted")


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with non-finite numbers as None (JSON has no NaN)."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``count`` inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _centralised_study(
    spec: ExperimentSpec, tune: TuneSpec, out_dir: Path, name: str, progress: bool
) -> list[tuple[str, str, float]]:
    """A worker process: the centralised method's remaining trials; their seconds."""
    import torch

    torch.set_num_threads(CENTRALISED_THREADS)
    tuner = Tuner(spec, tune, out_dir, progress=progress)
    tuner._trials("centralised", name, tuner._centralised_cells(name))
    return tuner.trial_seconds


def run_tuning(
    spec_path: Path, out_dir: Path, num_cpus: int | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """``fedforget tune``: check everything, run the missing trials, write ``tuned.toml``.

    Also writes ``DIR/tuning.md`` (the "How each method was set" table and
    ``figures/tuning.png``), so the validation results can be read before the
    tuned experiment runs.
    """
    from fedforget.experiment.spec import load_experiment
    from fedforget.experiment.tune_report import tuning_section

    spec = load_experiment(spec_path, settings_from=False)  # trial 0: the paper's defaults
    tune = load_tune(spec_path, spec)
    bind(spec_path, out_dir)
    entries = Tuner(spec, tune, out_dir, num_cpus, progress).run()
    markdown, _, _ = tuning_section(out_dir)
    title = f"# Tuning: {spec.name}"
    (out_dir / TUNING_REPORT).write_text("\n".join([title, *markdown]) + "\n")
    return entries


def bind(spec_path: Path, out_dir: Path) -> None:
    """Keep the experiment file in ``out_dir``; refuse another experiment (its [tune] may change).

    A larger budget or another method list resumes the same study; other
    [config] values, or [experiment] values the trials depend on, would mix
    trials of two experiments. ``settings-from`` (not read by the tuning) may
    change, and so may ``references`` where ``[tune] references`` keeps the
    validation cells' number.
    """
    kept = out_dir / SPEC_FILE
    if kept.is_file():
        before, now = (_trial_inputs(p) for p in (kept, spec_path))
        if before != now:
            raise ConfigError(
                f"{out_dir} holds the tuning of a different experiment ({kept}): tune with the "
                "same [experiment] and [config], or choose another --out"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec_path, kept)


def _trial_inputs(path: Path) -> dict[str, Any]:
    """The experiment file's tables less what the trials do not depend on."""
    tables = tomllib.loads(path.read_text())
    tune = tables.pop("tune", {})
    experiment = dict(tables.get("experiment", {}))
    experiment.pop("settings-from", None)
    validation = tune.get("references", experiment.get("references", DEFAULT_REFERENCES))
    experiment["references"] = validation
    return {**tables, "experiment": experiment}
