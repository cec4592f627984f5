"""Ray nodes for tests: ``ray start --block`` processes of their own, stopped by process group.

Never ``ray stop``, which stops every Ray instance of this user on the machine.
The test session's shared head (``tests/conftest.py``) and the two-node cluster
of ``tests/test_ray_cluster.py`` are started with these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fedforget.simulation import RAY_ADDRESS_ENV

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
OBJECT_STORE_BYTES = 200 * 1024 * 1024  # the default (30% of memory, per node) is far more


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def node_ports() -> list[str]:
    """``ray start`` options giving a node ports of its own (two nodes may share this machine)."""
    options = (
        "node-manager-port",
        "object-manager-port",
        "runtime-env-agent-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
    )
    return [f"--{option}={free_port()}" for option in options]


def head_options(port: int) -> list[str]:
    """``ray start`` options of a head node listening on ``port``, without a dashboard."""
    return [
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]


def start_node(
    name: str,
    options: list[str],
    folder: Path,
    ready: Path | str,
    num_cpus: int = 1,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``ray start --block`` in a session of its own; return once ``ready`` says it is up.

    ``ready`` is a file the node writes when it is up, or a line of its log.
    ``env`` adds variables to the node's environment (which its workers inherit).
    """
    folder.mkdir()
    log = folder.parent / f"{name}.log"
    environment = {key: value for key, value in os.environ.items() if key != RAY_ADDRESS_ENV}
    environment.update(env or {})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                RAY,
                "start",
                *options,
                f"--num-cpus={num_cpus}",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--disable-usage-stats",
                "--block",
                f"--temp-dir={folder}",
                *node_ports(),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (
        ready.is_file() if isinstance(ready, Path) else ready in log.read_text(errors="replace")
    ):
        if exited(process) or time.monotonic() > deadline:
            stop_node(process)
            pytest.fail(f"the Ray {name} node did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return process


def exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether ``process`` has exited, leaving it unreaped (its pid stays its group's)."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    return process.returncode is not None or os.waitid(os.P_PID, process.pid, flags) is not None


def stop_node(process: subprocess.Popen[bytes]) -> None:
    """Stop a node started by :func:`start_node` and every process of its session."""
    if not exited(process):
        process.send_signal(signal.SIGTERM)  # `ray start --block` then stops its processes
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while not exited(process) and time.monotonic() < deadline:
            time.sleep(0.2)
    # Not reaped yet, so the group id cannot belong to anyone else's processes.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of its session outlived it
    process.wait()


def run_app(server: ServerApp, client_app: ClientApp, num_supernodes: int) -> None:
    """``run_simulation`` of a test's own apps on the Ray ``fedforget`` would use.

    Attached to the cluster at ``$RAY_ADDRESS`` when it is set (the session's
    shared head, see ``tests/conftest.py``), as :func:`fedforget.simulation.simulate_app`
    attaches; else on a private instance with two CPUs.
    """
    import ray
    from flwr.simulation import run_simulation

    from fedforget.simulation import (
        attach_ray_cluster,
        backend_config,
        cluster_backend_config,
        ray_cluster_address,
    )

    address = ray_cluster_address()
    if address is None:
        run_simulation(
            server, client_app, num_supernodes=num_supernodes, backend_config=backend_config(2)
        )
        return
    cluster = attach_ray_cluster(address)
    try:
        run_simulation(
            server,
            client_app,
            num_supernodes=num_supernodes,
            backend_config=cluster_backend_config(cluster),  # type: ignore[arg-type]
        )
    finally:
        ray.shutdown()
