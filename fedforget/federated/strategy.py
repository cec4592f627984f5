"""UnlearningStrategy: Flower's FedAvg that forgets clients with any registered method.

The strategy knows no method. Per round, ``configure_train`` identifies new
nodes (all of them when they are few, else only those an ordinary round draws:
:data:`IDENTIFY_ALL_MAX`), asks :class:`~fedforget.federated.intake.Intake`
for the step of this boundary and sends either an ordinary FedAvg round of the
eligible clients or the round the step's method plans; ``aggregate_train`` validates the replies
(:mod:`~fedforget.federated.replies`) and either averages them (and lets the
methods that keep history observe them) or hands them to the method. When a
step completes, its targets are forgotten for good: every method erases what
it kept of them and they are never sampled again, also under a new node id.

Client evaluation (``fraction_evaluate`` > 0) is folded into training: the
evaluation of the model after round r is asked of each sampled client in its
train message of round r+1, which carries that very model, and comes back in
the train reply (evaluated before training). A node then gets one message per
round instead of two (each message a whole ClientApp process in a
deployment). A sampled client that does not train in round r+1 with the
global model (not drawn, or an unlearning step's own action) gets its own
evaluate message, as after the last round. The metrics are the same and are
recorded under round r.

Stopping rule: with ``recovery_target`` > 0 the run ends at the first
evaluation after a completed step whose ``recovery_metric`` reaches it (the
retrained model's test accuracy in the paper's protocol); otherwise it runs
``num_rounds``, which is then the cap.

Checkpoints: with :attr:`UnlearningStrategy.checkpoint` set, every round that
ends outside a step ends with it (the federation writes
:meth:`~UnlearningStrategy.state_dict` and the model to ``state-dir``).
Request outcomes decided in the round (a step applied, a step's requests
rejected) reach the queue only after that checkpoint is durable, and the
checkpoint records them: a crash before the checkpoint leaves the requests
queued and the last checkpoint from before the step, so the step runs again
from the same model; a crash after it is completed by the resumed run
(:meth:`~UnlearningStrategy.load_state_dict` commits the recorded outcomes).
No checkpoint is taken during a step: a crash mid-step repeats the whole step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from fedforget.arrays import (
    Arrays,
    all_finite,
    changes_any,
    record_nbytes,
    to_arrays,
    to_record,
    update_norm,
)
from fedforget.federated.clients import ClientDirectory
from fedforget.federated.intake import Intake
from fedforget.federated.records import (
    FederationStatus,
    RoundRecord,
    UnlearningEvent,
    event_from_state,
    event_state,
)
from fedforget.federated.replies import accept_replies
from fedforget.methods.base import (
    TRAIN_ACTION,
    ClientUpdate,
    FederatedMethod,
    RoundPlan,
    StepFailed,
    StepResult,
    StepState,
    UnlearningStep,
    fedavg,
)
from fedforget.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVALUATE_REQUEST,
    EVALUATION_KEY,
    IDENTITY_RECORD,
    METRICS_KEY,
    ROUND_KEY,
    STEP_ARRAYS_PREFIX,
    natural_order,
)
from fedforget.requests import RequestQueue

logger = logging.getLogger(__name__)

IDENTITY_QUERY_TIMEOUT_S = 60.0
IDENTIFY_ALL_MAX = 100
"""New nodes are all asked for their client id at once when they are at most this many.

A round then samples among all online clients by client id, so a seeded run
samples the same clients every time. When more nodes are new, a round asks
only the new nodes it draws (:meth:`UnlearningStrategy._draw_trainers`):
asking every node of a large federation would cost its first round one
message per node (in Flower's simulation, a time that grows with the square
of the nodes). Which client a drawn new node is depends on Flower's node
ids, which are random, so such a run is not reproducible client for client
until every node has been identified."""

RoundEnd = Callable[[int, ArrayRecord, bool], None]
"""Called with (round, global model, whether the recovery target ended the run) after a round."""


@dataclass(frozen=True)
class QueueOutcome:
    """Requests' outcome decided in a round, committed to the queue after its checkpoint."""

    request_ids: tuple[str, ...]
    status: Literal["applied", "rejected"]
    server_round: int = 0
    update_norm: float = 0.0
    reason: str = ""

    def commit(self, queue: RequestQueue) -> None:
        """Record the outcome in ``queue`` (requests no longer queued are left as they are)."""
        queued = [
            request_id
            for request_id in self.request_ids
            if (request := queue.get(request_id)) is not None and request.status == "queued"
        ]
        if not queued:
            return
        if self.status == "applied":
            queue.mark_step_applied(queued, self.server_round, self.update_norm)
        else:
            for request_id in queued:
                queue.mark_rejected(request_id, self.reason)


@dataclass
class _DeferredEvaluation:
    """A round's client evaluation, waiting to ride on the next round's train messages."""

    server_round: int
    messages: list[Message]
    contents: list[RecordDict] = field(default_factory=list)


@dataclass
class _ActiveStep:
    step: UnlearningStep
    method: FederatedMethod
    model_before: Arrays
    stored_bytes: int
    state: StepState
    """What the method holds during the step (its index, and the method's own)."""


class UnlearningStrategy(FedAvg):
    """FedAvg that applies unlearning steps of registered methods at round boundaries.

    Parameters
    ----------
    methods : Mapping[str, FederatedMethod]
        This run's method instances, by registry name.
    intake : Intake
        Turns the queue's due requests into steps.
    kept : Collection[str]
        Methods that observe every ordinary round (keep history).
    directory : ClientDirectory
        Client identities, forgotten and excluded clients, seeded sampling.
    local_epochs : float
        Local epochs of an ordinary training round (for the cost records).
    recovery_target : float (default: 0.0)
        Stop once ``recovery_metric`` reaches this after a step; 0 = never.
    recovery_metric : str (default: "accuracy")
        Key of the server-side evaluation MetricRecord the target refers to.
    fold_evaluation : bool (default: True)
        Ask for client evaluation in the next round's train messages where
        the round allows it (see the module docstring); False = Flower's
        evaluate messages after every round.
    **fedavg_kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.

    """

    def __init__(
        self,
        *,
        methods: Mapping[str, FederatedMethod],
        intake: Intake,
        kept: Collection[str],
        directory: ClientDirectory,
        local_epochs: float,
        recovery_target: float = 0.0,
        recovery_metric: str = "accuracy",
        fold_evaluation: bool = True,
        **fedavg_kwargs: object,
    ) -> None:
        super().__init__(**fedavg_kwargs)  # type: ignore[arg-type]
        self.methods = dict(methods)
        self.intake = intake
        self.kept = tuple(kept)
        self.directory = directory
        self.local_epochs = local_epochs
        self.recovery_target = recovery_target
        self.recovery_metric = recovery_metric
        self.fold_evaluation = fold_evaluation
        self.client_evaluations: dict[int, MetricRecord] = {}
        """Aggregated client evaluation of the model after each round (``fraction_evaluate``)."""
        self._deferred: _DeferredEvaluation | None = None
        self._timeout: float | None = None
        self.events: list[UnlearningEvent] = []
        self.rounds: list[RoundRecord] = []
        self.test_scores: list[tuple[int, float]] = []
        self.status = FederationStatus(
            test_metric=recovery_metric,
            method=intake.default_method,
            methods_kept=self.kept,
            clients_excluded=tuple(sorted(directory.excluded, key=natural_order)),
        )
        self._active: _ActiveStep | None = None
        self._global: Arrays = {}
        self._plan = RoundPlan({})
        self._round_started = time.monotonic()
        self._outcomes: list[QueueOutcome] = []
        self.checkpoint: RoundEnd | None = None
        """Saves the run's state at the end of each round outside a step (None: no checkpoints)."""

    @property
    def requests(self) -> RequestQueue:
        """The queue the strategy takes requests from."""
        return self.intake.queue

    # ------------------------------------------------------------------ info
    def summary(self) -> None:
        """Log the strategy's configuration."""
        super().summary()
        logger.info(
            "\t└──> unlearning: default method %s, history kept for %s, excluded %s",
            self.intake.default_method,
            ", ".join(self.kept) or "none",
            sorted(self.directory.excluded),
        )

    # ------------------------------------------------------------- the loop
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        first_round: int = 1,
    ) -> Result:
        """Run rounds ``first_round..num_rounds``; end early once the stopping rule is met.

        Flower's round loop (train, client-side evaluation, server-side
        evaluation), started at ``first_round`` so that a run can go on from
        a model trained earlier (its rounds, and so its clients' seeds, go on).
        A step that has begun always completes, past ``num_rounds`` if it must:
        a half-done step (a half-calibrated FedEraser replay, a degraded MoDe
        model) would leave a model that is neither the original nor unlearned.
        """
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        result = Result()
        arrays = initial_arrays
        if evaluate_fn and first_round == 1:
            metrics = evaluate_fn(0, arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[0] = metrics
                self._record_score(0, metrics)
        server_round = first_round
        self._timeout = timeout
        while server_round <= num_rounds or self._active is not None:
            replies = grid.send_and_receive(
                self.configure_train(server_round, arrays, train_config, grid), timeout=timeout
            )
            new_arrays, _ = self.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = new_arrays
            evaluation = list(self.configure_evaluate(server_round, arrays, evaluate_config, grid))
            if evaluation and self.fold_evaluation:
                self._deferred = _DeferredEvaluation(server_round, evaluation)
            elif evaluation:
                replies = grid.send_and_receive(evaluation, timeout=timeout)
                client_metrics = self.aggregate_evaluate(server_round, replies)
                if client_metrics is not None:
                    self.client_evaluations[server_round] = client_metrics
            metrics = evaluate_fn(server_round, arrays) if evaluate_fn else None
            if metrics is not None:
                result.evaluate_metrics_serverapp[server_round] = metrics
                self._record_score(server_round, metrics)
            recovered = self._recovered(server_round, metrics)
            self._end_round(server_round, arrays, recovered)
            if recovered:
                logger.info(
                    "Recovery complete after round %s: %s >= %.4f",
                    server_round,
                    self.recovery_metric,
                    self.recovery_target,
                )
                break
            server_round += 1
        self._send_deferred(grid, self._deferred.messages if self._deferred else [])
        result.evaluate_metrics_clientapp.update(self.client_evaluations)
        result.arrays = arrays
        return result

    def _record_score(self, server_round: int, metrics: MetricRecord) -> None:
        """Add the round's ``recovery_metric`` to the status (the live view's curve)."""
        value = metrics.get(self.recovery_metric)
        if isinstance(value, int | float) and math.isfinite(value):
            self.test_scores.append((server_round, float(value)))
            self.status = replace(self.status, test_scores=tuple(self.test_scores))

    def _end_round(self, server_round: int, arrays: ArrayRecord, recovered: bool) -> None:
        """Checkpoint (outside a step), then commit the round's request outcomes."""
        if self._active is not None:
            return  # mid-step: the checkpoint from before the step stands
        if self.checkpoint is not None:
            self.checkpoint(server_round, arrays, recovered)
            for method in self.methods.values():
                method.state_saved()
        for outcome in self._outcomes:
            outcome.commit(self.requests)
        self._outcomes.clear()

    def _decide(self, outcome: QueueOutcome) -> None:
        """Commit an outcome now, or after the round's checkpoint if there is one."""
        if self.checkpoint is None:
            outcome.commit(self.requests)
        else:
            self._outcomes.append(outcome)

    def _recovered(self, server_round: int, metrics: MetricRecord | None) -> bool:
        if not (self.recovery_target > 0 and self.events and metrics is not None):
            return False
        if self._active is not None:
            return False
        value = metrics.get(self.recovery_metric)
        return (
            server_round >= self.events[-1].server_round
            and isinstance(value, int | float)
            and value >= self.recovery_target
        )

    # -------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Identify new nodes, take the boundary's step, plan the round, build its messages."""
        self._round_started = time.monotonic()
        self._wait_for_nodes(grid)
        node_ids = list(grid.get_node_ids())
        unknown = self.directory.unidentified(node_ids)
        if len(unknown) <= IDENTIFY_ALL_MAX:
            self._identify_nodes(grid, unknown)
        self._global = to_arrays(arrays)
        online = self.directory.online(node_ids)
        if self._active is None:
            step = self.intake.take(server_round, self.directory, set(online))
            if step is not None:
                method = self.methods[step.method]
                self._active = _ActiveStep(
                    step,
                    method,
                    self._global,
                    method.stored_bytes(),
                    method.begin(step, self._global),
                )
        if self._active is not None:
            active = self._active
            remaining = self.directory.eligible(node_ids, blocked=active.step.targets)
            plan = active.method.plan(active.step, active.state, self._global, remaining)
            # clients run the step with its settings (the request's options included)
            table = type(active.method).table
            plan.config = {
                **{f"{table}.{key}": value for key, value in active.step.settings.items()},
                **plan.config,
            }
            phase, method_name = "unlearn", active.step.method
        else:
            chosen = self._draw_trainers(grid, node_ids)
            online = self.directory.online(node_ids)
            plan = RoundPlan(
                self._global, dict.fromkeys(chosen, TRAIN_ACTION), epochs=self.local_epochs
            )
            phase, method_name = ("recover" if self.events else "train"), ""
        self._plan = plan
        messages, bytes_down = self._messages(server_round, plan, config, online)
        messages = self._fold_deferred(grid, messages)
        asked = sorted(plan.clients, key=natural_order)
        self.rounds.append(
            RoundRecord(
                server_round,
                phase,
                [c for c in asked if c in online],
                method=method_name,
                actions={c: a for c, a in plan.clients.items() if a != TRAIN_ACTION},
                bytes_down=bytes_down,
            )
        )
        self._publish_status(server_round)
        logger.info(
            "configure_train: round %s (%s), %s clients", server_round, phase, len(messages)
        )
        return messages

    def _messages(
        self,
        server_round: int,
        plan: RoundPlan,
        config: ConfigRecord,
        online: Mapping[str, int],
    ) -> tuple[list[Message], int]:
        """One message per planned online client; the bytes of model arrays they carry."""
        round_config = ConfigRecord({**dict(config), **plan.config, ROUND_KEY: server_round})
        records = {ARRAYS_KEY: to_record(plan.arrays)}
        for name, extra in plan.extra.items():
            records[f"{STEP_ARRAYS_PREFIX}{name}"] = to_record(extra)
        content = RecordDict({**records, CONFIG_KEY: round_config})
        per_message = record_nbytes(records.values())
        messages = []
        for client_id, action in plan.clients.items():
            if client_id not in online:
                logger.warning(
                    "Client %s is offline: round %s goes on without it", client_id, server_round
                )
                continue
            message_type = "train" if action == TRAIN_ACTION else f"train.{action}"
            messages.append(
                Message(content=content, dst_node_id=online[client_id], message_type=message_type)
            )
        return messages, per_message * len(messages)

    def _fold_deferred(self, grid: Grid, messages: list[Message]) -> list[Message]:
        """Ask the last round's evaluation in these train messages where they carry its model.

        A train message carries the model the evaluation is of when the round
        sends the global model and the message is an ordinary ``train``. The
        other sampled clients' evaluate messages are sent now, on their own.
        """
        deferred = self._deferred
        if deferred is None:
            return messages
        evaluated = {m.metadata.dst_node_id for m in deferred.messages}
        carries_global = self._plan.arrays is self._global
        folded: list[Message] = []
        marked: RecordDict | None = None
        for message in messages:
            node = message.metadata.dst_node_id
            if carries_global and node in evaluated and message.metadata.message_type == "train":
                if marked is None:
                    marked = RecordDict(dict(message.content.items()))
                    request = ConfigRecord({ROUND_KEY: deferred.server_round})
                    marked[EVALUATE_REQUEST] = request
                message = Message(content=marked, dst_node_id=node, message_type="train")
                evaluated.discard(node)
            folded.append(message)
        self._send_deferred(
            grid, [m for m in deferred.messages if m.metadata.dst_node_id in evaluated]
        )
        return folded

    def _send_deferred(self, grid: Grid, messages: list[Message]) -> None:
        """Send ``messages`` of the deferred evaluation on their own; record it if no more comes.

        With no train message left to carry the rest (the run has ended) the
        evaluation is complete once these replies are in.
        """
        deferred = self._deferred
        if deferred is None:
            return
        if messages:
            replies = grid.send_and_receive(messages, timeout=self._timeout)
            deferred.contents += [reply.content for reply in replies if not reply.has_error()]
        if len(messages) == len(deferred.messages):  # nothing rides on train messages
            self._record_evaluation(deferred.server_round, deferred.contents)
            self._deferred = None

    def _record_evaluation(self, server_round: int, contents: list[RecordDict]) -> None:
        """Aggregate a round's client evaluation replies (FedAvg's metric aggregation)."""
        contents = [c for c in contents if c.metric_records]
        if not contents:
            return
        metrics = self.evaluate_metrics_aggr_fn(contents, self.weighted_by_key)
        self.client_evaluations[server_round] = metrics

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, then average them or hand them to the step's method.

        Client evaluations folded into the replies complete the last round's.
        """
        replies = list(replies)
        if self._deferred is not None:
            deferred, self._deferred = self._deferred, None
            deferred.contents += [
                RecordDict({METRICS_KEY: reply.content[EVALUATION_KEY]})
                for reply in replies
                if not reply.has_error() and EVALUATION_KEY in reply.content.metric_records
            ]
            self._record_evaluation(deferred.server_round, deferred.contents)
        record = self.rounds[-1]
        record.bytes_up = sum(
            record_nbytes(m.content.array_records.values()) for m in replies if not m.has_error()
        )
        updates, record.rejected_replies = accept_replies(
            replies, self._plan.arrays, self.directory, self._plan.clients
        )
        record.contributors = [u.client_id for u in updates]
        record.client_epochs = self._plan.epochs * len(updates)
        if self._active is not None:
            new = self._step_round(server_round, updates)
        elif updates:
            new = fedavg(self._plan.arrays, updates)
            for name in self.kept:
                self.methods[name].observe(server_round, self._plan.arrays, updates)
        else:
            new = None
        record.round_s = time.monotonic() - self._round_started
        self._publish_status(server_round)
        return (to_record(new) if new is not None else None), None

    def _step_round(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """One round of the active step; completes or abandons it when due."""
        active = self._active
        assert active is not None
        try:
            result = active.method.apply(
                active.step, active.state, self._global, self._plan, updates
            )
            if not all_finite(result.arrays):
                raise StepFailed(
                    f"{active.step.method} produced NaN or Inf values; the model was left as it "
                    f"was: resubmit with smaller settings"
                )
            if (
                result.done
                and active.method.forgets_by_update
                and not changes_any(active.model_before, result.arrays)
            ):
                raise StepFailed(
                    f"{active.step.method} left the model exactly as it was (update norm 0: "
                    f"its update is zero or too small to change a single value), so nothing "
                    f"was forgotten: resubmit with larger settings"
                )
        except StepFailed as failure:
            return self._abandon(server_round, str(failure), updates)
        active.state.index += 1
        if result.done:
            self._complete(server_round, result)
        return result.arrays

    def _complete(self, server_round: int, result: StepResult) -> None:
        """Record a finished step: its requests applied (one commit), its targets forgotten.

        The queue's commit is one transaction (a crash leaves the whole step
        recorded or none of it); with checkpoints it follows the round's
        checkpoint, which records it (see the module docstring).
        """
        active = self._active
        assert active is not None
        step = active.step
        self._active = None
        norm = update_norm(active.model_before, result.arrays)
        request_ids = tuple(r.request_id for r in step.requests)
        self._decide(QueueOutcome(request_ids, "applied", server_round, norm))
        self.directory.forgotten.update(step.targets)
        for method in self.methods.values():  # no method keeps anything of a forgotten client
            method.forget(step.targets)
        self.events.append(
            UnlearningEvent(
                server_round=server_round,
                first_round=step.first_round,
                method=step.method,
                clients=step.targets,
                request_ids=tuple(r.request_id for r in step.requests),
                settings=dict(step.settings),
                update_norm=norm,
                applied_at=time.time(),
                stored_bytes=active.stored_bytes,
                model_before=active.model_before,
            )
        )
        logger.info(
            "%s forgot client(s) %s in rounds %s-%s (update norm %.4f)",
            step.method,
            ", ".join(step.targets),
            step.first_round,
            server_round,
            norm,
        )

    def _abandon(self, server_round: int, reason: str, updates: list[ClientUpdate]) -> Arrays:
        """End a failed step: requests rejected, the global model as it was before the step.

        If the round sent the global model, the remaining clients' ordinary
        updates are still averaged, so the round is not lost.
        """
        active = self._active
        assert active is not None
        self._active = None
        request_ids = tuple(r.request_id for r in active.step.requests)
        self._decide(QueueOutcome(request_ids, "rejected", reason=reason))
        logger.warning("Unlearning step in round %s failed: %s", server_round, reason)
        self.rounds[-1].phase = "recover" if self.events else "train"
        ordinary = [
            u
            for u in updates
            if self._plan.clients.get(u.client_id) == TRAIN_ACTION
            and u.client_id not in active.step.targets
        ]
        if active.state.index == 0 and ordinary and self._plan.arrays is self._global:
            return fedavg(self._global, ordinary)
        return active.model_before

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The state a checkpoint keeps (JSON values, arrays at the leaves).

        Clients (node map, forgotten, sampling generator), every method's
        state, the round records, the completed steps (without the model
        before each: it holds the forgotten clients' contributions) and the
        request outcomes this round decided. Taken between steps only.
        """
        if self._active is not None:
            raise RuntimeError("a checkpoint is never taken during an unlearning step")
        return {
            "directory": self.directory.state_dict(),
            "methods": {name: method.state_dict() for name, method in self.methods.items()},
            "rounds": [asdict(record) for record in self.rounds],
            "events": [event_state(event) for event in self.events],
            "outcomes": [asdict(outcome) for outcome in self._outcomes],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Return to a checkpoint's state; commit the request outcomes it recorded.

        Outcomes are committed only for requests still queued: the run that
        wrote the checkpoint may have died before its own commit.
        """
        self.directory.load_state_dict(state["directory"])
        for name, method_state in state["methods"].items():
            if name in self.methods:
                self.methods[name].load_state_dict(method_state)
            elif method_state:
                logger.warning("The checkpoint holds state of method %s, not registered now", name)
        self.rounds = [RoundRecord(**record) for record in state["rounds"]]
        self.events = [event_from_state(event) for event in state["events"]]
        for saved in state["outcomes"]:
            QueueOutcome(**{**saved, "request_ids": tuple(saved["request_ids"])}).commit(
                self.requests
            )
        self._publish_status(self.rounds[-1].server_round if self.rounds else 0)

    # ------------------------------------------------------------ evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation on a fraction of the clients still taking part."""
        if self.fraction_evaluate == 0.0:
            return []
        node_ids = list(grid.get_node_ids())
        online = self.directory.online(node_ids)
        eligible = self.directory.eligible(node_ids)
        count = max(int(len(eligible) * self.fraction_evaluate), self.min_evaluate_nodes)
        config[ROUND_KEY] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        nodes = [online[c] for c in self.directory.sample(eligible, count)]
        return self._construct_messages(record, nodes, "evaluate")

    # --------------------------------------------------------------- helpers
    def _wait_for_nodes(self, grid: Grid) -> None:
        while len(list(grid.get_node_ids())) < self.min_available_nodes:
            logger.info("Waiting for at least %s nodes to connect", self.min_available_nodes)
            time.sleep(1.0)

    def _identify_nodes(self, grid: Grid, nodes: list[int], key_silent: bool = True) -> None:
        """Ask ``nodes`` (not seen before) for their client id.

        A node that does not answer within ``IDENTITY_QUERY_TIMEOUT_S`` is
        keyed by its node id if ``key_silent``, else it stays new (and is
        asked again the next time it is drawn).
        """
        if not nodes:
            return
        query = RecordDict({self.configrecord_key: ConfigRecord({"query": IDENTITY_RECORD})})
        replies = grid.send_and_receive(
            self._construct_messages(query, nodes, "query"), timeout=IDENTITY_QUERY_TIMEOUT_S
        )
        for reply in replies:
            self.directory.learn(reply)
        if key_silent:
            self.directory.assume_unreported(nodes)

    def _draw_trainers(self, grid: Grid, node_ids: list[int]) -> list[str]:
        """``fraction_train`` of the eligible online clients, asking only drawn new nodes.

        Nodes not identified yet are drawn together with the eligible clients;
        only the drawn ones are asked who they are, and one that turns out to
        be forgotten, excluded or already drawn, or does not answer in time
        (a slow start, e.g. the simulation's first round on a busy machine),
        is replaced by another draw; a silent node is not trained, and is
        asked again when it is drawn again. With every node identified this
        is one seeded draw of client ids.
        """
        directory = self.directory
        eligible = directory.eligible(node_ids)
        new_nodes = sorted(directory.unidentified(node_ids))
        pool = len(eligible) + len(new_nodes)
        count = max(int(pool * self.fraction_train), self.min_train_nodes)
        chosen: list[str] = []
        while len(chosen) < count and (eligible or new_nodes):
            clients, nodes = directory.draw(eligible, new_nodes, count - len(chosen))
            self._identify_nodes(grid, nodes, key_silent=False)
            usable = set(clients) | set(directory.eligible(nodes))
            answered = [directory.node_clients[n] for n in nodes if n in directory.node_clients]
            drawn = [*clients, *answered]
            chosen += [c for c in dict.fromkeys(drawn) if c in usable and c not in chosen]
            asked = set(nodes)
            eligible = [c for c in eligible if c not in usable]
            new_nodes = [node for node in new_nodes if node not in asked]
        return sorted(chosen, key=natural_order)

    def _publish_status(self, server_round: int) -> None:
        """Replace the status snapshot the API reads."""
        directory = self.directory
        kept = [self.methods[name] for name in self.kept]
        self.status = FederationStatus(
            current_round=server_round,
            method=self.intake.default_method,
            methods_kept=self.kept,
            clients_seen=tuple(sorted(directory.known(), key=natural_order)),
            clients_forgotten=tuple(sorted(directory.forgotten, key=natural_order)),
            clients_excluded=tuple(sorted(directory.excluded, key=natural_order)),
            stored_clients=len({c for m in kept for c in m.stored_clients()}),
            stored_bytes=sum(m.stored_bytes() for m in kept),
            test_metric=self.recovery_metric,
            test_scores=tuple(self.test_scores),
        )
