"""PUFStrategy: Flower's FedAvg that can forget clients with negated pseudo-gradients.

Client identity
    Every per-client record is keyed by a stable client id: the partition id
    the ClientApp reports (in the ``identity`` ConfigRecord of each reply, and
    in answer to an identity query the strategy sends to each node it has not
    seen yet). Flower's ``node_id`` changes across runs and, without SuperNode
    authentication, whenever a SuperNode reconnects, so it is never the key for
    clients that report an id. A client that reports none (an unmodified
    Flower ClientApp) is keyed ``node-<node_id>``: stable only under SuperNode
    authentication, where node ids are tied to keys. PUF itself needs nothing
    but standard client updates.

Per round
    ``configure_train`` identifies new nodes, takes the unlearning requests due
    this round and picks the participants; ``aggregate_train`` validates each
    reply (finite values, the global model's keys and shapes, a positive
    example count; invalid replies are logged and neither stored nor
    aggregated), keeps each client's LATEST pseudo-gradient in the store and
    aggregates. In an unlearning round the new global model is
    :func:`fedforget.puf.puf_update` of the round's model, the targets'
    pseudo-gradients (``stored``, or ``fresh``: recomputed by the targets in
    this round) and, for PUF-Regular, the remaining clients' updates. Targets
    are then forgotten for good: their stored pseudo-gradients are erased and
    they are never sampled again, also under a new node id.

Stopping rule
    With ``recovery_target`` > 0, the run ends at the first evaluation after an
    unlearning round whose ``recovery_metric`` reaches it (the retrained
    model's test accuracy in the paper's protocol); otherwise it runs
    ``num_rounds``, which is then the cap.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from fedforget.puf import Arrays, Contribution, is_float_array, puf_update, update_norm
from fedforget.requests import InMemoryRequestQueue, RequestQueue, UnlearningRequest
from fedforget.store import InMemoryPseudoGradientStore, PseudoGradientStore, StoredPseudoGradient

IDENTITY_RECORD = "identity"
PARTITION_ID_KEY = "partition-id"

logger = logging.getLogger(__name__)


def client_id_of_node(node_id: int) -> str:
    """Fallback client id for a node that reports no partition id."""
    return f"node-{node_id}"


def to_arrays(record: ArrayRecord) -> Arrays:
    """An ArrayRecord as a dict of numpy arrays (state-dict names kept)."""
    return {name: array.numpy() for name, array in record.items()}


def to_record(arrays: Arrays) -> ArrayRecord:
    """A dict of numpy arrays as an ArrayRecord."""
    # np.ascontiguousarray turns 0-d arrays (BatchNorm num_batches_tracked) into shape (1,)
    return ArrayRecord(
        {name: Array(np.require(value, requirements="C")) for name, value in arrays.items()}
    )


@dataclass(frozen=True)
class UnlearningStep:
    """The concurrent PUF step chosen for one round."""

    requests: tuple[UnlearningRequest, ...]
    targets: tuple[str, ...]
    mode: str
    eta: float
    source: str


@dataclass(frozen=True)
class UnlearningEvent:
    """What an applied PUF step did (no client data)."""

    server_round: int
    clients: tuple[str, ...]
    request_ids: tuple[str, ...]
    mode: str
    eta: float
    source: str
    update_norm: float
    applied_at: float
    model_before: Arrays = field(repr=False)


@dataclass
class RoundSummary:
    """Who took part in a round and what kind of round it was."""

    server_round: int
    phase: str  # "train", "unlearn" or "recover"
    participants: list[str]
    contributors: list[str] = field(default_factory=list)
    rejected_replies: int = 0
    round_s: float = 0.0  # configure_train to aggregate_train: the round without evaluation


class _RecoveryComplete(Exception):
    """Raised inside ``start`` to end the run once the stopping rule is met."""

    def __init__(self, server_round: int, arrays: ArrayRecord) -> None:
        super().__init__(server_round)
        self.server_round = server_round
        self.arrays = arrays


class PUFStrategy(FedAvg):
    """FedAvg with PUF federated unlearning of one or several clients.

    Parameters
    ----------
    requests : RequestQueue | None (default: None)
        Where unlearning requests arrive; an in-memory queue if None.
    store : PseudoGradientStore | None (default: None)
        Where the latest pseudo-gradient of each client is kept; in memory if None.
    unlearn_mode : str (default: "special")
        Default PUF variant, ``"special"`` or ``"regular"``.
    unlearn_source : str (default: "stored")
        Default pseudo-gradient source, ``"stored"`` or ``"fresh"``.
    eta_special, eta_regular : float (default: 2.0, 20.0)
        Default eta of each variant.
    excluded : Collection[str] (default: ())
        Client ids that never take part (the retrained reference).
    statistic_keys : Collection[str] (default: ())
        Floating-point buffers that are running statistics (never negated).
    recovery_target : float (default: 0.0)
        Stop once ``recovery_metric`` reaches this after unlearning; 0 = never.
    recovery_metric : str (default: "accuracy")
        Key of the server-side evaluation MetricRecord the target refers to.
    seed : int (default: 0)
        Seed of client sampling when ``fraction_train`` < 1.
    **fedavg_kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.

    """

    def __init__(
        self,
        *,
        requests: RequestQueue | None = None,
        store: PseudoGradientStore | None = None,
        unlearn_mode: str = "special",
        unlearn_source: str = "stored",
        eta_special: float = 2.0,
        eta_regular: float = 20.0,
        excluded: Collection[str] = (),
        statistic_keys: Collection[str] = (),
        recovery_target: float = 0.0,
        recovery_metric: str = "accuracy",
        seed: int = 0,
        **fedavg_kwargs: object,
    ) -> None:
        super().__init__(**fedavg_kwargs)  # type: ignore[arg-type]
        self.requests: RequestQueue = requests if requests is not None else InMemoryRequestQueue()
        self.store: PseudoGradientStore = (
            store if store is not None else InMemoryPseudoGradientStore()
        )
        self.unlearn_mode = unlearn_mode
        self.unlearn_source = unlearn_source
        self.eta = {"special": eta_special, "regular": eta_regular}
        self.excluded = set(excluded)
        self.statistic_keys = frozenset(statistic_keys)
        self.recovery_target = recovery_target
        self.recovery_metric = recovery_metric
        self.node_clients: dict[int, str] = {}
        self.forgotten: set[str] = set()
        self.events: list[UnlearningEvent] = []
        self.rounds: list[RoundSummary] = []
        self.current_round = 0
        self._sent: Arrays = {}
        self._step: UnlearningStep | None = None
        self._round_started = time.monotonic()
        self._rng = random.Random(seed)

    # ------------------------------------------------------------------ info
    def summary(self) -> None:
        """Log the strategy's configuration."""
        super().summary()
        logger.info(
            "\t└──> PUF: mode=%s source=%s eta=%s excluded=%s",
            self.unlearn_mode,
            self.unlearn_source,
            self.eta,
            sorted(self.excluded),
        )

    def known_clients(self) -> set[str]:
        """Client ids seen so far (from identity queries or replies)."""
        return set(self.node_clients.values())

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
    ) -> Result:
        """Run Flower's round loop, ending early once the stopping rule is met."""
        evaluations: dict[int, MetricRecord] = {}

        def evaluate_and_check(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = evaluate_fn(server_round, arrays) if evaluate_fn else None
            if metrics is not None:
                evaluations[server_round] = metrics
            if self._recovered(server_round, metrics):
                raise _RecoveryComplete(server_round, arrays)
            return metrics

        try:
            return super().start(
                grid,
                initial_arrays,
                num_rounds,
                timeout,
                train_config,
                evaluate_config,
                evaluate_and_check,
            )
        except _RecoveryComplete as done:
            logger.info(
                "Recovery complete after round %s: %s >= %.4f",
                done.server_round,
                self.recovery_metric,
                self.recovery_target,
            )
            return Result(arrays=done.arrays, evaluate_metrics_serverapp=evaluations)

    def _recovered(self, server_round: int, metrics: MetricRecord | None) -> bool:
        if not (self.recovery_target > 0 and self.events and metrics is not None):
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
        """Identify new nodes, take due unlearning requests, pick participants."""
        self.current_round = server_round
        self._round_started = time.monotonic()
        self._wait_for_nodes(grid)
        self._identify_nodes(grid)
        self._sent = to_arrays(arrays)
        self._step = self._take_due_requests(server_round, grid)
        eligible = self._eligible_nodes(grid)
        if self._step is None:
            count = max(int(len(eligible) * self.fraction_train), self.min_train_nodes)
            nodes = self._sample(eligible, count)
            phase = "recover" if self.events else "train"
        else:
            step = self._step
            targets = [n for n in self._online_nodes(grid) if self.node_clients[n] in step.targets]
            trainers = [] if step.mode == "special" else eligible
            nodes = trainers + (targets if step.source == "fresh" else [])
            phase = "unlearn"
        self.rounds.append(
            RoundSummary(
                server_round, phase, sorted((self.node_clients[n] for n in nodes), key=_natural)
            )
        )
        logger.info("configure_train: round %s (%s), %s clients", server_round, phase, len(nodes))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, store pseudo-gradients, aggregate (or apply PUF)."""
        result = self._aggregate(server_round, replies)
        self.rounds[-1].round_s = time.monotonic() - self._round_started
        return result

    def _aggregate(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._accept_replies(list(replies))
        step, self._step = self._step, None
        targets = set(step.targets) if step else set()
        for client_id, (_, delta, count) in accepted.items():
            if client_id not in targets:
                self.store.put(client_id, StoredPseudoGradient(delta, count, server_round))
        remaining = {cid: v for cid, v in accepted.items() if cid not in targets}
        self.rounds[-1].contributors = sorted(accepted, key=_natural)
        if step is None:
            if not remaining:
                return None, None
            arrays, metrics = super().aggregate_train(
                server_round, [message for message, _, _ in remaining.values()]
            )
            if arrays is not None:
                arrays = self._cast_like_sent(arrays)
            return arrays, metrics
        return self._apply_unlearning(server_round, step, accepted, remaining)

    def _apply_unlearning(
        self,
        server_round: int,
        step: UnlearningStep,
        accepted: dict[str, tuple[Message, Arrays, int]],
        remaining: dict[str, tuple[Message, Arrays, int]],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contributions: dict[str, Contribution] = {}
        for client_id in step.targets:
            if step.source == "fresh":
                if client_id in accepted:
                    _, delta, count = accepted[client_id]
                    contributions[client_id] = Contribution(delta, count)
            else:
                entry = self.store.latest(client_id)
                if entry is not None:
                    contributions[client_id] = entry.contribution()
        missing = sorted(set(step.targets) - set(contributions))
        metrics = (
            self.train_metrics_aggr_fn(
                [message.content for message, _, _ in remaining.values()], self.weighted_by_key
            )
            if remaining
            else None
        )
        if missing:
            reason = (
                f"client(s) {', '.join(missing)} returned no valid update in unlearning round "
                f"{server_round}; nothing was forgotten: resubmit, or use source='stored'"
            )
            for request in step.requests:
                self.requests.mark_rejected(request.request_id, reason)
            logger.warning("Unlearning round %s failed: %s", server_round, reason)
            self.rounds[-1].phase = "train"
            if not remaining:
                return None, None
            arrays, metrics = super().aggregate_train(
                server_round, [message for message, _, _ in remaining.values()]
            )
            return (self._cast_like_sent(arrays) if arrays else None), metrics
        new = puf_update(
            self._sent,
            contributions,
            mode=step.mode,
            eta=step.eta,
            remaining={cid: Contribution(d, n) for cid, (_, d, n) in remaining.items()}
            if step.mode == "regular"
            else None,
            statistic_keys=self.statistic_keys,
        )
        norm = update_norm(self._sent, new)
        for client_id in step.targets:
            self.store.erase(client_id)
            self.forgotten.add(client_id)
        for request in step.requests:
            self.requests.mark_applied(request.request_id, server_round, norm)
        self.events.append(
            UnlearningEvent(
                server_round=server_round,
                clients=step.targets,
                request_ids=tuple(r.request_id for r in step.requests),
                mode=step.mode,
                eta=step.eta,
                source=step.source,
                update_norm=norm,
                applied_at=time.time(),
                model_before=self._sent,
            )
        )
        logger.info(
            "PUF-%s forgot client(s) %s in round %s (eta=%s, %s, update norm %.4f)",
            step.mode,
            ", ".join(step.targets),
            server_round,
            step.eta,
            step.source,
            norm,
        )
        return to_record(new), metrics

    # ------------------------------------------------------------ evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation on a fraction of the clients still taking part."""
        if self.fraction_evaluate == 0.0:
            return []
        eligible = self._eligible_nodes(grid)
        count = max(int(len(eligible) * self.fraction_evaluate), self.min_evaluate_nodes)
        nodes = self._sample(eligible, count)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.EVALUATE)

    # --------------------------------------------------------------- helpers
    def _wait_for_nodes(self, grid: Grid) -> None:
        while len(list(grid.get_node_ids())) < self.min_available_nodes:
            logger.info("Waiting for at least %s nodes to connect", self.min_available_nodes)
            time.sleep(1.0)

    def _online_nodes(self, grid: Grid) -> list[int]:
        """Identified online nodes, in client-id order (node ids are random per run)."""
        online = [n for n in grid.get_node_ids() if n in self.node_clients]
        return sorted(online, key=lambda n: _natural(self.node_clients[n]))

    def _sample(self, nodes: list[int], count: int) -> list[int]:
        """``count`` of ``nodes`` (all if fewer), drawn by the strategy's seeded generator."""
        if count >= len(nodes):
            return list(nodes)
        return sorted(self._rng.sample(nodes, count), key=lambda n: _natural(self.node_clients[n]))

    def _eligible_nodes(self, grid: Grid) -> list[int]:
        """Online nodes whose client is neither forgotten nor excluded (nor a target now)."""
        blocked = self.forgotten | self.excluded | set(self._step.targets if self._step else ())
        return [n for n in self._online_nodes(grid) if self.node_clients[n] not in blocked]

    def _identify_nodes(self, grid: Grid) -> None:
        """Ask nodes not seen before for their partition id."""
        unknown = [n for n in grid.get_node_ids() if n not in self.node_clients]
        if not unknown:
            return
        query = RecordDict({self.configrecord_key: ConfigRecord({"query": IDENTITY_RECORD})})
        replies = grid.send_and_receive(
            self._construct_messages(query, unknown, MessageType.QUERY), timeout=60.0
        )
        for reply in replies:
            self._client_of(reply)
        for node in unknown:  # no answer: keyed by node id until one reports
            self.node_clients.setdefault(node, client_id_of_node(node))

    def _client_of(self, message: Message) -> str:
        """Client id of a reply's sender; learns the node -> client mapping."""
        node = message.metadata.src_node_id
        client_id = client_id_of_node(node)
        if not message.has_error():
            identity = message.content.config_records.get(IDENTITY_RECORD)
            if identity is not None and PARTITION_ID_KEY in identity:
                client_id = str(identity[PARTITION_ID_KEY])
        if self.node_clients.get(node) != client_id:
            if client_id in self.forgotten:
                logger.warning(
                    "Forgotten client %s reconnected as node %s: refused", client_id, node
                )
            self.node_clients[node] = client_id
        return client_id

    def _take_due_requests(self, server_round: int, grid: Grid) -> UnlearningStep | None:
        """Validate due requests; group the compatible ones into one PUF step."""
        chosen: list[UnlearningRequest] = []
        key: tuple[str, float, str] | None = None
        targets: list[str] = []
        online = {self.node_clients[n] for n in self._online_nodes(grid)}
        for request in self.requests.due(server_round):
            mode = request.mode or self.unlearn_mode
            source = request.source or self.unlearn_source
            eta = request.eta if request.eta is not None else self.eta.get(mode, math.nan)
            reason = self._refusal(request, mode, eta, source, online, targets)
            if reason:
                logger.warning("Unlearning request %s rejected: %s", request.request_id, reason)
                self.requests.mark_rejected(request.request_id, reason)
                continue
            if key is None:
                key = (mode, eta, source)
            if (mode, eta, source) != key:
                continue  # waits for a later boundary: one PUF variant per round
            chosen.append(request)
            targets.extend(c for c in request.client_ids if c not in targets)
        if not chosen or key is None:
            return None
        return UnlearningStep(tuple(chosen), tuple(targets), key[0], key[1], key[2])

    def _refusal(
        self,
        request: UnlearningRequest,
        mode: str,
        eta: float,
        source: str,
        online: set[str],
        already_chosen: list[str],
    ) -> str:
        """Why a request cannot be applied now ('' if it can)."""
        if mode not in self.eta:
            return f"unknown mode {mode!r}: use 'special' or 'regular'"
        if not eta > 0:
            return f"eta must be > 0, got {eta}"
        if source not in ("stored", "fresh"):
            return f"unknown pseudo-gradient source {source!r}: use 'stored' or 'fresh'"
        known = self.known_clients() | set(self.store.client_ids())
        for client_id in request.client_ids:
            if client_id in self.forgotten:
                return f"client {client_id} has already been forgotten"
            if client_id in self.excluded:
                return f"client {client_id} is excluded from this federation: it never trained"
            if client_id not in known:
                return (
                    f"unknown client {client_id}: no node has reported this id; known "
                    f"clients are {', '.join(sorted(known, key=_natural)) or 'none yet'}"
                )
            if source == "stored" and self.store.latest(client_id) is None:
                return (
                    f"client {client_id} has no stored pseudo-gradient yet: it has not "
                    f"completed a training round; use source='fresh' or wait"
                )
            if source == "fresh" and client_id not in online:
                return (
                    f"client {client_id} is offline, so it cannot recompute its update: "
                    f"use source='stored'"
                )
        blocked = self.forgotten | self.excluded | set(already_chosen) | set(request.client_ids)
        if not self.known_clients() - blocked:
            return "forgetting these clients would leave no client to recover with"
        return ""

    def _accept_replies(self, replies: list[Message]) -> dict[str, tuple[Message, Arrays, int]]:
        """Valid replies by client id, with their pseudo-gradient and example count."""
        accepted: dict[str, tuple[Message, Arrays, int]] = {}
        metric_keys: set[str] | None = None
        rejected = 0
        for message in replies:
            node = message.metadata.src_node_id
            if message.has_error():
                logger.warning("Reply from node %s is an error: %s", node, message.error.reason)
                rejected += 1
                continue
            client_id = self._client_of(message)
            reason, delta, count = self._check_reply(message)
            if not reason and client_id in self.forgotten | self.excluded:
                reason = "the client has been forgotten or is excluded"
            if not reason and metric_keys is not None:
                keys = set(next(iter(message.content.metric_records.values())).keys())
                if keys != metric_keys:
                    reason = f"metric keys {sorted(keys)} differ from {sorted(metric_keys)}"
            if reason:
                logger.warning("Rejected reply of client %s (node %s): %s", client_id, node, reason)
                rejected += 1
                continue
            if metric_keys is None:
                metric_keys = set(next(iter(message.content.metric_records.values())).keys())
            accepted[client_id] = (message, delta, count)
        if self.rounds:
            self.rounds[-1].rejected_replies = rejected
        # Aggregate in client-id order, not arrival order: float sums then do not depend
        # on which client answered first, and a seeded run is reproducible.
        return dict(sorted(accepted.items(), key=lambda item: _natural(item[0])))

    def _check_reply(self, message: Message) -> tuple[str, Arrays, int]:
        """('' or the reason to reject, pseudo-gradient, example count) of a reply."""
        content = message.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return "expected exactly one ArrayRecord and one MetricRecord", {}, 0
        metrics = next(iter(content.metric_records.values()))
        count = metrics.get(self.weighted_by_key)
        if not isinstance(count, int | float) or not count > 0 or not math.isfinite(count):
            return f"{self.weighted_by_key} must be a positive number, got {count!r}", {}, 0
        arrays = to_arrays(next(iter(content.array_records.values())))
        if set(arrays) != set(self._sent):
            return "array names differ from the global model's", {}, 0
        delta: Arrays = {}
        for name, sent in self._sent.items():
            value = arrays[name]
            if value.shape != sent.shape:
                return f"{name} has shape {value.shape}, the model's is {sent.shape}", {}, 0
            if is_float_array(sent):
                if not np.all(np.isfinite(value)):
                    return f"{name} contains NaN or Inf", {}, 0
                delta[name] = (value.astype(sent.dtype) - sent).astype(sent.dtype)
        return "", delta, int(count)

    def _cast_like_sent(self, record: ArrayRecord) -> ArrayRecord:
        """FedAvg's average computes in float64: restore each array's dtype."""
        return to_record(
            {
                name: value.astype(self._sent[name].dtype)
                for name, value in to_arrays(record).items()
            }
        )


def _natural(client_id: str) -> tuple[int, str]:
    return (int(client_id), "") if client_id.isdigit() else (1 << 62, client_id)
