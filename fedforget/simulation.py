"""Run fedforget's Flower apps on Flower's Ray simulation backend.

By default each simulation starts a private Ray instance on this machine and
stops it at the end. It listens on 127.0.0.1 only (:func:`ray_on_loopback`):
Ray has no authentication by default, so anyone who reached its ports could
run code as the federation's user. Given a cluster address (``--ray-address``
or Ray's own ``RAY_ADDRESS`` variable), it attaches to an existing Ray
cluster instead (``ray start --head`` on one machine, ``ray start
--address=HEAD:PORT`` on the others): the virtual clients then run as Ray
actors on every node, one actor per CPU of the cluster. Such a cluster
listens on the network by design; securing it is its operator's task (see
the README's security section).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fedforget.config import ConfigError, FederationConfig

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from fedforget.federated.federation import RunRecord

T = TypeVar("T")

DEFAULT_GPU_SHARE = 0.25  # four virtual clients train on one GPU at a time
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable: ray.init and the ray CLI read it too
RAY_ACCEL_OVERRIDE_ENV = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"  # Ray's switch, read by ray.init
PRIVATE_RAY = "local"  # Ray's address for "start a new instance on this machine"
LOOPBACK = "127.0.0.1"
RAY_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for multi-node clusters; off, every Ray process binds to 127.0.0.1."""
REACHABLE_TIMEOUT_S = 5.0
START_CLUSTER_HINT = (
    "start a cluster with `ray start --head --port=6379` on the head machine and "
    "`ray start --address=<head-ip>:6379` on the others, then pass --ray-address "
    "<head-ip>:6379; or leave --ray-address and RAY_ADDRESS unset to run on a private Ray "
    "instance on this machine"
)

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterResources:
    """What the Ray cluster this process is attached to offers: alive nodes, CPUs, GPUs."""

    address: str
    nodes: int
    cpus: float
    gpus: float


def backend_config(
    num_cpus: int | None = None, num_gpus: float | None = None
) -> dict[str, dict[str, int | float | str]]:
    """Backend config of a private Ray instance: one CPU per virtual client, an actor per CPU.

    The instance is private even when ``RAY_ADDRESS`` is set or a cluster was
    started with ``ray start`` on this machine (``address="local"``); attaching
    to a cluster is :func:`simulate_app`'s ``ray_address``.

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
        raise ConfigError(f"num-gpus={share} asks for a GPU, but none is visible: use 0")
    init_args: dict[str, int | float | str] = {
        "address": PRIVATE_RAY,
        "num_cpus": total,
        "include_dashboard": False,
        "_node_ip_address": LOOPBACK,  # with ray_on_loopback: GCS, raylet, workers on loopback
    }
    if gpus:
        init_args["num_gpus"] = gpus
    return {"client_resources": {"num_cpus": 1, "num_gpus": share}, "init_args": init_args}


@contextlib.contextmanager
def ray_on_loopback() -> Iterator[None]:
    """Make the private Ray instance started in the block listen on 127.0.0.1 only.

    Ray binds its GCS, raylet, object manager, agents and workers to the
    node's address, and takes the machine's network address as the node's
    whenever multi-node clusters are enabled (Linux's default), even when
    ``ray.init`` is given 127.0.0.1. With clusters disabled
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, what Ray does on macOS and
    Windows) the node's address is 127.0.0.1 and every one of them binds
    there. The variable is read by the processes Ray starts (they inherit
    it) and, at import, by Ray in this process: the imported value is set
    too. Both are restored at the end, so that attaching to a cluster later
    in this process works.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(RAY_CLUSTERS_ENV)
    saved_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[RAY_CLUSTERS_ENV] = "0"
    if saved_flag is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(RAY_CLUSTERS_ENV, None)
        else:
            os.environ[RAY_CLUSTERS_ENV] = saved_env
        if saved_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_flag


def cluster_backend_config(
    cluster: ClusterResources, num_gpus: float | None = None
) -> dict[str, dict[str, int | float | str]]:
    """Backend config for an attached cluster: one CPU per virtual client, an actor per CPU.

    Ray refuses ``num_cpus`` / ``num_gpus`` for an existing cluster, so the
    resources are the cluster's (each node's ``ray start --num-cpus/--num-gpus``);
    Flower sizes the actor pool node by node from them.

    Parameters
    ----------
    cluster : ClusterResources
        The cluster, as :func:`attach_ray_cluster` found it.
    num_gpus : float | None (default: None)
        GPU share of each virtual client; None = 0.25 when the cluster has a
        GPU, else 0. With a share above 0, only nodes with a GPU host clients.

    """
    share = (DEFAULT_GPU_SHARE if cluster.gpus else 0.0) if num_gpus is None else float(num_gpus)
    if share and not cluster.gpus:
        raise ConfigError(
            f"num-gpus={share} asks for a GPU, but the Ray cluster at {cluster.address} has "
            f"none: use 0, or start its nodes with `ray start --num-gpus=N`"
        )
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": share},
        "init_args": {"address": cluster.address},
    }


def quiet_ray_accelerator_warning(client_gpu_share: float, gpus: float) -> None:
    """Adopt Ray's coming accelerator behaviour where it changes nothing, which ends its warning.

    Ray 2.55 prints a FutureWarning at every start: later versions will no
    longer hide the GPUs from workers that ask for none, and setting
    ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` adopts that now (and silences it,
    as the warning says). Nothing changes where no GPU exists, or where the
    clients hold a GPU share (Ray then sets their visible devices either way),
    so the variable is set there (unless the user set it). With GPUs and
    CPU-only clients the GPUs stay hidden from the clients, and Ray keeps warning.
    """
    if gpus == 0 or client_gpu_share > 0:
        os.environ.setdefault(RAY_ACCEL_OVERRIDE_ENV, "0")


def ray_cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to attach to: ``address``, else ``$RAY_ADDRESS``; None = a private one.

    Raises ConfigError for an address fedforget cannot attach to: a ``ray://``
    (Ray Client) address, or one that is neither ``host:port`` nor ``auto``.
    """
    chosen = (address if address is not None else os.environ.get(RAY_ADDRESS_ENV, "")).strip()
    if chosen in ("", PRIVATE_RAY):
        return None
    if chosen.startswith("ray://"):
        raise ConfigError(
            f"ray address {chosen!r} is a Ray Client address: fedforget runs as a driver on a "
            f"node of the cluster, so give the cluster's GCS address host:port (what `ray start "
            f"--head` prints, port 6379 by default)"
        )
    if chosen != "auto":
        _host_port(chosen)
    return chosen


def select_ray_cluster(address: str) -> None:
    """Make this process's later simulations attach to the Ray cluster at ``address``.

    Sets ``RAY_ADDRESS``, the variable Ray itself reads, after checking the
    address's form and that something answers there, so that a mistyped
    address fails before any work.
    """
    checked = ray_cluster_address(address)
    os.environ[RAY_ADDRESS_ENV] = checked or PRIVATE_RAY
    if checked and checked != "auto":
        _check_reachable(checked)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"ray address {address!r} is not host:port (e.g. 10.0.0.5:6379, what `ray start "
            f"--head` prints) nor 'auto'"
        )
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """Fail fast on an address nothing listens on (Ray itself retries for minutes)."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=REACHABLE_TIMEOUT_S).close()
    except OSError as error:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({error.strerror or error}): {START_CLUSTER_HINT}"
        ) from error


def attach_ray_cluster(address: str, verbose: bool = False) -> ClusterResources:
    """Connect this process to the Ray cluster at ``address`` as its driver; describe the cluster.

    Flower's Ray backend initialises Ray only when it is not yet, so it then
    uses this connection; it disconnects at the end of the simulation. As
    Flower does for its own instance, the actors get this process's
    ``sys.path`` as ``PYTHONPATH`` so that they import the same ClientApp.
    """
    import ray

    if address != "auto":
        _check_reachable(address)
    pythonpath = os.pathsep.join(
        [*sys.path, *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])]
    )
    quiet: dict[str, Any] = {} if verbose else {"logging_level": "WARNING"}
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
            **quiet,
        )
    except (ConnectionError, RuntimeError) as error:
        raise ConfigError(
            f"could not attach to the Ray cluster at {address}: {error}. The driver and every "
            f"node need the same Python and Ray versions; {START_CLUSTER_HINT}"
        ) from error
    nodes = [node for node in ray.nodes() if node["Alive"] and node["Resources"]]
    cluster = ClusterResources(
        address=address,
        nodes=len(nodes),
        cpus=sum(node["Resources"].get("CPU", 0.0) for node in nodes),
        gpus=sum(node["Resources"].get("GPU", 0.0) for node in nodes),
    )
    _log.info(
        "attached to the Ray cluster at %s: %d nodes, %g CPUs, %g GPUs",
        address,
        cluster.nodes,
        cluster.cpus,
        cluster.gpus,
    )
    return cluster


def simulate_app(
    server_main: Callable[[Grid], T],
    num_supernodes: int,
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    verbose: bool = False,
    ray_address: str | None = None,
    workload: FederationConfig | None = None,
) -> T:
    """Run ``server_main(grid)`` as the ServerApp of a Ray simulation; return what it returns.

    The clients are fedforget's ClientApp (the one ``flwr run`` uses). An
    exception in ``server_main`` is raised again here, after the simulation
    has shut down.

    Parameters
    ----------
    server_main : Callable[[Grid], T]
        The server's work on the grid of virtual clients.
    num_supernodes : int
        Virtual clients (partitions).
    num_cpus : int | None (default: None)
        CPUs of the private Ray instance (all if None); refused with a cluster,
        whose CPUs each node's ``ray start --num-cpus`` sets.
    num_gpus : float | None (default: None)
        GPU share of each virtual client (see :func:`backend_config`); None
        with ``workload`` and a visible GPU: the share its clients fit
        (:func:`fedforget.gpu_share.client_gpu_share`).
    verbose : bool (default: False)
        Show Flower's and Ray's logs.
    ray_address : str | None (default: None)
        Attach to the Ray cluster at this address (``host:port`` of its head,
        or ``auto``); None = ``$RAY_ADDRESS`` when set, else a private Ray
        instance on this machine.
    workload : FederationConfig | None (default: None)
        The federation the clients train: sizes their GPU share.

    """
    from flwr.app import Context
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from fedforget.grid import SIMULATION_REPLY_POLL_INTERVAL_S, PromptGrid

    if num_gpus is None and workload is not None:
        from fedforget.gpu_share import client_gpu_share

        num_gpus = client_gpu_share(workload)
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
            # replies are collected every 0.01 s, not every 0.1 s (fedforget.grid)
            outcome["value"] = server_main(PromptGrid(grid, SIMULATION_REPLY_POLL_INTERVAL_S))
        except BaseException as error:
            failure.append(error)
            raise

    address = ray_cluster_address(ray_address)
    if address is None:
        private = backend_config(num_cpus, num_gpus)
        quiet_ray_accelerator_warning(
            float(private["client_resources"]["num_gpus"]),
            float(private["init_args"].get("num_gpus", 0)),
        )
        with ray_on_loopback():
            run_simulation(
                server_app=server,
                client_app=client_app,
                num_supernodes=num_supernodes,
                backend_name="ray",
                backend_config=private,  # type: ignore[arg-type]
            )
    else:
        import ray

        if num_cpus is not None:
            raise ConfigError(
                f"--num-cpus sizes a private Ray instance; the Ray cluster at {address} has the "
                f"CPUs its nodes were started with (`ray start --num-cpus=N`): leave it out"
            )
        cluster = attach_ray_cluster(address, verbose)
        try:
            run_simulation(
                server_app=server,
                client_app=client_app,
                num_supernodes=num_supernodes,
                backend_name="ray",
                backend_config=cluster_backend_config(cluster, num_gpus),  # type: ignore[arg-type]
            )
        finally:
            ray.shutdown()  # Flower's backend disconnects too; this covers a failed start
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
    ray_address: str | None = None,
) -> RunRecord:
    """Run one federation with ``config``; return its record (also written to ``out-dir``).

    The parameters other than ``config`` are :func:`simulate_app`'s.
    """
    from fedforget.federated.federation import run_federation

    return simulate_app(
        lambda grid: run_federation(grid, config),
        config.num_partitions,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        verbose=verbose,
        ray_address=ray_address,
        workload=config,
    )
