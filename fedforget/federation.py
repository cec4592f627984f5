"""The ServerApp's body: one federation run with PUF, from a config to its records.

``run_federation`` builds the PUF strategy from the config, queues the
configured unlearning request, evaluates the global model on the server's
test set after every round (one progress line each), and, when ``out-dir`` is
set, writes what the run produced:

* ``history.json``: one record per round (phase, participants, test metrics,
  elapsed seconds);
* ``events.json``: the applied unlearning steps (round, clients, norm);
* ``requests.json``: every request with its final status;
* ``final_model.npz`` and, if a client was forgotten, ``original_model.npz``
  (the global model just before the first unlearning round).
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedforget.config import FederationConfig
from fedforget.models import statistic_keys
from fedforget.puf import Arrays
from fedforget.requests import (
    InMemoryRequestQueue,
    RequestQueue,
    UnlearningRequest,
    forgotten_clients,
)
from fedforget.store import PseudoGradientStore
from fedforget.strategy import PUFStrategy, to_arrays, to_record
from fedforget.task import evaluate_global_metrics, model_arrays, new_model, score_name

GRID_PULL_INTERVAL_S = 0.01
HISTORY_FILE = "history.json"
EVENTS_FILE = "events.json"
REQUESTS_FILE = "requests.json"
FINAL_MODEL_FILE = "final_model.npz"
ORIGINAL_MODEL_FILE = "original_model.npz"
SCORE_COLUMNS = {"accuracy": "acc"}  # history keys: test_acc, test_dice, test_dice_fg


@dataclass
class FederationOutcome:
    """What a federation run produced (also written to ``out-dir``)."""

    final_arrays: Arrays
    original_arrays: Arrays | None
    history: list[dict[str, Any]]
    strategy: PUFStrategy


def configured_requests(config: FederationConfig) -> list[UnlearningRequest]:
    """The request a config schedules: forget ``unlearn-clients`` after ``unlearn-at-round``."""
    if not config.targets:
        return []
    return [
        UnlearningRequest(
            client_ids=config.targets,
            not_before_round=config.unlearn_at_round + 1,
            request_id=f"config-round-{config.unlearn_at_round}",
        )
    ]


def build_strategy(
    config: FederationConfig,
    requests: RequestQueue | None = None,
    store: PseudoGradientStore | None = None,
) -> PUFStrategy:
    """The PUF strategy a config describes (in-memory queue and store by default).

    Without ``requests``, the queue is :func:`request_queue`'s (durable with
    ``state-dir``). Clients that the queue's applied requests forgot (in an
    earlier run on the same state directory) stay forgotten.
    """
    queue = requests if requests is not None else request_queue(config)
    for request in configured_requests(config):
        queue.submit(request)
    strategy = PUFStrategy(
        requests=queue,
        store=store,
        unlearn_mode=config.unlearn_mode,
        unlearn_source=config.unlearn_source,
        eta_special=config.eta_special,
        eta_regular=config.eta_regular,
        excluded=config.excluded,
        statistic_keys=statistic_keys(new_model(config)),
        recovery_target=config.recovery_target_acc,
        recovery_metric=score_name(config),
        seed=config.seed,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=config.min_available_clients,
    )
    strategy.forgotten.update(forgotten_clients(queue))
    return strategy


def request_queue(config: FederationConfig) -> RequestQueue:
    """The run's request queue: SQLite in ``state-dir`` if set (survives restarts), else memory."""
    if not config.state_dir:
        return InMemoryRequestQueue()
    from fedforget.api.sqlite_queue import SQLiteRequestQueue

    queue = SQLiteRequestQueue.in_state_dir(config.state_dir)
    # Requests left queued by a crashed run wait until every client has trained once in
    # this run (round 1), so that PUF negates updates of this run's model.
    queue.carry_over(first_round=2)
    return queue


def live_api(config: FederationConfig, strategy: PUFStrategy) -> AbstractContextManager[object]:
    """The unlearning API served while rounds run (``api-enabled``), else nothing."""
    if not config.api_enabled:
        return nullcontext()
    from fedforget.api.server import live_api as serve

    return serve(config, strategy)


def run_federation(
    grid: Grid, config: FederationConfig, requests: RequestQueue | None = None
) -> FederationOutcome:
    """Run the federation a config describes on ``grid``; write records to ``out-dir``."""
    strategy = build_strategy(config, requests)
    history: list[dict[str, Any]] = []
    started = time.monotonic()
    if hasattr(grid, "pull_interval"):
        # The simulation's InMemoryGrid polls for replies every 0.1 s by default:
        # on short rounds that wait is a visible share of the round time.
        grid.pull_interval = GRID_PULL_INTERVAL_S

    def evaluate(server_round: int, arrays: Any) -> MetricRecord:
        metrics = evaluate_global_metrics(config, to_arrays(arrays))
        score = score_name(config)
        summary = strategy.rounds[-1] if strategy.rounds and server_round else None
        record = {
            "round": server_round,
            "phase": summary.phase if summary else "initial",
            "participants": summary.participants if summary else [],
            "contributors": summary.contributors if summary else [],
            "rejected_replies": summary.rejected_replies if summary else 0,
            "round_s": round(summary.round_s, 4) if summary else 0.0,
            **{f"test_{SCORE_COLUMNS.get(k, k)}": v for k, v in metrics.items() if k != "loss"},
            "test_loss": metrics["loss"],
            "elapsed_s": round(time.monotonic() - started, 3),
        }
        history.append(record)
        if config.progress:
            print(
                f"round {server_round:3d}/{config.num_server_rounds} "
                f"{record['phase']:<8} {record['elapsed_s']:7.1f}s  "
                f"test {SCORE_COLUMNS.get(score, score)} {metrics[score]:.3f}",
                flush=True,
            )
        return MetricRecord(metrics)

    task_config = ConfigRecord(config.to_run_config())
    with live_api(config, strategy):
        result = strategy.start(
            grid=grid,
            initial_arrays=to_record(model_arrays(new_model(config))),
            num_rounds=config.num_server_rounds,
            timeout=config.round_timeout,
            train_config=task_config,
            evaluate_config=ConfigRecord(config.to_run_config()),
            evaluate_fn=evaluate,
        )
    outcome = FederationOutcome(
        final_arrays=to_arrays(result.arrays),
        original_arrays=strategy.events[0].model_before if strategy.events else None,
        history=history,
        strategy=strategy,
    )
    if config.out_dir:
        write_outcome(Path(config.out_dir), outcome)
    return outcome


def write_outcome(out_dir: Path, outcome: FederationOutcome) -> None:
    """Write a run's records (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    strategy = outcome.strategy
    events = [
        {k: v for k, v in asdict(event).items() if k != "model_before"} for event in strategy.events
    ]
    requests = [asdict(request) for request in strategy.requests.all()]
    for name, data in (
        (HISTORY_FILE, outcome.history),
        (EVENTS_FILE, events),
        (REQUESTS_FILE, requests),
    ):
        (out_dir / name).write_text(json.dumps(data, indent=2))
    np.savez(out_dir / FINAL_MODEL_FILE, **outcome.final_arrays)
    if outcome.original_arrays is not None:
        np.savez(out_dir / ORIGINAL_MODEL_FILE, **outcome.original_arrays)


def read_arrays(path: Path) -> Arrays:
    """Arrays written by :func:`write_outcome`."""
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}
