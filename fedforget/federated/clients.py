"""Who the clients are, which of them may take part, and seeded sampling.

Per-client state is keyed by the stable client id each ClientApp reports (its
partition id): Flower's ``node_id`` changes across runs and reconnects. A
node that reports no id is keyed ``node-<node_id>``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from flwr.app import Message

from fedforget.constants import ConfigError
from fedforget.protocol import (
    IDENTITY_RECORD,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    client_id_of_node,
    natural_order,
)

logger = logging.getLogger(__name__)


class ClientDirectory:
    """Node <-> client ids, forgotten and excluded clients, and seeded sampling.

    Parameters
    ----------
    excluded : Collection[str] (default: ())
        Clients that never take part (the retrained reference's targets).
    seed : int (default: 0)
        Seed of client sampling.
    num_partitions : int | None (default: None)
        The run's ``num-partitions``: a node that reports another partition
        count (its ``--node-config``) is refused with a :class:`ConfigError`.

    """

    def __init__(
        self, excluded: Collection[str] = (), seed: int = 0, num_partitions: int | None = None
    ) -> None:
        self.num_partitions = num_partitions
        self.node_clients: dict[int, str] = {}
        self.forgotten: set[str] = set()
        self.excluded = frozenset(excluded)
        self._rng = random.Random(seed)

    def known(self) -> set[str]:
        """Client ids seen so far."""
        return set(self.node_clients.values())

    def unidentified(self, node_ids: Iterable[int]) -> list[int]:
        """Nodes whose client id is not known yet."""
        return [n for n in node_ids if n not in self.node_clients]

    def learn(self, message: Message) -> str:
        """The client id of a reply's sender; learns the node -> client mapping.

        A reply without an identity record keeps the id the node reported
        before (a ClientApp may answer the identity query only, not carry its
        id in every reply); a node that never reported one is ``node-<node_id>``.

        Raises
        ------
        ConfigError
            If the sender reports a ``num-partitions`` other than the run's.

        """
        node = message.metadata.src_node_id
        client_id = self.node_clients.get(node, client_id_of_node(node))
        if not message.has_error():
            identity = message.content.config_records.get(IDENTITY_RECORD)
            if identity is not None and PARTITION_ID_KEY in identity:
                client_id = str(identity[PARTITION_ID_KEY])
                self._check_partition_count(identity.get(NUM_PARTITIONS_KEY), client_id)
        if self.node_clients.get(node) != client_id:
            if client_id in self.forgotten:
                logger.warning(
                    "Forgotten client %s reconnected as node %s: refused", client_id, node
                )
            self.node_clients[node] = client_id
        return client_id

    def _check_partition_count(self, reported: object, client_id: str) -> None:
        if self.num_partitions is None or reported is None or reported == self.num_partitions:
            return
        raise ConfigError(
            f"num-partitions: client {client_id}'s SuperNode was started with "
            f"num-partitions={reported} (its --node-config), but this run has "
            f"num-partitions={self.num_partitions}: run with --run-config "
            f"num-partitions={reported}, or start every SuperNode with --node-config "
            f"'partition-id=<i> num-partitions={self.num_partitions}' (in docker-compose.yml "
            "also the images' PREPARE_RUN_CONFIG)"
        )

    def assume_unreported(self, node_ids: Iterable[int]) -> None:
        """Key nodes that did not answer the identity query by their node id."""
        for node in node_ids:
            self.node_clients.setdefault(node, client_id_of_node(node))

    def online(self, node_ids: Iterable[int]) -> dict[str, int]:
        """Identified online clients -> node id, in client-id order."""
        pairs = [(self.node_clients[n], n) for n in node_ids if n in self.node_clients]
        return dict(sorted(pairs, key=lambda pair: natural_order(pair[0])))

    def eligible(self, node_ids: Iterable[int], blocked: Collection[str] = ()) -> list[str]:
        """Online clients that are neither forgotten, excluded nor ``blocked``."""
        stop = self.forgotten | self.excluded | set(blocked)
        return [c for c in self.online(node_ids) if c not in stop]

    def sample(self, client_ids: list[str], count: int) -> list[str]:
        """``count`` of ``client_ids`` (all if fewer), drawn by the seeded generator."""
        return self.draw(client_ids, [], count)[0]

    def draw(
        self, client_ids: list[str], new_nodes: list[int], count: int
    ) -> tuple[list[str], list[int]]:
        """``count`` of ``client_ids`` and of nodes not identified yet, in one seeded draw.

        Returns the drawn client ids (in client-id order) and the drawn nodes;
        all of both if there are at most ``count``. Without new nodes this is
        the draw :meth:`sample` makes: the generator picks positions, so the
        same clients come out of the same state.
        """
        if count >= len(client_ids) + len(new_nodes):
            return list(client_ids), list(new_nodes)
        drawn = self._rng.sample(range(len(client_ids) + len(new_nodes)), count)
        known = len(client_ids)
        clients = sorted((client_ids[i] for i in drawn if i < known), key=natural_order)
        return clients, [new_nodes[i - known] for i in drawn if i >= known]

    def state_dict(self) -> dict[str, Any]:
        """Node <-> client map, forgotten clients and the sampling generator's state (JSON).

        The generator's state is what makes a resumed run sample the clients
        an uninterrupted one would have sampled.
        """
        version, internal, gauss = self._rng.getstate()
        return {
            "node_clients": [[node, client] for node, client in self.node_clients.items()],
            "forgotten": sorted(self.forgotten, key=natural_order),
            "excluded": sorted(self.excluded, key=natural_order),
            "rng": [version, list(internal), gauss],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a saved directory; forgotten clients add to those already known.

        Excluded clients come from the run config, which a resumed run shares.
        """
        self.node_clients.update({int(node): str(client) for node, client in state["node_clients"]})
        self.forgotten.update(state["forgotten"])
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
