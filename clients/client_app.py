"""The ClientApp: trains and evaluates the global model on this node's partition.

Every reply carries the node's partition id (``identity`` ConfigRecord), the
stable client identity the PUF strategy keys its records by. The task
configuration arrives in each message's ConfigRecord, so the same ClientApp
serves ``flwr run``, ``fedforget run`` and deployments.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedforget.config import FederationConfig
from fedforget.strategy import IDENTITY_RECORD, PARTITION_ID_KEY
from fedforget.task import evaluate_client, new_model, score_name, train_client

app = ClientApp()


def partition_id(context: Context) -> int:
    """The node's partition id, from its node config."""
    try:
        return int(context.node_config[PARTITION_ID_KEY])
    except KeyError:
        raise ValueError(
            'this SuperNode has no partition-id: start it with --node-config "partition-id=<i> '
            'num-partitions=<n>"'
        ) from None


def identity(context: Context) -> ConfigRecord:
    """The record by which the server recognises this client."""
    return ConfigRecord({PARTITION_ID_KEY: partition_id(context)})


def task_config(message: Message) -> FederationConfig:
    """The run configuration the server sent with this message."""
    return FederationConfig.from_run_config(dict(message.content["config"]))


@app.query()
def query(message: Message, context: Context) -> Message:
    """Answer the server's identity query."""
    return Message(RecordDict({IDENTITY_RECORD: identity(context)}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received global model on the local partition."""
    config = task_config(message)
    server_round = int(message.content["config"]["server-round"])
    model = new_model(config)
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    loss, num_examples = train_client(config, partition_id(context), model, server_round)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train-loss": loss, "num-examples": num_examples}),
            IDENTITY_RECORD: identity(context),
        }
    )
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received global model on the local partition."""
    config = task_config(message)
    model = new_model(config)
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    loss, score, num_examples = evaluate_client(config, partition_id(context), model)
    score_key = "eval-acc" if score_name(config) == "accuracy" else "eval-dice"
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {"eval-loss": loss, score_key: score, "num-examples": num_examples}
            ),
            IDENTITY_RECORD: identity(context),
        }
    )
    return Message(content=content, reply_to=message)
