"""Simulations attached to an existing Ray cluster: a head and a worker node on this machine.

The two nodes are ``ray start --block`` processes of their own, each with its
own ports and temporary folder, stopped by process group at the end: never
``ray stop``, which stops every Ray instance of this user on the machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ray_support import free_port, head_options, start_node, stop_node

from fedforget.cli import main
from fedforget.config import ConfigError, FederationConfig
from fedforget.simulation import PRIVATE_RAY, RAY_ADDRESS_ENV, ray_cluster_address, simulate

SMALL = {"num-partitions": 3, "num-server-rounds": 3, "unlearn-at-round": 1, "local-epochs": 1}


@dataclass
class RayCluster:
    """A running two-node Ray cluster started by this test module."""

    address: str
    folders: dict[str, Path]  # node name -> its --temp-dir
    processes: dict[str, subprocess.Popen[bytes]]

    def nodes_with_client_actors(self) -> set[str]:
        """The nodes on which one of Flower's ClientAppActors started (from each node's logs)."""
        return {
            name
            for name, folder in self.folders.items()
            if any(
                ":actor_name:ClientAppActor" in log.read_text(errors="replace")
                for log in folder.glob("session_*/logs/worker-*.out")
            )
        }


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A head node and a worker node, one CPU each, as separate processes on loopback."""
    # Ray's socket paths must stay short: a folder directly under /tmp, not pytest's tmp_path.
    root = Path(tempfile.mkdtemp(prefix="ffray", dir="/tmp"))
    port = free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    folders = {"head": root / "head", "worker": root / "worker"}
    try:
        processes["head"] = start_node(
            "head", head_options(port), folders["head"], folders["head"] / "ray_current_cluster"
        )
        processes["worker"] = start_node(
            "worker", [f"--address=127.0.0.1:{port}"], folders["worker"], "Ray runtime started"
        )
        yield RayCluster(f"127.0.0.1:{port}", folders, processes)
    finally:
        for name in ("worker", "head"):
            if name in processes:
                stop_node(processes[name])
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.private_ray
def test_run_on_a_two_node_cluster_uses_both_nodes_and_matches_a_private_run(
    ray_cluster, monkeypatch, caplog
):
    """A federation attached through RAY_ADDRESS trains on both nodes; same model as privately."""
    # Prepare
    config = FederationConfig.from_run_config(SMALL)
    monkeypatch.setenv(RAY_ADDRESS_ENV, ray_cluster.address)

    # Execute
    with caplog.at_level(logging.INFO, logger="fedforget.simulation"):
        attached = simulate(config)
    monkeypatch.delenv(RAY_ADDRESS_ENV)
    private = simulate(config, num_cpus=1)

    # Assert
    assert f"attached to the Ray cluster at {ray_cluster.address}: 2 nodes, 2 CPUs" in caplog.text
    assert ray_cluster.nodes_with_client_actors() == {"head", "worker"}
    assert [r.server_round for r in attached.rounds] == [1, 2, 3]
    assert [e.clients for e in attached.events] == [e.clients for e in private.events] == [("0",)]
    assert attached.final_arrays.keys() == private.final_arrays.keys()
    for name, array in attached.final_arrays.items():
        np.testing.assert_array_equal(array, private.final_arrays[name], err_msg=name)
    assert [h["test_acc"] for h in attached.history] == [h["test_acc"] for h in private.history]


def test_cli_names_what_to_run_when_no_cluster_answers(monkeypatch, capsys, tmp_path):
    """`fedforget run --ray-address` with nothing listening fails at once and says what to start."""
    # Prepare
    # set (not deleted), so that monkeypatch unsets what the CLI writes into it afterwards
    monkeypatch.setenv(RAY_ADDRESS_ENV, PRIVATE_RAY)
    address = f"127.0.0.1:{free_port()}"

    # Execute
    started = time.monotonic()
    code = main(
        [
            "run",
            "--ray-address",
            address,
            "--out",
            str(tmp_path),
            "--run-config",
            "num-partitions=3 num-server-rounds=3 unlearn-at-round=1 local-epochs=1",
        ]
    )

    # Assert
    error = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 30
    assert f"no Ray cluster answers at {address}" in error
    assert "ray start --head" in error and "ray start --address" in error
    assert os.environ[RAY_ADDRESS_ENV] == address


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ray://10.0.0.5:10001", "Ray Client address"),
        ("10.0.0.5", "is not host:port"),
        ("10.0.0.5:head", "is not host:port"),
    ],
)
def test_addresses_fedforget_cannot_attach_to_are_refused(address, message):
    """Ray Client addresses and malformed ones are refused with what to give instead."""
    with pytest.raises(ConfigError, match=message):
        ray_cluster_address(address)


def test_no_address_or_local_means_a_private_instance(monkeypatch):
    """Without --ray-address, RAY_ADDRESS decides; unset or 'local' is a private instance."""
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    assert ray_cluster_address() is None
    monkeypatch.setenv(RAY_ADDRESS_ENV, "local")
    assert ray_cluster_address() is None
    monkeypatch.setenv(RAY_ADDRESS_ENV, "10.0.0.5:6379")
    assert ray_cluster_address() == "10.0.0.5:6379"
    assert ray_cluster_address("auto") == "auto"


def test_num_cpus_is_refused_with_a_cluster(monkeypatch):
    """--num-cpus sizes only a private instance: with a cluster it is an error, not ignored."""
    monkeypatch.setenv(RAY_ADDRESS_ENV, f"127.0.0.1:{free_port()}")
    config = FederationConfig.from_run_config(SMALL)
    with pytest.raises(ConfigError, match="ray start --num-cpus"):
        simulate(config, num_cpus=2)
