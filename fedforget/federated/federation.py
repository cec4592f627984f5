"""A federation run from a config: the spine plus the registry's methods.

``run_federation`` builds the strategy a config describes, queues the
configured unlearning request, evaluates the global model on the server's
test set after every round (one progress line each) and returns a typed
:class:`RunRecord`; with ``out-dir`` set it also writes:

* ``history.json``: one record per round (phase, participants, test metrics,
  costs, elapsed seconds);
* ``events.json``: the completed unlearning steps (rounds, method, clients, norm);
* ``requests.json``: every request with its final status;
* ``final_model.npz`` and, if a client was forgotten, ``original_model.npz``
  (the global model just before the first unlearning step).

The ServerApp of ``flwr run`` and of deployments, ``fedforget run`` and
``fedforget compare`` all go through :func:`build_strategy`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedforget.arrays import Arrays, to_arrays, to_record
from fedforget.config import FederationConfig
from fedforget.federated.clients import ClientDirectory
from fedforget.federated.intake import Intake
from fedforget.federated.records import RoundRecord, UnlearningEvent
from fedforget.federated.strategy import UnlearningStrategy
from fedforget.methods import method_class, method_names
from fedforget.methods.base import FederatedMethod, MethodContext
from fedforget.models import build_model, first_conv_key, head_keys, statistic_keys
from fedforget.requests import (
    InMemoryRequestQueue,
    RequestQueue,
    UnlearningRequest,
    forgotten_clients,
)
from fedforget.task import (
    evaluate_global_metrics,
    load_federated_data,
    model_arrays,
    new_model,
    score_name,
)

GRID_PULL_INTERVAL_S = 0.01
HISTORY_FILE = "history.json"
EVENTS_FILE = "events.json"
REQUESTS_FILE = "requests.json"
FINAL_MODEL_FILE = "final_model.npz"
ORIGINAL_MODEL_FILE = "original_model.npz"
SCORE_COLUMNS = {"accuracy": "acc"}  # history keys: test_acc, test_dice, test_dice_fg


@dataclass
class RunRecord:
    """What one federation run produced (also written to ``out-dir``)."""

    config: FederationConfig
    final_arrays: Arrays
    original_arrays: Arrays | None
    history: list[dict[str, Any]]
    rounds: list[RoundRecord]
    events: list[UnlearningEvent]
    requests: list[UnlearningRequest]
    wall_s: float
    stored_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def last_round(self) -> int:
        """The last round the run trained."""
        return self.rounds[-1].server_round if self.rounds else 0


def configured_requests(config: FederationConfig) -> list[UnlearningRequest]:
    """The request a config schedules: forget ``unlearn-clients`` after ``unlearn-at-round``."""
    if not config.targets:
        return []
    return [
        UnlearningRequest(
            client_ids=config.targets,
            not_before_round=config.unlearn_at_round + 1,
            method=config.method,
            request_id=f"config-round-{config.unlearn_at_round}",
        )
    ]


def method_context(config: FederationConfig) -> MethodContext:
    """What the config's model and recipe tell a method."""
    federated = load_federated_data(config)
    model = new_model(config, federated)

    def random_arrays(seed: int) -> Arrays:
        data = federated.data
        return model_arrays(build_model(config.model, data.input_shape, data.num_classes, seed))

    return MethodContext(
        initial_arrays=model_arrays(model),
        statistic_keys=statistic_keys(model),
        first_conv_key=first_conv_key(model),
        head_keys=head_keys(model),
        task=federated.data.task,
        local_epochs=config.local_epochs,
        seed=config.seed,
        random_arrays=random_arrays,
        settings={
            method_class(name).table: config.settings_of(method_class(name).table)
            for name in method_names()
        },
    )


def build_methods(
    config: FederationConfig, overrides: Mapping[str, FederatedMethod] | None = None
) -> dict[str, FederatedMethod]:
    """One instance of every registered method (``overrides`` replace some by name)."""
    context = method_context(config)
    methods = {name: method_class(name)(context) for name in method_names()}
    methods.update(overrides or {})
    return methods


def build_strategy(
    config: FederationConfig,
    requests: RequestQueue | None = None,
    methods: Mapping[str, FederatedMethod] | None = None,
    directory: ClientDirectory | None = None,
) -> UnlearningStrategy:
    """The strategy a config describes (queue: :func:`request_queue`'s by default).

    ``methods`` replaces registry instances by name (e.g. PUF with a given
    store); ``directory`` carries client identities over from an earlier
    phase of the same federation. Clients that the queue's applied requests
    forgot (in an earlier run on the same state directory) stay forgotten.
    """
    queue = requests if requests is not None else request_queue(config)
    for request in configured_requests(config):
        queue.submit(request)
    instances = build_methods(config, methods)
    directory = directory or ClientDirectory(config.excluded, config.seed)
    directory.forgotten.update(forgotten_clients(queue))
    intake = Intake(
        queue,
        instances,
        config.kept_methods,
        config.method,
        lambda name: config.settings_of(method_class(name).table),
        next(iter(instances.values())).context.task,
    )
    return UnlearningStrategy(
        methods=instances,
        intake=intake,
        kept=config.kept_methods,
        directory=directory,
        local_epochs=config.local_epochs,
        recovery_target=config.recovery_target_acc,
        recovery_metric=score_name(config),
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=config.min_available_clients,
    )


def request_queue(config: FederationConfig) -> RequestQueue:
    """The run's request queue: SQLite in ``state-dir`` if set (survives restarts), else memory."""
    if not config.state_dir:
        return InMemoryRequestQueue()
    from fedforget.api.sqlite_queue import SQLiteRequestQueue

    queue = SQLiteRequestQueue.in_state_dir(config.state_dir)
    # Requests left queued by a crashed run wait until every client has trained once in
    # this run (round 1), so that methods use updates of this run's model.
    queue.carry_over(first_round=2)
    return queue


def live_api(
    config: FederationConfig, strategy: UnlearningStrategy
) -> AbstractContextManager[object]:
    """The unlearning API served while rounds run (``api-enabled``), else nothing."""
    if not config.api_enabled:
        return nullcontext()
    from fedforget.api.server import live_api as serve

    return serve(config, strategy)


def run_rounds(
    grid: Grid,
    config: FederationConfig,
    strategy: UnlearningStrategy,
    initial_arrays: Arrays,
    first_round: int = 1,
    label: str = "",
) -> tuple[Arrays, list[dict[str, Any]], float]:
    """Run ``strategy`` on ``grid`` from ``first_round``; final model, history, seconds."""
    history: list[dict[str, Any]] = []
    started = time.monotonic()
    if hasattr(grid, "pull_interval"):
        # The simulation's InMemoryGrid polls for replies every 0.1 s by default:
        # on short rounds that wait is a visible share of the round time.
        grid.pull_interval = GRID_PULL_INTERVAL_S
    score = score_name(config)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = evaluate_global_metrics(config, to_arrays(arrays))
        record = strategy.rounds[-1] if strategy.rounds and server_round else None
        entry = {
            "round": server_round,
            **(
                {k: v for k, v in asdict(record).items() if k != "server_round"}
                if record
                else {"phase": "initial", "participants": []}
            ),
            **{f"test_{SCORE_COLUMNS.get(k, k)}": v for k, v in metrics.items() if k != "loss"},
            "test_loss": metrics["loss"],
            "elapsed_s": round(time.monotonic() - started, 3),
        }
        history.append(entry)
        if config.progress:
            print(
                f"{label}round {server_round:3d}/{config.num_server_rounds} "
                f"{entry['phase']:<8} {entry['elapsed_s']:7.1f}s  "
                f"test {SCORE_COLUMNS.get(score, score)} {metrics[score]:.3f}",
                flush=True,
            )
        return MetricRecord(metrics)

    result = strategy.start(
        grid=grid,
        initial_arrays=to_record(initial_arrays),
        num_rounds=config.num_server_rounds,
        timeout=config.round_timeout,
        train_config=ConfigRecord(config.to_run_config()),
        evaluate_config=ConfigRecord(config.to_run_config()),
        evaluate_fn=evaluate,
        first_round=first_round,
    )
    return to_arrays(result.arrays), history, time.monotonic() - started


def run_federation(
    grid: Grid, config: FederationConfig, requests: RequestQueue | None = None
) -> RunRecord:
    """Run the federation a config describes on ``grid``; write records to ``out-dir``."""
    strategy = build_strategy(config, requests)
    with live_api(config, strategy):
        final, history, wall_s = run_rounds(grid, config, strategy, model_arrays(new_model(config)))
    record = run_record(config, strategy, final, history, wall_s)
    if config.out_dir:
        write_record(Path(config.out_dir), record)
    return record


def run_record(
    config: FederationConfig,
    strategy: UnlearningStrategy,
    final: Arrays,
    history: list[dict[str, Any]],
    wall_s: float,
) -> RunRecord:
    """The typed record of a finished run of ``strategy``."""
    return RunRecord(
        config=config,
        final_arrays=final,
        original_arrays=strategy.events[0].model_before if strategy.events else None,
        history=history,
        rounds=list(strategy.rounds),
        events=list(strategy.events),
        requests=strategy.requests.all(),
        wall_s=wall_s,
        stored_bytes={name: strategy.methods[name].stored_bytes() for name in strategy.kept},
    )


def write_record(out_dir: Path, record: RunRecord) -> None:
    """Write a run's records (see the module docstring).

    The JSON files are strict JSON: a value that is not finite (e.g. the test
    loss of a diverged model) is written as ``null``, never as a bare ``NaN``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    events = [
        {k: v for k, v in asdict(event).items() if k != "model_before"} for event in record.events
    ]
    requests = [asdict(request) for request in record.requests]

    def finite_or_null(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite_or_null(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [finite_or_null(v) for v in value]
        return value

    for name, data in (
        (HISTORY_FILE, record.history),
        (EVENTS_FILE, events),
        (REQUESTS_FILE, requests),
    ):
        text = json.dumps(finite_or_null(data), indent=2, allow_nan=False)
        (out_dir / name).write_text(text)
    np.savez(out_dir / FINAL_MODEL_FILE, **record.final_arrays)
    if record.original_arrays is not None:
        np.savez(out_dir / ORIGINAL_MODEL_FILE, **record.original_arrays)


def read_arrays(path: Path) -> Arrays:
    """Arrays written by :func:`write_record`."""
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}
