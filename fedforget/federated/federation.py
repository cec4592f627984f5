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
  (the global model just before the first unlearning step; written as soon as
  that step completes, so that a resumed run can report it).

They name clients, methods and who took part in every round, what the
request database in ``state-dir`` guards: each is written mode 0600
(atomically, :func:`fedforget.state.files.write_durably`), in a folder
created mode 0700 (an existing one keeps its mode).

With ``state-dir`` set, the run checkpoints every round that ends outside an
unlearning step (:mod:`fedforget.state.checkpoint`) and a run started again
with the same state-dir and configuration resumes after the last checkpoint
(:func:`fedforget.state.checkpoint.resume_point`); ``store = "disk"`` keeps
PUF's pseudo-gradients in ``state-dir/pseudo-gradients/``
(:mod:`fedforget.state.disk_store`).

The ServerApp of ``flwr run`` and of deployments, ``fedforget run`` and
``fedforget compare`` all go through :func:`build_strategy`.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedforget.api.state_dir import prepare_state_dir
from fedforget.arrays import Arrays, to_arrays, to_record
from fedforget.config import FederationConfig
from fedforget.federated.clients import ClientDirectory
from fedforget.federated.intake import Intake
from fedforget.federated.records import RoundRecord, UnlearningEvent
from fedforget.federated.strategy import RoundEnd, UnlearningStrategy
from fedforget.methods import method_class, method_names
from fedforget.methods.base import FederatedMethod, MethodContext
from fedforget.models import build_model, first_conv_key, head_keys, statistic_keys
from fedforget.requests import (
    InMemoryRequestQueue,
    RequestQueue,
    UnlearningRequest,
    forgotten_clients,
)
from fedforget.state.checkpoint import Checkpoint, resume_point, save_checkpoint
from fedforget.state.disk_store import PSEUDO_GRADIENT_DIR, DiskPseudoGradientStore
from fedforget.state.files import write_durably
from fedforget.state.store import InMemoryPseudoGradientStore, PseudoGradientStore
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

logger = logging.getLogger(__name__)


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
    """Seconds the run took, over every process that ran it (a resumed run goes on from the
    elapsed time its checkpoint recorded)."""
    stored_bytes: dict[str, int] = field(default_factory=dict)
    first_round: int = 1
    """The first round this process ran (the checkpoint's round + 1 when it resumed)."""

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


def method_context(
    config: FederationConfig, store: PseudoGradientStore | None = None
) -> MethodContext:
    """What the config's model and recipe tell a method.

    ``store`` is the one pseudo-gradient store every method that keeps one
    shares (the run's disk store); None gives each its own in-memory store in
    ``store-dtype``.
    """
    federated = load_federated_data(config)
    model = new_model(config, federated)

    def random_arrays(seed: int) -> Arrays:
        data = federated.data
        return model_arrays(build_model(config.model, data.input_shape, data.num_classes, seed))

    def pseudo_gradient_store() -> PseudoGradientStore:
        return store if store is not None else InMemoryPseudoGradientStore(config.store_dtype)

    return MethodContext(
        pseudo_gradient_store=pseudo_gradient_store,
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
    config: FederationConfig,
    overrides: Mapping[str, FederatedMethod] | None = None,
    store: PseudoGradientStore | None = None,
) -> dict[str, FederatedMethod]:
    """One instance of every registered method (``overrides`` replace some by name).

    ``store``: see :func:`method_context`.
    """
    context = method_context(config, store)
    methods = {name: method_class(name)(context) for name in method_names()}
    methods.update(overrides or {})
    return methods


def build_strategy(
    config: FederationConfig,
    requests: RequestQueue | None = None,
    methods: Mapping[str, FederatedMethod] | None = None,
    directory: ClientDirectory | None = None,
    resume: Checkpoint | None = None,
) -> UnlearningStrategy:
    """The strategy a config describes (queue: :func:`request_queue`'s by default).

    ``methods`` replaces registry instances by name (e.g. PUF with a given
    store); ``directory`` carries client identities over from an earlier
    phase of the same federation. Clients that the queue's applied requests
    forgot (in an earlier run on the same state directory) stay forgotten.
    ``resume`` restores the strategy's state from a checkpoint; without it a
    disk store starts empty.
    """
    queue = requests if requests is not None else request_queue(config)
    for request in configured_requests(config):
        queue.submit(request)
    instances = build_methods(config, methods, open_store(config, fresh=resume is None))
    directory = directory or ClientDirectory(config.excluded, config.seed, config.num_partitions)
    directory.forgotten.update(forgotten_clients(queue))
    intake = Intake(
        queue,
        instances,
        config.kept_methods,
        config.method,
        lambda name: config.settings_of(method_class(name).table),
        next(iter(instances.values())).context.task,
    )
    strategy = UnlearningStrategy(
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
    if resume is not None:
        strategy.load_state_dict(resume.state)
    return strategy


def open_store(config: FederationConfig, fresh: bool) -> PseudoGradientStore | None:
    """The run's disk store (``store = "disk"``), emptied if ``fresh``; None for "memory".

    A fresh run (no checkpoint) finding files there was stopped before its
    first checkpoint: they belong to rounds that will run again.
    """
    if config.store != "disk":
        return None
    store = DiskPseudoGradientStore(
        Path(config.state_dir) / PSEUDO_GRADIENT_DIR, config.store_dtype
    )
    if fresh and store.client_ids():
        logger.info(
            "%s holds pseudo-gradients of a run stopped before its first checkpoint: "
            "removed, the run starts from round 1",
            store.directory,
        )
    if fresh:
        store.clear()
    return store


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
    history: list[dict[str, Any]] | None = None,
) -> tuple[Arrays, list[dict[str, Any]], float]:
    """Run ``strategy`` on ``grid`` from ``first_round``; final model, history, seconds.

    ``history`` (a resumed run's, from its checkpoint) is extended in place;
    its elapsed seconds go on from its last entry, and so do the seconds
    returned: the run's wall time over every process that ran it. Each
    process adds the time it ran, measured on its own clock: a clock reading
    is never compared with another process's.
    """
    history = history if history is not None else []
    earlier_s = elapsed_before(history)
    started = time.monotonic() - earlier_s
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
        train_config=ConfigRecord(config.client_section()),
        evaluate_config=ConfigRecord(config.client_section()),
        evaluate_fn=evaluate,
        first_round=first_round,
    )
    return to_arrays(result.arrays), history, time.monotonic() - started


def elapsed_before(history: list[dict[str, Any]]) -> float:
    """Seconds the run had taken at its last recorded round (0 for a new run)."""
    return float(history[-1]["elapsed_s"]) if history else 0.0


def run_federation(
    grid: Grid, config: FederationConfig, requests: RequestQueue | None = None
) -> RunRecord:
    """Run the federation a config describes on ``grid``; write records to ``out-dir``.

    With ``state-dir``: resume after its checkpoint if it has one (of the same
    configuration: :class:`~fedforget.state.checkpoint.CheckpointMismatch`
    otherwise), and checkpoint every round.
    """
    if config.state_dir:
        # before anything in it is trusted: refused if another user could change it
        prepare_state_dir(Path(config.state_dir))
    saved = resume_point(config)
    strategy = build_strategy(config, requests, resume=saved)
    history = list(saved.history) if saved is not None else []
    if saved is not None:
        restore_original_model(config, strategy)
        logger.info("Resuming after round %s from %s", saved.server_round, config.state_dir)
        if config.progress:
            print(
                f"resuming from the checkpoint of round {saved.server_round} in "
                f"{config.state_dir}"
                + (" (the run had reached its recovery target)" if saved.recovered else ""),
                flush=True,
            )
    if config.state_dir:
        strategy.checkpoint = checkpointer(config, strategy, history)
    first_round = saved.server_round + 1 if saved is not None else 1
    with live_api(config, strategy):
        if saved is not None and saved.recovered:
            final, wall_s = saved.arrays, elapsed_before(history)
        else:
            initial = saved.arrays if saved is not None else model_arrays(new_model(config))
            final, history, wall_s = run_rounds(
                grid, config, strategy, initial, first_round, history=history
            )
    record = run_record(config, strategy, final, history, wall_s)
    record.first_round = first_round
    if config.out_dir:
        write_record(Path(config.out_dir), record)
    return record


def checkpointer(
    config: FederationConfig, strategy: UnlearningStrategy, history: list[dict[str, Any]]
) -> RoundEnd:
    """The strategy's end-of-round hook: write the checkpoint of ``config.state_dir``.

    ``history`` is the run's per-round history, which :func:`run_rounds`
    extends before each round ends. Before the checkpoint that first records
    a completed step, the model before it goes to ``out-dir`` (if set) as
    ``original_model.npz``: the state directory never keeps it.
    """
    original_written = False

    def save(server_round: int, arrays: ArrayRecord, recovered: bool) -> None:
        nonlocal original_written
        original = strategy.events[0].model_before if strategy.events else {}
        if config.out_dir and original and not original_written:
            out_dir = private_out_dir(Path(config.out_dir))
            write_durably(out_dir / ORIGINAL_MODEL_FILE, npz_bytes(original))
            original_written = True
        checkpoint = Checkpoint(
            server_round, to_arrays(arrays), strategy.state_dict(), history, recovered
        )
        save_checkpoint(config.state_dir, checkpoint, config)

    return save


def restore_original_model(config: FederationConfig, strategy: UnlearningStrategy) -> None:
    """Give a resumed run's first step its model before, from ``out-dir`` if it is there."""
    path = Path(config.out_dir) / ORIGINAL_MODEL_FILE if config.out_dir else None
    if not strategy.events or path is None or not path.is_file():
        return
    strategy.events[0] = replace(strategy.events[0], model_before=read_arrays(path))


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
        original_arrays=(strategy.events[0].model_before or None) if strategy.events else None,
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
    Every file is written mode 0600 (a 0700 folder if this creates it).
    """
    private_out_dir(out_dir)
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
        write_durably(out_dir / name, text.encode())
    write_durably(out_dir / FINAL_MODEL_FILE, npz_bytes(record.final_arrays))
    if record.original_arrays is not None:
        write_durably(out_dir / ORIGINAL_MODEL_FILE, npz_bytes(record.original_arrays))


def private_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` mode 0700 if it does not exist (parents as usual); return it."""
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return out_dir


def npz_bytes(arrays: Arrays) -> bytes:
    """``arrays`` as the bytes of an ``.npz`` file (what :func:`read_arrays` reads)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_arrays(path: Path) -> Arrays:
    """Arrays written by :func:`write_record`."""
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}
