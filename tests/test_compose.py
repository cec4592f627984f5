"""docker-compose files: the local deployment's commands, flags the Flower CLI knows."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from fedforget.deploy import DeploymentLayout, TlsFiles

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TLS = TlsFiles("/certs/ca.crt", "/certs/server.pem", "/certs/server.key")


def compose(*files: str) -> dict:
    """Merge compose files the way `docker compose -f a -f b` does for command/volumes."""
    merged: dict = {"services": {}}
    for name in files:
        data = yaml.safe_load((ROOT / name).read_text())
        for service, spec in data["services"].items():
            merged["services"].setdefault(service, {}).update(spec)
        merged.update(
            {k: v for k, v in data.items() if k not in ("services",) and not k.startswith("x-")}
        )
    return merged


def layout(tls: TlsFiles | None) -> DeploymentLayout:
    """The layout the compose files describe: services on their own hosts."""
    return DeploymentLayout(
        num_supernodes=3,
        superlink_host="superlink",
        superlink_port=9093,
        bind_host="0.0.0.0",
        supernode_ports=(9094, 9094, 9094),
        state_dir="/state",
        tls=tls,
    )


def service_command(spec: dict) -> list[str]:
    return [*spec["entrypoint"], *spec["command"]]


@pytest.mark.parametrize(
    ("files", "tls"),
    [
        (("docker-compose.yml",), None),
        (("docker-compose.yml", "docker-compose.tls.yml"), COMPOSE_TLS),
    ],
    ids=["insecure", "tls"],
)
def test_compose_commands_are_the_local_deployment_commands(files, tls):
    services = compose(*files)["services"]
    expected = layout(tls)
    assert sorted(services) == ["superlink", "supernode-0", "supernode-1", "supernode-2"]
    assert service_command(services["superlink"]) == expected.superlink_command()
    for partition in range(3):
        spec = services[f"supernode-{partition}"]
        assert service_command(spec) == expected.supernode_command(partition)
        assert "data:/data:ro" in spec["volumes"]
    assert "8080:8080" in services["superlink"]["ports"]  # the unlearning API
    assert any(v.startswith("state:/state") for v in services["superlink"]["volumes"])


@cache
def cli_options(executable: str) -> set[str]:
    """Options a Flower executable accepts, from its installed --help."""
    path = Path(sys.executable).with_name(executable)
    text = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text))


@pytest.mark.parametrize(
    "files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.tls.yml")]
)
def test_every_compose_flag_exists_in_the_installed_flower_cli(files):
    for name, spec in compose(*files)["services"].items():
        command = service_command(spec)
        flags = [token for token in command[1:] if token.startswith("--")]
        unknown = set(flags) - cli_options(command[0])
        assert not unknown, f"{name}: {command[0]} does not accept {sorted(unknown)}"


def test_local_deployment_flags_exist_in_the_installed_flower_cli(tmp_path):
    tls = TlsFiles(str(tmp_path / "ca.crt"), str(tmp_path / "s.pem"), str(tmp_path / "s.key"))
    for current in (
        DeploymentLayout(num_supernodes=2),
        DeploymentLayout(num_supernodes=2, tls=tls),
    ):
        for command in (current.superlink_command(), current.supernode_command(1)):
            flags = {token for token in command if token.startswith("--")}
            assert flags <= cli_options(command[0])


def test_dockerfiles_build_on_the_pinned_official_images():
    import flwr

    version = flwr.__version__
    assert f"FROM flwr/superlink:{version}" in (ROOT / "server" / "Dockerfile").read_text()
    assert f"FROM flwr/supernode:{version}" in (ROOT / "clients" / "Dockerfile").read_text()


@pytest.mark.parametrize("dockerfile", ["server/Dockerfile", "clients/Dockerfile"])
def test_images_prepare_the_data_and_poll_like_the_local_deployment(dockerfile):
    """Data cache pre-built, code byte-compiled, the local deployment's poll interval."""
    from fedforget.data.cache import CACHE_ENV
    from fedforget.deploy import TASK_POLL_INTERVAL_ENV, TASK_POLL_INTERVAL_S

    text = (ROOT / dockerfile).read_text()
    assert f"{TASK_POLL_INTERVAL_ENV}={TASK_POLL_INTERVAL_S}" in text
    assert f"{CACHE_ENV}=/app/cache" in text
    assert "python -m compileall" in text
    assert 'python -m fedforget.data.prepare --run-config "$PREPARE_RUN_CONFIG"' in text


def test_images_prepare_the_data_of_the_compose_federation():
    """The build argument names the compose file's number of partitions, and parses."""
    from fedforget.data.prepare import parse_run_config

    services = compose("docker-compose.yml")["services"]
    partitions = {
        int(re.search(r"num-partitions=(\d+)", spec["command"][-1]).group(1))
        for name, spec in services.items()
        if name.startswith("supernode-")
    }
    for name, spec in services.items():
        prepared = parse_run_config(spec["build"]["args"]["PREPARE_RUN_CONFIG"])
        assert {prepared.num_partitions} == partitions, name
    for dockerfile in ("server/Dockerfile", "clients/Dockerfile"):
        default = re.search(r'ARG PREPARE_RUN_CONFIG="([^"]*)"', (ROOT / dockerfile).read_text())
        assert default and parse_run_config(default.group(1)).num_partitions in partitions
