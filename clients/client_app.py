"""The ClientApp: trains and evaluates the global model on this node's partition.

Every reply carries the node's partition id (``identity`` ConfigRecord), the
stable client identity the server keys its records by. The task
configuration arrives in each message's ConfigRecord, so the same ClientApp
serves ``flwr run``, ``fedforget run`` and deployments. Besides the ordinary
``train`` action, each unlearning method with a client step (PGA's ascent,
FedQUIT's distillation, ...) is the Flower action ``train.<method>``.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedforget import timing
from fedforget.client_identity import identity, identity_reply, partition_id
from fedforget.config import FederationConfig
from fedforget.methods import method_class, method_names
from fedforget.methods.base import method_settings
from fedforget.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVALUATE_REQUEST,
    EVALUATION_KEY,
    EXAMPLES_KEY,
    IDENTITY_RECORD,
    METRICS_KEY,
    PARTITION_ID_KEY,
    ROUND_KEY,
    STEP_ARRAYS_PREFIX,
)

if TYPE_CHECKING:
    from torch import nn

    from fedforget.constants import ConfigValue
    from fedforget.methods.base import FederatedMethod

# torch, the data and the task code load in the handlers that need them (fedforget.task):
# a ClientApp process serves one message, and an identity query needs none of them.

app = ClientApp()


def task_config(message: Message) -> FederationConfig:
    """The run configuration the server sent with this message (its client section).

    Method settings (dotted keys: a step's table, see :func:`step_settings`)
    are not part of it, so that building it imports no method. Parsed once
    per distinct configuration in a process: a simulation's Ray actor
    receives the same one in every round (only the round differs).
    """
    record = message.content[CONFIG_KEY]
    items = tuple(sorted((k, v) for k, v in record.items() if k != ROUND_KEY and "." not in k))
    try:
        return _parse_config(items)
    except TypeError:  # a list value cannot key the memo: parse it every time
        return FederationConfig.from_run_config(dict(items))


@functools.lru_cache(maxsize=8)
def _parse_config(items: tuple[tuple[str, object], ...]) -> FederationConfig:
    return FederationConfig.from_run_config(dict(items))


def step_settings(method: type[FederatedMethod], message: Message) -> dict[str, ConfigValue]:
    """The settings of the step ``message`` belongs to: its method's table in the message.

    The server sends every setting of the step (the run's, with the request's
    options applied); a key the message lacks takes the method's default.
    """
    prefix = f"{method.table}."
    given = {
        key.removeprefix(prefix): value
        for key, value in message.content[CONFIG_KEY].items()
        if key.startswith(prefix)
    }
    return method_settings(method, given)  # type: ignore[arg-type]


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
    with timing.phases("query", **about(message, context)):
        return identity_reply(message, context)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received global model on the local partition.

    A message that also asks for the evaluation of the received model
    (``EVALUATE_REQUEST``: the server folds client evaluation into training)
    gets it, computed before training, in the reply's ``EVALUATION_KEY``
    record: one message, and one ClientApp process, instead of two.
    """
    with timing.phases("train", **about(message, context)) as mark:
        from fedforget.data.datasets import load_federated_data
        from fedforget.task import received_model, train_client

        mark("imports")
        config = task_config(message)
        mark("config")
        load_federated_data(config)
        mark("data")
        model = received_model(config, message.content[ARRAYS_KEY].to_torch_state_dict())
        mark("arrays-in")
        evaluation = None
        if EVALUATE_REQUEST in message.content.config_records:
            evaluation = evaluation_metrics(config, context, model)
            mark("evaluate")
        server_round = int(message.content[CONFIG_KEY][ROUND_KEY])
        loss, num_examples = train_client(config, partition_id(context), model, server_round)
        mark("train")
        reply = model_reply(message, context, model, loss, num_examples)
        if evaluation is not None:
            reply.content[EVALUATION_KEY] = evaluation
        mark("reply")
        return reply


def train_step(name: str, message: Message, context: Context) -> Message:
    """The ClientApp action ``train.<name>``: run a method's client step on the partition.

    The method's module is imported when its action first arrives, so a
    process that trains (or answers a query) never imports the others. The
    step gets a freshly built model (a step may change it beyond its weights).
    """
    with timing.phases(f"train.{name}", **about(message, context)) as mark:
        from fedforget.task import client_data, client_seed, new_model

        method = method_class(name)
        if method.client_step is None:
            raise ValueError(
                f"method {name!r} has no client step: the server sent the action "
                f"'train.{name}' by mistake (its clients run the ordinary 'train')"
            )
        mark("imports")
        config = task_config(message)
        server_round = int(message.content[CONFIG_KEY][ROUND_KEY])
        pid = partition_id(context)
        mark("config")
        model = new_model(config)
        data = client_data(config, pid)
        mark("data")
        model.load_state_dict(message.content[ARRAYS_KEY].to_torch_state_dict())
        extra = {
            key.removeprefix(STEP_ARRAYS_PREFIX): record.to_torch_state_dict()
            for key, record in message.content.array_records.items()
            if key.startswith(STEP_ARRAYS_PREFIX)
        }
        mark("arrays-in")
        settings = step_settings(method, message)
        seed = client_seed(config, server_round, pid)
        loss = method.client_step(model, data, settings, extra, seed)
        model.to("cpu")
        mark("train")
        reply = model_reply(message, context, model, loss, len(data.y))
        mark("reply")
        return reply


# Every method that could have a client step gets its action (Flower accepts identifiers
# only, so a hyphenated name such as puf-special can have none); which methods really have
# one is known once a method's module is imported, i.e. when its action arrives. The
# handlers are partials of a module-level function, not closures: the simulation pickles
# the ClientApp into every Ray call, and a closure is pickled by value (code and all).
for _name in method_names():
    if _name.isidentifier():
        app.train(_name)(functools.partial(train_step, _name))


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received global model on the local partition."""
    with timing.phases("evaluate", **about(message, context)) as mark:
        from fedforget.data.datasets import load_federated_data
        from fedforget.task import received_model

        mark("imports")
        config = task_config(message)
        mark("config")
        load_federated_data(config)
        mark("data")
        model = received_model(config, message.content[ARRAYS_KEY].to_torch_state_dict())
        mark("arrays-in")
        metrics = evaluation_metrics(config, context, model)
        mark("evaluate")
        content = RecordDict({METRICS_KEY: metrics, IDENTITY_RECORD: identity(context)})
        return Message(content=content, reply_to=message)


def evaluation_metrics(
    config: FederationConfig, context: Context, model: nn.Module
) -> MetricRecord:
    """Loss, score (``eval-acc`` or ``eval-dice``) and examples of ``model`` on the partition."""
    from fedforget.task import evaluate_client, score_name

    loss, score, num_examples = evaluate_client(config, partition_id(context), model)
    score_key = "eval-acc" if score_name(config) == "accuracy" else "eval-dice"
    return MetricRecord({"eval-loss": loss, score_key: score, EXAMPLES_KEY: num_examples})


def about(message: Message, context: Context) -> dict[str, object]:
    """What a timing record says about a message: node, partition, round, module import time."""
    config = message.content.config_records.get(CONFIG_KEY)
    return {
        "partition": context.node_config.get(PARTITION_ID_KEY, ""),
        "round": int(config[ROUND_KEY]) if config and ROUND_KEY in config else 0,
        "module_imported": MODULE_IMPORTED,
    }


MODULE_IMPORTED = time.time()
"""When this module finished importing (the timing log's end of the Flower runtime's start)."""
