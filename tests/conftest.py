"""Test-wide settings, the fast lane's markers and the test session's shared Ray.

Markers (registered in ``pyproject.toml``):

* ``slow``: starts Ray, a Flower simulation, a subprocess federation, docker or
  mkdocs; ``pytest -m "not slow"`` is the fast lane.
* ``ray``: runs Ray (a simulation, in this process or in a subprocess it
  starts). Such a test is slow, and runs attached to the session's one Ray
  head (:func:`shared_ray`) through ``RAY_ADDRESS``, which ``fedforget``'s
  simulations and CLI read: one Ray start-up for the whole session instead of
  one per simulation. A module fixture that runs one federation for several
  tests attaches too when the module has ``ray`` tests (:func:`_ray_of_the_module`).
* ``private_ray``: runs Ray on an instance of its own (``RAY_ADDRESS`` unset):
  what a private instance does is what it checks (it listens on loopback only,
  ``--num-cpus`` sizes it, a two-node cluster of its own).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# References cached by `fedforget run` / `compare` go to a folder of this test session
# alone: a cache left by an earlier run must not stand in for a reference a test computes.
os.environ["FEDFORGET_CACHE"] = tempfile.mkdtemp(prefix="fedforget-test-cache-")

SHARED_RAY_CPUS = 2
"""CPUs of the shared head: the actors of a simulation (the tests' private runs used 2)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that runs Ray, of the session or its own, is slow."""
    for item in items:
        if item.get_closest_marker("ray") or item.get_closest_marker("private_ray"):
            item.add_marker(pytest.mark.slow)


@dataclass(frozen=True)
class SharedRay:
    """The session's Ray head: its address ``host:port`` and its ``ray start`` process."""

    address: str
    pid: int


@pytest.fixture(scope="session")
def shared_ray() -> Iterator[SharedRay]:
    """One Ray head for the session's ``ray`` tests, on loopback.

    A ``ray start --block`` process of its own (stopped by process group, never
    ``ray stop``), with multi-node clusters off, as
    :func:`fedforget.simulation.ray_on_loopback` runs a private instance: its
    daemons and workers listen on 127.0.0.1 only.
    """
    from ray_support import free_port, head_options, start_node, stop_node

    from fedforget.simulation import LOOPBACK, RAY_CLUSTERS_ENV

    # Ray's socket paths must stay short: a folder directly under /tmp, not pytest's tmp_path.
    root = Path(tempfile.mkdtemp(prefix="ffray", dir="/tmp"))
    port = free_port()
    head = start_node(
        "head",
        [*head_options(port), f"--node-ip-address={LOOPBACK}"],
        root / "head",
        root / "head" / "ray_current_cluster",
        num_cpus=SHARED_RAY_CPUS,
        env={RAY_CLUSTERS_ENV: "0"},
    )
    try:
        yield SharedRay(f"{LOOPBACK}:{port}", head.pid)
    finally:
        stop_node(head)
        shutil.rmtree(root, ignore_errors=True)


def _attached(item: pytest.Item) -> bool:
    """Whether ``item`` runs on the session's shared head: ``ray`` and not ``private_ray``."""
    return bool(item.get_closest_marker("ray")) and not item.get_closest_marker("private_ray")


@pytest.fixture(scope="module", autouse=True)
def _ray_of_the_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module with ``ray`` tests attaches its module-scoped fixtures to the shared head too.

    Pytest sets up a module's fixtures before the function-scoped
    :func:`_ray_of_the_session`, so a module fixture that runs a federation
    for several tests (one simulation, many assertions) would otherwise start
    a private Ray instance of its own. The module's other tests still see no
    ``RAY_ADDRESS`` (:func:`_ray_of_the_session` removes it for them).
    """
    from fedforget.simulation import RAY_ADDRESS_ENV, ray_on_loopback

    module = request.node
    items = [item for item in request.session.items if item.path == module.path]
    if not any(_attached(item) for item in items):
        yield
        return
    patch = pytest.MonkeyPatch()
    patch.setenv(RAY_ADDRESS_ENV, request.getfixturevalue("shared_ray").address)
    try:
        with ray_on_loopback():
            yield
    finally:
        patch.undo()


@pytest.fixture(autouse=True)
def _ray_of_the_session(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """``ray`` tests attach to the shared head; every other test sees no ``RAY_ADDRESS``.

    A ``ray`` test's drivers (this process, and the processes it starts, which
    inherit the variable) run with multi-node clusters off, as the head does:
    else Ray takes the machine's network address as this node's and finds no
    raylet there.
    """
    from fedforget.simulation import RAY_ADDRESS_ENV, ray_on_loopback

    if _attached(request.node):
        monkeypatch.setenv(RAY_ADDRESS_ENV, request.getfixturevalue("shared_ray").address)
        with ray_on_loopback():
            yield
    else:
        monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
        yield
