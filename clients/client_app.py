"""The ClientApp: trains and evaluates the global model on this node's partition.

Every reply carries the node's partition id (``identity`` ConfigRecord), the
stable client identity the server keys its records by. The task
configuration arrives in each message's ConfigRecord, so the same ClientApp
serves ``flwr run``, ``fedforget run`` and deployments. Besides the ordinary
``train`` action, each unlearning method with a client step (PGA's ascent,
FedQUIT's distillation, ...) is the Flower action ``train.<method>``.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedforget.config import FederationConfig
from fedforget.methods import ClientStep, client_steps, method_class
from fedforget.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EXAMPLES_KEY,
    IDENTITY_RECORD,
    METRICS_KEY,
    PARTITION_ID_KEY,
    ROUND_KEY,
    STEP_ARRAYS_PREFIX,
)
from fedforget.task import (
    client_data,
    client_seed,
    evaluate_client,
    new_model,
    score_name,
    train_client,
)

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
    config = dict(message.content[CONFIG_KEY])
    return FederationConfig.from_run_config(config, known_tables_only=True)


def model_reply(
    message: Message, context: Context, model: nn.Module, loss: float, count: int
) -> Message:
    """The reply of a training action: the model, its loss and examples, the identity."""
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord(model.state_dict()),
            METRICS_KEY: MetricRecord({"train-loss": loss, EXAMPLES_KEY: count}),
            IDENTITY_RECORD: identity(context),
        }
    )
    return Message(content=content, reply_to=message)


@app.query()
def query(message: Message, context: Context) -> Message:
    """Answer the server's identity query."""
    return Message(RecordDict({IDENTITY_RECORD: identity(context)}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received global model on the local partition."""
    config = task_config(message)
    server_round = int(message.content[CONFIG_KEY][ROUND_KEY])
    model = new_model(config)
    model.load_state_dict(message.content[ARRAYS_KEY].to_torch_state_dict())
    loss, num_examples = train_client(config, partition_id(context), model, server_round)
    return model_reply(message, context, model, loss, num_examples)


def step_handler(name: str, step: ClientStep) -> Callable[[Message, Context], Message]:
    """The ClientApp action ``train.<name>``: run a method's client step on the partition."""

    def handle(message: Message, context: Context) -> Message:
        config = task_config(message)
        server_round = int(message.content[CONFIG_KEY][ROUND_KEY])
        pid = partition_id(context)
        model = new_model(config)
        model.load_state_dict(message.content[ARRAYS_KEY].to_torch_state_dict())
        extra = {
            key.removeprefix(STEP_ARRAYS_PREFIX): record.to_torch_state_dict()
            for key, record in message.content.array_records.items()
            if key.startswith(STEP_ARRAYS_PREFIX)
        }
        data = client_data(config, pid)
        settings = config.settings_of(method_class(name).table)
        loss = step(model, data, settings, extra, client_seed(config, server_round, pid))
        model.to("cpu")
        return model_reply(message, context, model, loss, len(data.y))

    handle.__name__ = f"train_{name.replace('-', '_')}"
    return handle


for _name, _step in client_steps().items():
    app.train(_name)(step_handler(_name, _step))


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received global model on the local partition."""
    config = task_config(message)
    model = new_model(config)
    model.load_state_dict(message.content[ARRAYS_KEY].to_torch_state_dict())
    loss, score, num_examples = evaluate_client(config, partition_id(context), model)
    score_key = "eval-acc" if score_name(config) == "accuracy" else "eval-dice"
    content = RecordDict(
        {
            METRICS_KEY: MetricRecord(
                {"eval-loss": loss, score_key: score, EXAMPLES_KEY: num_examples}
            ),
            IDENTITY_RECORD: identity(context),
        }
    )
    return Message(content=content, reply_to=message)
