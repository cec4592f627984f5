"""flower_app: the ClientApp, Flower's quickstart shape (train and evaluate on its partition)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedforget
from flower_app.task import Net, load_data, test, train

torch.set_num_threads(1)  # a simulation runs one client per CPU

app = ClientApp()
# Optional: report the partition id, so that the server forgets "client 3", the same client in
# every run. Without this line clients are keyed node-<node_id>, a new id in every run.
fedforget.answer_identity_queries(app)


@app.train()
def train_model(msg: Message, context: Context) -> Message:
    """Train the received model on this client's data."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    server_round = int(msg.content["config"]["server-round"])
    trainloader, _ = load_data(partition_id, num_partitions, seed=server_round)
    loss = train(
        model, trainloader, int(context.run_config["local-epochs"]), msg.content["config"]["lr"]
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_model(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's validation data."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, valloader = load_data(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    )
    loss, accuracy = test(model, valloader)
    metrics = {"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(valloader.dataset)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
