"""Run fedforget's Flower apps on Flower's Ray simulation backend, in-process."""

from __future__ import annotations

import logging
import os

from fedforget.config import FederationConfig


def backend_config(num_cpus: int | None = None) -> dict[str, dict[str, int | float]]:
    """Ray backend config: one CPU per virtual client, as many actors as CPUs."""
    total = num_cpus or os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": total},
    }


def simulate(config: FederationConfig, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Run one federation with ``config`` (records go to ``config.out_dir``).

    Uses the same ClientApp as ``flwr run`` and a ServerApp built around the
    given config (``run_simulation`` passes no run config of its own).
    """
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from server.server_app import build_server_app

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    run_simulation(
        server_app=build_server_app(config),
        client_app=client_app,
        num_supernodes=config.num_partitions,
        backend_name="ray",
        backend_config=backend_config(num_cpus),  # type: ignore[arg-type]
    )
