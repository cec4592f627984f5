"""Run fedforget's Flower apps on Flower's Ray simulation backend, in-process."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from fedforget.config import FederationConfig

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from fedforget.federated.federation import RunRecord

T = TypeVar("T")

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


def simulate_app(
    server_main: Callable[[Grid], T],
    num_supernodes: int,
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    verbose: bool = False,
) -> T:
    """Run ``server_main(grid)`` as the ServerApp of a Ray simulation; return what it returns.

    The clients are fedforget's ClientApp (the one ``flwr run`` uses). An
    exception in ``server_main`` is raised again here, after the simulation
    has shut down.
    """
    from flwr.app import Context
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    outcome: dict[str, T] = {}
    failure: list[BaseException] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            outcome["value"] = server_main(grid)
        except BaseException as error:
            failure.append(error)
            raise

    run_simulation(
        server_app=server,
        client_app=client_app,
        num_supernodes=num_supernodes,
        backend_name="ray",
        backend_config=backend_config(num_cpus, num_gpus),  # type: ignore[arg-type]
    )
    if failure:
        raise failure[0]
    if "value" not in outcome:
        raise RuntimeError("the simulation ended before its ServerApp finished: see the log above")
    return outcome["value"]


def simulate(
    config: FederationConfig,
    num_cpus: int | None = None,
    verbose: bool = False,
    num_gpus: float | None = None,
) -> RunRecord:
    """Run one federation with ``config``; return its record (also written to ``out-dir``)."""
    from fedforget.federated.federation import run_federation

    return simulate_app(
        lambda grid: run_federation(grid, config),
        config.num_partitions,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        verbose=verbose,
    )
