"""The spine's logic without Ray: requests into steps, replies, outcomes, failed and long steps.

The strategy is the real one (:func:`build_strategy`), driven round by round
through a scripted grid: node ``FIRST_NODE + i`` is client ``i``; it answers
the identity query with its partition id and every train message (ordinary or
a method's client step) with the model it received moved by ``0.01 * (i + 1)``
on ``10 * (i + 1)`` examples. No model is trained, so every value is known.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedforget.arrays import Arrays, is_float_array, to_arrays, to_record
from fedforget.config import FederationConfig
from fedforget.federated.clients import ClientDirectory
from fedforget.federated.federation import build_strategy
from fedforget.federated.replies import accept_replies
from fedforget.methods import register, unregister
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
    request_settings,
)
from fedforget.methods.mode import MoDe
from fedforget.methods.puf import PufSpecial
from fedforget.protocol import IDENTITY_RECORD, PARTITION_ID_KEY
from fedforget.requests import InMemoryRequestQueue, UnlearningRequest
from fedforget.task import model_arrays, new_model

FIRST_NODE = 100
SMALL = FederationConfig(
    num_partitions=4, partitioner="iid", model="mlp", unlearn_at_round=0, progress=False
)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """The ids a running ServerApp has set (a Message needs them)."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def shift(client: int) -> float:
    return 0.01 * (client + 1)


def examples(client: int) -> int:
    return 10 * (client + 1)


def reply(message: Message, client: int, arrays: Arrays | None = None) -> Message:
    """Client ``client``'s answer to a train message: the received model, shifted."""
    received = to_arrays(message.content["arrays"])
    returned = arrays or {
        k: (v + shift(client)).astype(v.dtype) if is_float_array(v) else v
        for k, v in received.items()
    }
    content = RecordDict(
        {
            "arrays": to_record(returned),
            "metrics": MetricRecord({"train-loss": 1.0, "num-examples": examples(client)}),
            IDENTITY_RECORD: ConfigRecord({PARTITION_ID_KEY: client}),
        }
    )
    return Message(content, reply_to=message)


class EchoGrid:
    """Clients ``0..clients-1``; those in ``offline`` are not connected."""

    def __init__(self, clients: int, offline: Iterable[int] = ()) -> None:
        self.nodes = [FIRST_NODE + i for i in range(clients) if i not in set(offline)]
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> Any:
        replies = []
        for message in messages:
            self.sent.append(message)
            client = message.metadata.dst_node_id - FIRST_NODE
            if message.metadata.message_type == "query":
                identity = ConfigRecord({PARTITION_ID_KEY: client})
                replies.append(Message(RecordDict({IDENTITY_RECORD: identity}), reply_to=message))
            elif message.metadata.message_type.startswith("train"):
                replies.append(reply(message, client))
        return replies


def initial(config: FederationConfig) -> ArrayRecord:
    return to_record(model_arrays(new_model(config)))


# ----------------------------------------------------------------- the intake
def intake_setup(forgotten=(), online=("0", "1", "2", "3")):
    """A 5-client strategy (client 4 excluded) whose nodes reported ids 0..4."""
    config = SMALL.replace(
        num_partitions=5, exclude_clients="4", method="natural", methods="puf-special"
    )
    strategy = build_strategy(config, InMemoryRequestQueue())
    strategy.directory.node_clients = {FIRST_NODE + i: str(i) for i in range(5)}
    strategy.directory.forgotten.update(forgotten)
    return strategy, set(online)


def test_compatible_requests_form_one_step_and_the_others_wait():
    """Same method and settings: one step, targets in request order; other settings wait."""
    strategy, online = intake_setup()
    queue = strategy.requests
    first = queue.submit(UnlearningRequest(("2",), request_id="a"))
    second = queue.submit(UnlearningRequest(("0",), method="natural", request_id="b"))
    other = queue.submit(UnlearningRequest(("1",), method="retrain", request_id="c"))
    step = strategy.intake.take(5, strategy.directory, online)
    assert step is not None
    assert step.method == "natural" and step.targets == ("2", "0")
    assert [r.request_id for r in step.requests] == [first.request_id, second.request_id]
    assert step.settings == {} and step.first_round == 5
    assert queue.get(other.request_id).status == "queued"  # its turn comes at a later boundary
    again = strategy.intake.take(6, strategy.directory, online)  # a and b are still queued
    assert again is not None and again.targets == ("2", "0")


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (UnlearningRequest(("3",)), "client 3 has already been forgotten"),
        (UnlearningRequest(("4",)), "client 4 is excluded from this federation"),
        (UnlearningRequest(("9",)), "unknown client 9: no node has reported this id"),
        (UnlearningRequest(("1",), method="nope"), "unknown unlearning method 'nope'"),
        (
            UnlearningRequest(("1",), method="puf-special", options={"eta-max": 5.0}),
            "puf.eta-max bounds what requests may ask for",
        ),
        (
            UnlearningRequest(("1",), method="puf-special", options={"eta-speshal": 5.0}),
            "puf.eta-speshal is not a setting of puf-special",
        ),
        (
            UnlearningRequest(("1",), method="federaser"),
            "federaser needs every client update",
        ),
        (
            UnlearningRequest(("1",), method="puf-special", options={"source": "fresh"}),
            "client 1 is offline, and puf-special needs the targets online",
        ),
        (UnlearningRequest(("0", "1", "2")), "would leave no client to recover with"),
    ],
)
def test_a_refused_request_is_rejected_with_its_reason_and_forms_no_step(request_, reason):
    strategy, online = intake_setup(forgotten={"3"}, online={"0", "2"})
    queue = strategy.requests
    refused = queue.submit(request_)
    valid = queue.submit(UnlearningRequest(("2",)))
    step = strategy.intake.take(3, strategy.directory, online)
    assert queue.get(refused.request_id).status == "rejected"
    assert reason in queue.get(refused.request_id).reason
    assert step is not None and step.requests == (queue.get(valid.request_id),)


# ------------------------------------------------------------- the directory
def test_eligible_clients_are_online_and_neither_forgotten_excluded_nor_blocked():
    directory = ClientDirectory(excluded=("4",), seed=0)
    directory.node_clients = {7: "10", 3: "2", 5: "4", 9: "1", 11: "3", 12: "node-12"}
    directory.forgotten.add("3")
    assert directory.eligible([7, 3, 5, 9, 11, 12]) == ["1", "2", "10", "node-12"]
    assert directory.eligible([7, 3, 9], blocked=("2",)) == ["1", "10"]
    assert directory.eligible([99]) == []  # an unidentified node is not a client yet
    assert directory.online([11, 9]) == {"1": 9, "3": 11}


# ----------------------------------------------------------------- the replies
def test_accept_replies_keeps_valid_asked_updates_in_client_order():
    model = model_arrays(new_model(SMALL))
    sent = Message(
        RecordDict({"arrays": to_record(model)}), dst_node_id=FIRST_NODE + 3, message_type="train"
    )
    directory = ClientDirectory(excluded=("5",))
    directory.forgotten.add("4")

    def from_client(client: int, arrays: Arrays | None = None) -> Message:
        message = Message(
            RecordDict({"arrays": to_record(model)}),
            dst_node_id=FIRST_NODE + client,
            message_type="train",
        )
        return reply(message, client, arrays)

    nan = {k: np.full_like(v, np.nan) if is_float_array(v) else v for k, v in model.items()}
    first = next(iter(model))
    short = {**model, first: model[first][:1]}
    error = Message(error=Error(code=0, reason="boom"), reply_to=sent)
    replies = [
        from_client(3),
        from_client(1),
        from_client(4),  # forgotten
        from_client(5),  # excluded
        from_client(6),  # not asked
        from_client(0, nan),
        from_client(2, short),
        error,
    ]
    accepted, rejected = accept_replies(replies, model, directory, {"0", "1", "2", "3", "4"})
    assert [u.client_id for u in accepted] == ["1", "3"] and rejected == 6
    for update in accepted:
        client = int(update.client_id)
        assert update.num_examples == examples(client)
        for name, value in model.items():
            expected = shift(client) if is_float_array(value) else 0
            np.testing.assert_allclose(update.delta.get(name, 0), expected, rtol=1e-5)


# ------------------------------------------------------------ request settings
def test_request_settings_apply_options_over_the_run_and_refuse_what_the_run_bounds():
    run = {**MoDe.defaults, "momentum": 0.9}
    settings = request_settings(MoDe, run, {"guidance-rounds": 3, "lr": 1})
    assert settings == {**MoDe.defaults, "momentum": 0.9, "guidance-rounds": 3, "lr": 1.0}
    assert isinstance(settings["lr"], float)  # an int option for a float setting is coerced
    for options, message in (
        ({"guidance-rounds": 101}, "mode.guidance-rounds must be at most 100"),
        ({"momentum": 1.0}, "mode.momentum must be in [0, 1)"),
        ({"guidance-rounds": "3"}, "mode.guidance-rounds must be of type int"),
        ({"guidance-round": 3}, "mode.guidance-round is not a setting of mode"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            request_settings(MoDe, run, options)
    with pytest.raises(ValueError, match="only the run's configuration sets it"):
        request_settings(PufSpecial, dict(PufSpecial.defaults), {"eta-max": 1.0})


# ----------------------------------------------------- steps in the round loop
def test_a_step_that_begins_in_the_last_round_completes_past_num_rounds():
    """MoDe's 3-round step requested for round 2 of 2 runs rounds 2-4; then the run ends."""
    config = SMALL.replace(
        num_partitions=3,
        num_server_rounds=2,
        unlearn_at_round=1,
        unlearn_clients="1",
        method="mode",
        method_settings=(("mode.degradation-rounds", 1), ("mode.guidance-rounds", 2)),
    )
    strategy = build_strategy(config, InMemoryRequestQueue())
    grid = EchoGrid(3)
    strategy.start(grid, initial(config), num_rounds=2, train_config=ConfigRecord({}))
    assert [(r.server_round, r.phase) for r in strategy.rounds] == [
        (1, "train"),
        (2, "unlearn"),
        (3, "unlearn"),
        (4, "unlearn"),
    ]
    (event,) = strategy.events
    assert (event.first_round, event.server_round, event.clients) == (2, 4, ("1",))
    (request,) = strategy.requests.all()
    assert (request.status, request.applied_round) == ("applied", 4)
    # the step's messages carry its table; the guidance rounds send the target its action
    steps = [m for m in grid.sent if m.metadata.message_type == "train.mode"]
    assert [m.metadata.dst_node_id for m in steps] == [FIRST_NODE + 1] * 2
    assert steps[0].content["config"]["mode.guidance-rounds"] == 2


class FailingStep(FederatedMethod):
    """Round 0 sends the global model to the remaining clients, then fails."""

    name = "failing-step"
    table = "failing-step"
    defaults: ClassVar[dict[str, Any]] = {}

    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        return RoundPlan(global_arrays, dict.fromkeys(remaining, TRAIN_ACTION))

    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        raise StepFailed("the toy step fails: nothing was forgotten")


@pytest.fixture
def failing_method():
    register(FailingStep)
    yield FailingStep
    unregister(FailingStep.name)


def test_an_abandoned_step_rejects_its_requests_and_keeps_the_round_of_training(failing_method):
    config = SMALL.replace(
        num_partitions=3, num_server_rounds=3, unlearn_at_round=1, method="failing-step"
    )
    strategy = build_strategy(config, InMemoryRequestQueue())
    models: dict[int, Arrays] = {}

    def evaluate(server_round, arrays):
        models[server_round] = to_arrays(arrays)
        return MetricRecord({"accuracy": 0.0})

    strategy.start(
        EchoGrid(3), initial(config), 3, train_config=ConfigRecord({}), evaluate_fn=evaluate
    )
    (request,) = strategy.requests.all()
    assert request.status == "rejected" and request.reason.startswith("the toy step fails")
    assert strategy.events == [] and strategy.directory.forgotten == set()
    assert [r.phase for r in strategy.rounds] == ["train", "train", "train"]
    # round 2's plan trained clients 1 and 2 (0 was the target): their FedAvg is kept
    trained = [ClientUpdate(str(c), {}, shifted(models[1], c), examples(c)) for c in (1, 2)]
    expected = fedavg(models[1], trained)
    for name, value in expected.items():
        np.testing.assert_allclose(models[2][name], value, rtol=1e-6, err_msg=name)


def shifted(model: Arrays, client: int) -> Arrays:
    """The update the echo client ``client`` returns: ``shift(client)`` on every float array."""
    return {k: np.full_like(v, shift(client)) for k, v in model.items() if is_float_array(v)}


def test_outcomes_are_committed_after_the_rounds_checkpoint():
    """The applied step is in the checkpoint's outcomes while the queue still says queued."""
    config = SMALL.replace(num_partitions=3, num_server_rounds=3, unlearn_at_round=1)
    strategy = build_strategy(config, InMemoryRequestQueue())
    (request,) = strategy.requests.all()
    seen = []

    def checkpoint(server_round, arrays, recovered):
        outcomes = strategy.state_dict()["outcomes"]
        status = strategy.requests.get(request.request_id).status
        seen.append((server_round, status, [(o["status"], o["server_round"]) for o in outcomes]))

    strategy.checkpoint = checkpoint
    strategy.start(EchoGrid(3), initial(config), 3, train_config=ConfigRecord({}))
    assert seen == [
        (1, "queued", []),
        (2, "queued", [("applied", 2)]),  # decided in round 2, not yet committed
        (3, "applied", []),
    ]
    assert strategy.requests.get(request.request_id).applied_round == 2
