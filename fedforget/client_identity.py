"""How a ClientApp tells the server which client it is: its partition id.

The server keys everything it keeps of a client (stored updates, forgotten
clients) by the id each ClientApp reports in an ``identity`` ConfigRecord,
because Flower's ``node_id`` changes across runs and reconnects. fedforget's
own ClientApp reports it in every reply; any other ClientApp can answer the
server's identity query with one line::

    app = ClientApp()
    fedforget.answer_identity_queries(app)

A ClientApp that reports nothing is keyed ``node-<node_id>``.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedforget.protocol import IDENTITY_RECORD, NUM_PARTITIONS_KEY, PARTITION_ID_KEY


def partition_id(context: Context) -> int:
    """The node's partition id, from its node config.

    Raises
    ------
    ValueError
        If the SuperNode was started without one; the message says how to set it.

    """
    try:
        return int(context.node_config[PARTITION_ID_KEY])
    except KeyError:
        raise ValueError(
            'this SuperNode has no partition-id: start it with --node-config "partition-id=<i> '
            'num-partitions=<n>"'
        ) from None


def identity(context: Context) -> ConfigRecord:
    """The record by which the server recognises this client.

    It carries the node's ``num-partitions`` too, when its node config has one,
    so that the server can refuse a run whose partition count differs.
    """
    record = ConfigRecord({PARTITION_ID_KEY: partition_id(context)})
    if NUM_PARTITIONS_KEY in context.node_config:
        record[NUM_PARTITIONS_KEY] = int(context.node_config[NUM_PARTITIONS_KEY])
    return record


def identity_reply(message: Message, context: Context) -> Message:
    """The answer to the server's identity query: this node's partition id."""
    return Message(RecordDict({IDENTITY_RECORD: identity(context)}), reply_to=message)


def answer_identity_queries(app: ClientApp) -> None:
    """Register the identity query handler on ``app`` (a ClientApp with no ``query`` action).

    The server then forgets this client by its partition id, the same in
    every run, instead of by ``node-<node_id>``.
    """
    app.query()(identity_reply)
