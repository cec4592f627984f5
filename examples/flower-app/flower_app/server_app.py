"""flower_app: the ServerApp, a plain FedAvg app in which clients can be forgotten.

Against Flower's quickstart ServerApp, only the lines marked ``# unlearning``
differ: a queue of requests, and ``fedforget.UnlearningFedAvg`` where the
quickstart builds ``FedAvg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import fedforget  # unlearning
from flower_app.task import Net, load_centralised_test, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train with FedAvg; forget ``forget-client`` after round ``forget-after-round``."""
    config = context.run_config
    torch.manual_seed(0)
    arrays = ArrayRecord(Net().state_dict())
    out_dir = Path(str(config["out-dir"])) if config["out-dir"] else None

    requests = fedforget.InMemoryRequestQueue()  # unlearning
    if config["forget-after-round"]:  # unlearning
        forget_after = int(config["forget-after-round"])
        requests.submit(  # unlearning
            fedforget.UnlearningRequest(
                client_ids=(str(config["forget-client"]),), not_before_round=forget_after + 1
            )
        )
    strategy = fedforget.UnlearningFedAvg(  # unlearning: was FedAvg(
        arrays,
        method=str(config["unlearning-method"]),
        requests=requests,
        fraction_train=float(config["fraction-train"]),
        fraction_evaluate=float(config["fraction-evaluate"]),
    )

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate the global model on the held-out digits (and save it, with out-dir)."""
        model = Net()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(model, load_centralised_test())
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            saved = {name: array.numpy() for name, array in arrays.items()}
            np.savez(out_dir / f"round-{server_round}.npz", **saved)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": float(config["lr"])}),
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=global_evaluate,
    )
    for request in requests.all():  # unlearning
        print(
            f"request to forget client(s) {', '.join(request.client_ids)}: {request.status} "
            f"{f'in round {request.applied_round}' if request.applied_round else request.reason}"
        )
    if out_dir is not None:
        torch.save(result.arrays.to_torch_state_dict(), out_dir / "final_model.pt")
