"""Test harness: run the real unlearning strategy in a real Flower simulation (Ray backend)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from ray_support import run_app

from fedforget.arrays import Arrays, to_arrays, to_record
from fedforget.config import FederationConfig
from fedforget.federated.federation import build_strategy, method_context
from fedforget.federated.strategy import UnlearningStrategy
from fedforget.methods.base import FederatedMethod
from fedforget.methods.puf import PufRegular, PufSpecial
from fedforget.requests import InMemoryRequestQueue, UnlearningRequest
from fedforget.state.store import InMemoryPseudoGradientStore, StoredPseudoGradient
from fedforget.task import evaluate_global_metrics, model_arrays, new_model

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

TINY = FederationConfig(
    num_partitions=3,
    local_epochs=1,
    num_server_rounds=4,
    unlearn_at_round=2,
    unlearn_clients="1",
    progress=False,
)


class RecordingStore(InMemoryPseudoGradientStore):
    """The real in-memory store that also remembers every put, for assertions."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[str, StoredPseudoGradient]] = []

    def put(self, client_id: str, entry: StoredPseudoGradient) -> None:
        super().put(client_id, entry)
        self.puts.append((client_id, self.latest(client_id)))

    def put_in_round(self, server_round: int) -> dict[str, StoredPseudoGradient]:
        return {cid: e for cid, e in self.puts if e.server_round == server_round}


@dataclass
class SimulationRecord:
    strategy: UnlearningStrategy
    store: RecordingStore
    models: dict[int, Arrays] = field(default_factory=dict)

    def method(self, name: str) -> FederatedMethod:
        return self.strategy.methods[name]


def simulate_strategy(
    config: FederationConfig,
    requests: Iterable[UnlearningRequest] = (),
    client_app: ClientApp | None = None,
    methods: Mapping[str, FederatedMethod] | None = None,
) -> SimulationRecord:
    """Run build_strategy(config) in a Ray simulation; keep the global model of every round.

    Both PUF methods keep their pseudo-gradients in one RecordingStore (``record.store``).
    """
    from clients.client_app import app as real_client_app

    captured: dict[str, SimulationRecord] = {}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        store = RecordingStore()
        context_ = method_context(config)
        instances = {
            "puf-special": PufSpecial(context_, store),
            "puf-regular": PufRegular(context_, store),
            **(methods or {}),
        }
        strategy = build_strategy(config, InMemoryRequestQueue(requests), instances)
        record = SimulationRecord(strategy, store)

        def evaluate(server_round, arrays):
            record.models[server_round] = to_arrays(arrays)
            return MetricRecord(evaluate_global_metrics(config, record.models[server_round]))

        task = ConfigRecord(config.to_run_config())
        strategy.start(
            grid,
            to_record(model_arrays(new_model(config))),
            config.num_server_rounds,
            600.0,
            task,
            ConfigRecord(config.to_run_config()),
            evaluate,
        )
        captured["record"] = record

    run_app(server, client_app or real_client_app, config.num_partitions)
    return captured["record"]
