"""``fedforget compare`` and ``fedforget run``: the protocol for one (target set, seed).

``fedforget compare`` is a one-seed experiment with one target set, in ONE
Flower simulation (:func:`compare_on_grid`): the original federation (every
compared method that keeps history observes it), the retrained reference(s)
(cached by configuration, targets and seed, so a second call reuses them),
one cell per federated method; then each centralised method unlearns the
same forget set from the original model. Federated methods forget whole
clients; in the other scenarios they are listed as refused, and the
retrained reference is the federation trained without the forget set.

``fedforget run`` (the main job) is the same protocol for the run's
``method`` alone, as one continuous federation (so the live API can serve it
from round 1): the references (from the cache when they are there), then
the run; its rows are the protocol's rows.

Both write the per-run views of :mod:`fedforget.experiment.tables`
(``results.json``, ``methods.csv``, ``history.csv``) and the long
format of :mod:`fedforget.experiment.results` (``results-long.*``,
``summary.*``, ``curves.csv``), so ``fedforget report OUT`` works on them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedforget.arrays import Arrays
from fedforget.config import CLIENT_SCENARIOS, ConfigError, FederationConfig
from fedforget.experiment.evaluation import Evaluator, test_score
from fedforget.experiment.phases import refusal, train_original, train_references
from fedforget.experiment.protocol import (
    RECOVERY_STOPS,
    CellKey,
    Plan,
    Protocol,
    Trained,
    reference_keys,
)
from fedforget.experiment.records import PhaseRecord
from fedforget.experiment.references import load_references, reference_config, save_references
from fedforget.experiment.results import write_experiment_results
from fedforget.experiment.tables import write_results
from fedforget.experiment.validity import REFERENCE, REFERENCE_KIND
from fedforget.provenance import provenance
from fedforget.requests import RequestNotApplied


class Collected:
    """A :class:`~fedforget.experiment.protocol.Recorder` that keeps the rows in memory.

    Rows come out in the order of ``fedforget compare``'s table: the original,
    the federated methods, ``retrain``, references 1..K-1, the centralised
    methods; ``history`` holds each trained phase's rounds.
    """

    def __init__(self, plan: Plan, progress: bool) -> None:
        self.rows: dict[CellKey, dict[str, Any]] = {}
        self.phases: dict[str, PhaseRecord] = {}
        self.methods, self.centralised = list(plan.methods), list(plan.centralised)
        self.progress = progress
        self.started = time.monotonic()

    def done(self, key: CellKey) -> bool:
        """Nothing is there before the comparison: every cell is computed."""
        return key in self.rows

    def record(self, key: CellKey, row: dict[str, Any], phase: PhaseRecord | None) -> None:
        """Keep the row (and the phase's history); print the progress of the methods."""
        self.rows[key] = row
        if phase is not None and key.kind == "federated":
            self.phases[key.method] = phase
        if key.kind == "federated" and key.method in self.methods and self.progress:
            number = self.methods.index(key.method) + 1
            elapsed = time.monotonic() - self.started
            left = elapsed / number * (len(self.methods) - number)
            print(
                f"compare: {number}/{len(self.methods)} methods done ({key.method}: "
                f"{'refused' if row['status'] != 'ok' else 'applied'}), {elapsed:.0f} s, "
                f"about {left:.0f} s left",
                flush=True,
            )
        elif key.kind == "centralised" and self.progress:
            print(
                f"compare: centralised {self.centralised.index(key.method) + 1}/"
                f"{len(self.centralised)} ({key.method}: "
                f"{'refused' if row['status'] != 'ok' else 'applied'})",
                flush=True,
            )

    def ordered_rows(self) -> list[dict[str, Any]]:
        """The rows in the table's order."""
        rank = {"original": 0, REFERENCE: 2}

        def order(key: CellKey) -> tuple[int, int]:
            if key.kind == "centralised":
                return 4, 0
            if key.kind == REFERENCE_KIND:
                return 3, 0
            return rank.get(key.method, 1), 0

        return [self.rows[k] for k in sorted(self.rows, key=order)]

    def history(self) -> list[dict[str, Any]]:
        """The histories of ``retrain``, the original and each method's run, tagged."""
        names = [REFERENCE, "original", *self.methods]
        return [entry for n in names if n in self.phases for entry in self.phases[n].tagged(n)]


def resolve_methods(names: Sequence[str] | None) -> list[str]:
    """The methods to compare (default: every registered one except ``retrain``)."""
    from fedforget.methods import method_names

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
    from fedforget.methods.centralised import centralised_names

    chosen = list(dict.fromkeys(names)) if names is not None else centralised_names()
    unknown = [m for m in chosen if m not in centralised_names()]
    if unknown:
        raise ConfigError(
            f"unknown centralised method(s) {', '.join(unknown)}; registered centralised "
            f"methods are {', '.join(centralised_names())}"
        )
    return chosen


def check_references(references: int) -> None:
    """Refuse a reference count below 1, saying what it means."""
    if references < 1:
        raise ConfigError(
            f"references must be >= 1 (retrained models on the same data; >= 2 gives the "
            f"retraining noise floor), got {references}"
        )


def check_comparison(config: FederationConfig, recovery_stop: str) -> None:
    """Refuse what a comparison cannot run, before any training."""
    from fedforget.scenarios import check_forget_set

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


def compare_on_grid(
    grid: Any, config: FederationConfig, plan: Plan, recorder: Collected
) -> tuple[Trained, Arrays]:
    """The comparison's ServerApp body: the protocol's federated cells; references, original.

    With ``store = "disk"`` the original's methods keep their
    pseudo-gradients in ``state-dir/pseudo-gradients``, each cell works on a
    copy of them, and at the end the targets' files are erased from the
    original's store too.
    """
    from fedforget.federated.federation import open_store
    from fedforget.state.disk_store import DiskPseudoGradientStore

    store = open_store(config, fresh=True)
    disk = store if isinstance(store, DiskPseudoGradientStore) else None
    original = train_original(grid, config, plan.methods, disk)
    protocol = Protocol(config, plan, config.targets, config.seed)
    trained = protocol.federated(grid, original, recorder)
    if original.store is not None and config.forget_scenario == "client":
        for method in original.methods.values():  # the cells forgot the targets: so does the store
            method.forget(config.targets)
    return trained, original.phase.arrays


def write_comparison(out_dir: Path, results: dict[str, Any]) -> None:
    """Write a comparison's results: its files and the long format of its rows."""
    write_results(out_dir, results)
    cells = [
        {**row, "references": results["references"], "provenance": results["provenance"]}
        for row in results["rows"]
    ]
    write_experiment_results(out_dir, cells)


def run_comparison(
    config: FederationConfig,
    out_dir: Path,
    methods: Sequence[str] | None = None,
    recovery_stop: str = "retrain-acc",
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    centralised: Sequence[str] | None = None,
    references: int = 1,
    metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``fedforget compare``: every method on the same original model; write and return results.

    ``methods`` are federated methods (default: all), ``centralised`` the
    centralised ones (default: all; an empty list for none); ``references``
    the retrained models on the same data (K >= 2 adds the noise floor);
    ``metrics`` the registry metrics besides the headline (default: all that
    apply).
    """
    from fedforget.experiment.evaluation import check_metrics
    from fedforget.simulation import simulate_app
    from fedforget.state.checkpoint import checkpoint_path

    check_references(references)
    check_comparison(config, recovery_stop)
    if config.store == "disk" and checkpoint_path(config.state_dir).is_file():
        raise ConfigError(
            f"state-dir {config.state_dir} holds the checkpoint of a run, whose pseudo-gradients "
            f"the comparison would replace: give the comparison a state-dir of its own"
        )
    plan = Plan(
        methods=tuple(resolve_methods(methods)),
        centralised=tuple(resolve_centralised(centralised)),
        references=references,
        recovery_stop=recovery_stop,
        metrics=check_metrics(metrics),
    )
    started = time.monotonic()
    recorder = Collected(plan, config.progress)
    trained, original = simulate_app(
        lambda grid: compare_on_grid(grid, config, plan, recorder),
        config.num_partitions,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        workload=config,
    )
    protocol = Protocol(config, plan, config.targets, config.seed)
    protocol.centralised(original, [r.arrays for r in trained.references], recorder)
    results = {
        "config": {**config.to_run_config(), "recovery-stop": recovery_stop},
        "targets": list(config.targets),
        "references": references,
        "rows": recorder.ordered_rows(),
        "history": recorder.history(),
        "timing": {
            "reference_cached": trained.cached[0],
            "total_s": round(time.monotonic() - started, 2),
        },
        "provenance": provenance(),
    }
    write_comparison(out_dir, results)
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
    check_comparison(config, recovery_stop)
    if config.forget_scenario not in CLIENT_SCENARIOS:
        raise ConfigError(
            f"fedforget run forgets clients with {config.method}; forget-scenario="
            f"{config.forget_scenario!r} is compared by `fedforget compare --scenario "
            f"{config.forget_scenario}`"
        )
    started = time.monotonic()
    stored = load_references(config, references)
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
    evaluate = Evaluator(config, [r.arrays for r in trained], None)
    reference_score = evaluate.test_score(trained[0].arrays)
    run = config.replace(
        recovery_target_acc=reference_score if recovery_stop == "retrain-acc" else 0.0,
        out_dir=str(out_dir / "runs" / config.method),
    )
    record = simulate(run, num_cpus, num_gpus=num_gpus)
    if not record.events:
        raise RequestNotApplied(
            f"the unlearning request was not applied: {refusal(record)} (see "
            f"{Path(run.out_dir) / 'requests.json'})"
        )
    model_before = record.events[0].model_before
    evaluate = Evaluator(config, [r.arrays for r in trained], model_before)
    original = PhaseRecord.from_run(record).until(config.unlearn_at_round, model_before)
    reference_rows = [
        evaluate.phase_row(key.method, trained[k], key.kind, k)
        for k, key in enumerate(reference_keys(references, config.targets, config.seed))
    ]
    rows = [
        evaluate.phase_row("original", original),
        evaluate.run_row(config.method, record, test_score(reference_rows[0])),
        *reference_rows,
    ]
    results = {
        "config": {**config.to_run_config(), "recovery-stop": recovery_stop},
        "targets": list(config.targets),
        "references": references,
        "rows": rows,
        "history": [
            *trained[0].tagged(REFERENCE),
            *PhaseRecord.from_run(record).tagged(config.method),
        ],
        "unlearning": [
            {k: v for k, v in asdict(e).items() if k != "model_before"} for e in record.events
        ],
        "timing": {
            "reference_cached": stored[0] is not None,
            "total_s": round(time.monotonic() - started, 2),
        },
        "provenance": provenance(),
    }
    write_comparison(out_dir, results)
    return results
