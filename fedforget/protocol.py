"""Wire names shared by the ClientApp and the ServerApp.

The server and the clients agree on these strings and nothing else; keeping
them here lets the ClientApp import no server code.
"""

from __future__ import annotations

IDENTITY_RECORD = "identity"
"""ConfigRecord of every reply that carries the client's stable id."""
PARTITION_ID_KEY = "partition-id"
"""Key of the partition id, in node configs and in the identity record."""
NUM_PARTITIONS_KEY = "num-partitions"
"""Key of the partition count, in node configs and in the identity record (if the node has one)."""
ARRAYS_KEY = "arrays"
"""ArrayRecord of the model a message carries."""
CONFIG_KEY = "config"
"""ConfigRecord of the run configuration a message carries."""
METRICS_KEY = "metrics"
"""MetricRecord of a reply."""
EXAMPLES_KEY = "num-examples"
"""Metric every reply carries: the examples behind it (FedAvg's weight)."""
ROUND_KEY = "server-round"
"""Config key of the round a message belongs to."""
STEP_ARRAYS_PREFIX = "step-"
"""Prefix of extra ArrayRecords a method's client step receives (``step-<name>``)."""
EVALUATE_REQUEST = "evaluate-received"
"""ConfigRecord of a train message that also asks for the client evaluation of the model it
carries, before training (its ``server-round``: the round whose model that is)."""
EVALUATION_KEY = "evaluation"
"""MetricRecord of a train reply with that evaluation (the keys of an evaluate reply's)."""


def client_id_of_node(node_id: int) -> str:
    """Fallback client id for a node that reports no partition id."""
    return f"node-{node_id}"


def natural_order(client_id: str) -> tuple[int, str]:
    """Sort key of client ids: numeric ids in numeric order, then the others."""
    return (int(client_id), "") if client_id.isdigit() else (1 << 62, client_id)
