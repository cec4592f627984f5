"""Test harness: run the real PUF strategy in a real Flower simulation (Ray backend)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedforget.config import FederationConfig
from fedforget.federation import build_strategy
from fedforget.puf import Arrays
from fedforget.requests import InMemoryRequestQueue, UnlearningRequest
from fedforget.simulation import backend_config
from fedforget.store import InMemoryPseudoGradientStore, StoredPseudoGradient
from fedforget.strategy import PUFStrategy, to_arrays, to_record
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
    strategy: PUFStrategy
    store: RecordingStore
    models: dict[int, Arrays] = field(default_factory=dict)


def simulate_strategy(
    config: FederationConfig,
    requests: Iterable[UnlearningRequest] = (),
    client_app: ClientApp | None = None,
) -> SimulationRecord:
    """Run build_strategy(config) in a Ray simulation; keep the global model of every round."""
    from clients.client_app import app as real_client_app

    captured: dict[str, SimulationRecord] = {}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        store = RecordingStore()
        strategy = build_strategy(config, InMemoryRequestQueue(requests), store)
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

    run_simulation(
        server,
        client_app or real_client_app,
        num_supernodes=config.num_partitions,
        backend_config=backend_config(2),
    )
    return captured["record"]
