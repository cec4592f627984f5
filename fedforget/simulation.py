"""Run fedforget's Flower apps on Flower's Ray simulation backend, in-process."""

from __future__ import annotations

import logging
import os

from fedforget.config import FederationConfig

DEFAULT_GPU_SHARE = 0.25  # four virtual clients train on one GPU at a time


def backend_config(
    num_cpus: int | None = None, num_gpus: float | None = None
) -> dict[str, dict[str, int | float]]:
    """Ray backend config: one CPU per virtual client, as many actors as CPUs.

    Parameters
    ----------
    num_cpus : int | None (default: None)
        CPUs Ray may use; all of the machine's if None.
    num_gpus : float | None (default: None)
        GPU share of each virtual client (fractional: 0.25 = four clients per
        GPU); None = 0.25 when a GPU is visible, else 0 (CPU only).

    """
    import torch

    total = num_cpus or os.cpu_count() or 1
    gpus = torch.cuda.device_count()
    share = (DEFAULT_GPU_SHARE if gpus else 0.0) if num_gpus is None else float(num_gpus)
    if share and not gpus:
        raise ValueError(f"num-gpus={share} asks for a GPU, but none is visible: use 0")
    init_args: dict[str, int | float] = {"num_cpus": total}
    if gpus:
        init_args["num_gpus"] = gpus
    return {"client_resources": {"num_cpus": 1, "num_gpus": share}, "init_args": init_args}


def simulate(
    config: FederationConfig,
    num_cpus: int | None = None,
    verbose: bool = False,
    num_gpus: float | None = None,
) -> None:
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
        backend_config=backend_config(num_cpus, num_gpus),  # type: ignore[arg-type]
    )
