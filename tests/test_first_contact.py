"""First contact with a node: a large federation asks only the nodes a round draws who they are.

Asking every new node for its client id costs one message per node, and in
Flower's simulation a time that grows with the square of the nodes (1,000
nodes: about a minute before the first round can train). Above
``IDENTIFY_ALL_MAX`` new nodes, a round asks only the new nodes it draws; a
drawn node that does not answer in time is replaced, not trained under a
made-up id (its replies, carrying its real id, would all be refused).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedforget.arrays import to_record
from fedforget.config import ConfigError, FederationConfig
from fedforget.federated.clients import ClientDirectory
from fedforget.federated.federation import build_strategy, run_federation
from fedforget.federated.strategy import IDENTIFY_ALL_MAX
from fedforget.protocol import IDENTITY_RECORD, NUM_PARTITIONS_KEY, PARTITION_ID_KEY, natural_order
from fedforget.simulation import simulate_app
from fedforget.task import model_arrays, new_model

NODES = IDENTIFY_ALL_MAX + 50
EXCLUDED = 50  # clients 0..49 never train: drawn, they must be replaced
PER_ROUND = 3
ROUNDS = 3


class CountingGrid:
    """The simulation's grid, recording each batch it sends and the ids that queries return."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.batches: list[tuple[str, list[int], list[int]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> Any:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        kinds = {m.metadata.message_type for m in messages}
        assert len(kinds) <= 1, "the strategy sends one kind of message per batch"
        identities = [
            int(reply.content.config_records[IDENTITY_RECORD][PARTITION_ID_KEY])
            for reply in replies
            if not reply.has_error() and IDENTITY_RECORD in reply.content.config_records
        ]
        nodes = [m.metadata.dst_node_id for m in messages]
        self.batches.append((kinds.pop() if kinds else "", nodes, identities))
        return replies

    def queries_per_round(self) -> list[tuple[list[int], list[int]]]:
        """Per round: the nodes asked who they are before its training messages, and the ids."""
        rounds: list[tuple[list[int], list[int]]] = [([], [])]
        for kind, nodes, identities in self.batches:
            if kind == "query":
                rounds[-1][0].extend(nodes)
                rounds[-1][1].extend(identities)
            elif kind == "train":
                rounds.append(([], []))
        return rounds[:-1]


@pytest.mark.ray
def test_only_drawn_new_nodes_are_asked_and_excluded_ones_are_replaced():
    """150 new nodes, 3 clients a round: a round asks a few nodes, never all 150."""
    # Prepare
    config = FederationConfig(
        partitioner="iid",
        num_partitions=NODES,
        model="mlp",
        local_epochs=1,
        num_server_rounds=ROUNDS,
        unlearn_at_round=0,
        fraction_train=PER_ROUND / NODES,
        exclude_clients=",".join(str(i) for i in range(EXCLUDED)),
        progress=False,
    )
    grids: list[CountingGrid] = []

    def server_main(grid: Grid) -> Any:
        grids.append(CountingGrid(grid))
        return run_federation(grids[0], config)  # type: ignore[arg-type]

    # Execute
    record = simulate_app(server_main, NODES)
    # Assert
    asked = grids[0].queries_per_round()
    every_query = [node for nodes, _ in asked for node in nodes]
    assert len(asked) == len(record.rounds) == ROUNDS
    assert len(set(every_query)) == len(every_query)  # no node is asked twice
    assert 0 < len(every_query) < NODES // 3  # old behaviour: all 150 in round 1
    excluded_known = 0
    for (nodes, identities), server_round in zip(asked, record.rounds, strict=True):
        # fraction-train of the clients that may take part: new nodes count until known
        expected = int((NODES - excluded_known) * config.fraction_train)
        assert len(identities) <= len(nodes) <= 10 * PER_ROUND  # a node may answer too late
        assert len(server_round.participants) == len(server_round.contributors) == expected
        assert all(int(client) >= EXCLUDED for client in server_round.participants)
        excluded_known += sum(identity < EXCLUDED for identity in identities)


class ScriptedGrid:
    """A grid whose node ``FIRST_NODE + i`` is client ``i``; ``silent`` nodes never answer."""

    def __init__(self, clients: int, silent: set[int]) -> None:
        self.nodes = [FIRST_NODE + i for i in range(clients)]
        self.silent = silent
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> Any:
        replies = []
        for message in messages:
            self.sent.append(message)
            node = message.metadata.dst_node_id
            if message.metadata.message_type == "query" and node not in self.silent:
                identity = ConfigRecord({PARTITION_ID_KEY: node - FIRST_NODE})
                replies.append(Message(RecordDict({IDENTITY_RECORD: identity}), reply_to=message))
        return replies

    def asked(self, kind: str) -> list[int]:
        return [m.metadata.dst_node_id for m in self.sent if m.metadata.message_type == kind]


FIRST_NODE = 1000


def test_a_drawn_node_that_does_not_answer_is_neither_trained_nor_keyed(monkeypatch):
    """A silent node (e.g. a slow first start) is replaced in the draw and stays new."""
    # Prepare
    for name in ("_run_id", "_node_id", "_task_id"):  # what a running ServerApp has set
        monkeypatch.setattr(TaskIdentity, name, 1)
    config = FederationConfig(
        num_partitions=NODES, partitioner="iid", model="mlp", fraction_train=10 / NODES
    )
    silent = {FIRST_NODE + i for i in range(0, NODES, 2)}  # every other node
    grid = ScriptedGrid(NODES, silent)
    strategy = build_strategy(config)
    model = to_record(model_arrays(new_model(config)))
    # Execute
    messages = list(
        strategy.configure_train(1, model, ConfigRecord(config.to_run_config()), grid)  # type: ignore[arg-type]
    )
    # Assert
    trained = [m.metadata.dst_node_id for m in messages]
    asked = grid.asked("query")
    assert len(trained) == 10 and not silent & set(trained)
    assert set(trained) <= set(asked) and len(set(asked)) == len(asked) < NODES
    silent_asked = silent & set(asked)
    assert silent_asked  # the draw met silent nodes and replaced them
    assert silent_asked <= set(strategy.directory.unidentified(grid.get_node_ids()))
    assert strategy.rounds[-1].participants == sorted(
        (str(node - FIRST_NODE) for node in trained), key=natural_order
    )


def test_draw_without_new_nodes_is_the_seeded_sample_of_client_ids():
    """Once every node is known, the draw is the one a seeded run always made."""
    # Prepare
    clients = [str(i) for i in range(40)]
    directory, reference = ClientDirectory(seed=5), random.Random(5)
    # Execute
    draws = [directory.draw(clients, [], 7) for _ in range(3)]
    # Assert
    for drawn, nodes in draws:
        assert nodes == []
        assert drawn == sorted(reference.sample(clients, 7), key=natural_order)


def test_draw_mixes_clients_and_new_nodes_and_takes_all_when_few():
    """One draw over both; asking for at least as many returns everything."""
    # Prepare
    clients, new_nodes = ["1", "10", "2"], [901, 902, 903, 904]
    directory = ClientDirectory(seed=0)
    # Execute
    drawn, nodes = directory.draw(clients, new_nodes, 5)
    every_client, every_node = directory.draw(clients, new_nodes, 7)
    # Assert
    assert len(drawn) + len(nodes) == 5
    assert set(drawn) <= set(clients) and set(nodes) <= set(new_nodes)
    assert drawn == sorted(drawn, key=natural_order)
    assert (every_client, every_node) == (clients, new_nodes)


def test_a_node_started_with_another_partition_count_is_refused_naming_the_setting(monkeypatch):
    """A SuperNode whose --node-config num-partitions differs from the run's stops the run."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    query = Message(RecordDict({}), dst_node_id=FIRST_NODE, message_type="query")

    def reply(count: int) -> Message:
        identity = ConfigRecord({PARTITION_ID_KEY: 2, NUM_PARTITIONS_KEY: count})
        return Message(RecordDict({IDENTITY_RECORD: identity}), reply_to=query)

    directory = ClientDirectory(num_partitions=4)
    with pytest.raises(
        ConfigError, match=r"num-partitions=3 \(its --node-config\).*has num-partitions=4"
    ):
        directory.learn(reply(3))
    assert directory.node_clients == {}
    assert ClientDirectory(num_partitions=3).learn(reply(3)) == "2"
