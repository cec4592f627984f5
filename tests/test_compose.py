"""docker-compose files: the local deployment's commands, flags the Flower CLI knows."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import pytest
import yaml

from fedforget.deploy import DeploymentLayout, TlsFiles

pytestmark = pytest.mark.slow

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
        serverapp_process=True,
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
    assert sorted(services) == [
        "serverapp",
        "superlink",
        "supernode-0",
        "supernode-1",
        "supernode-2",
    ]
    assert service_command(services["superlink"]) == expected.superlink_command()
    assert service_command(services["serverapp"]) == expected.serverapp_command()
    for partition in range(3):
        spec = services[f"supernode-{partition}"]
        assert service_command(spec) == expected.supernode_command(partition)
        assert "data:/data:ro" in spec["volumes"]
    # published on the host's loopback only: the unlearning API and the Flower CLI's port
    assert services["serverapp"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["superlink"]["ports"] == ["127.0.0.1:9093:9093"]
    assert "state:/state" in services["serverapp"]["volumes"]
    assert "superlink:/state" in services["superlink"]["volumes"]


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


@pytest.mark.parametrize(
    ("dockerfile", "image"),
    [
        ("docker/superlink/Dockerfile", "flwr/superlink:{version}"),
        ("server/Dockerfile", "flwr/superexec:{version}-py3.11-ubuntu24.04"),
        ("clients/Dockerfile", "flwr/supernode:{version}-py3.11-ubuntu24.04"),
    ],
)
def test_dockerfiles_build_on_the_pinned_official_images_by_default(dockerfile, image):
    """The base is a build argument whose default is Flower's image of the pinned version."""
    import flwr

    text = (ROOT / dockerfile).read_text()
    assert f"ARG BASE_IMAGE={image.format(version=flwr.__version__)}\nFROM ${{BASE_IMAGE}}" in text
    # the offline build changes only the base and pip's source
    offline = yaml.safe_load((ROOT / "docker-compose.offline.yml").read_text())
    for name, spec in offline["services"].items():
        assert set(spec["build"]["args"]) == {"BASE_IMAGE", "PIP_SOURCE"}, name


@pytest.mark.parametrize("dockerfile", ["server/Dockerfile", "clients/Dockerfile"])
def test_images_prepare_the_data_and_poll_like_the_local_deployment(dockerfile):
    """Data cache pre-built, code byte-compiled, the local deployment's poll interval."""
    from fedforget.data.cache import CACHE_ENV
    from fedforget.deploy import TASK_POLL_INTERVAL_ENV, TASK_POLL_INTERVAL_S

    text = (ROOT / dockerfile).read_text()
    from fedforget.data.cache import PREPARED_ENV

    assert f"{TASK_POLL_INTERVAL_ENV}={TASK_POLL_INTERVAL_S}" in text
    assert f"{CACHE_ENV}=/app/cache" in text
    assert "python -m compileall" in text
    prepare = 'python -m fedforget.data.prepare --run-config "$PREPARE_RUN_CONFIG"'
    refuse = f'ENV {PREPARED_ENV}="${{PREPARE_RUN_CONFIG}}"'
    assert prepare in text and refuse in text and text.index(prepare) < text.index(refuse)


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
        if name == "superlink":
            continue  # runs no fedforget code
        prepared = parse_run_config(spec["build"]["args"]["PREPARE_RUN_CONFIG"])
        assert {prepared.num_partitions} == partitions, name
    for dockerfile in ("server/Dockerfile", "clients/Dockerfile"):
        default = re.search(r'ARG PREPARE_RUN_CONFIG="([^"]*)"', (ROOT / dockerfile).read_text())
        assert default and parse_run_config(default.group(1)).num_partitions in partitions


# --------------------------------------------------------------------------------------------
# The deployment for real: docs/docker-compose.md's commands against a Docker engine.

DOCS = ROOT / "docs" / "docker-compose.md"
PROJECT = "fedforgettest"
API_URL = "http://127.0.0.1:8080"
ROUNDS = 6


def doc_blocks() -> dict[str, list[str]]:
    """docs/docker-compose.md's bash blocks by name (each block's first line: ``# name``)."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    named = {}
    for block in blocks:
        first, *lines = block.strip().splitlines()
        named[first.removeprefix("# ").strip()] = lines
    return named


def test_the_docs_name_every_command_block():
    """Every block is one the scenario runs: a new block needs its place in the scenario."""
    assert list(doc_blocks()) == [
        "build",
        "start",
        "run",
        "unlearn",
        "restart-superlink",
        "resume",
        "results",
        "tls-start",
    ]
    run = doc_blocks()["run"]
    assert doc_blocks()["resume"][1:] == run, "resume submits the same flwr run"
    assert f"num-server-rounds={ROUNDS}" in run[0]


def docker_unavailable() -> str:
    """Why the compose scenario cannot run here ('' if it can)."""
    for tool in ("docker", "docker-compose", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install docker.io docker-compose debootstrap)"
    done = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"no Docker daemon answers (start dockerd): {done.stderr.strip()[-200:]}"
    return ""


class Compose:
    """Runs the docs' blocks and docker-compose in a copy of the project (its own name)."""

    def __init__(self, folder: Path, compose_file: str = "") -> None:
        self.folder = folder
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "COMPOSE_PROJECT_NAME": PROJECT,
            "FLWR_TELEMETRY_ENABLED": "0",
            "PYTHON": sys.executable,
            # An in-process Ray simulation (an earlier test) leaves this process's sys.path,
            # the venv's site-packages included, in PYTHONPATH: docker-compose, a program of
            # the system's Python, would import the venv's packages and fail. The host-side
            # fedforget commands import the copy of the project.
            "PYTHONPATH": str(folder),
            # the wheelhouse outlives the test's copy of the project: a warm run only checks it
            "FEDFORGET_WHEELHOUSE": os.environ.get(
                "FEDFORGET_WHEELHOUSE", str(Path.home() / ".cache" / "fedforget" / "wheelhouse")
            ),
        }
        if compose_file:
            self.env["COMPOSE_FILE"] = compose_file

    def block(self, name: str, timeout: float = 900) -> str:
        """Run one block of the docs as a bash script; its stdout."""
        script = "\n".join(["set -euo pipefail", *doc_blocks()[name]])
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"block {name}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def __call__(self, *arguments: str, check: bool = True) -> str:
        done = subprocess.run(
            ["docker-compose", *arguments],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"docker-compose {arguments}: {done.stderr[-2000:]}"
        return done.stdout + done.stderr

    def flwr_run(self, extra: str = "") -> str:
        """The docs' `flwr run` with --stream (and ``extra`` run-config keys): its output."""
        line = doc_blocks()["run"][0] + " --stream"
        if extra:
            line += f' --run-config "{extra}"'
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return done.stdout + done.stderr

    def flwr(self, *arguments: str) -> str:
        """The Flower CLI with the docs' FLWR_HOME."""
        done = subprocess.run(
            [str(Path(sys.executable).with_name("flwr")), *arguments],
            cwd=self.folder,
            env={**self.env, "FLWR_HOME": str(self.folder / ".compose" / "flwr-home")},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout

    def read(self, path: str) -> str:
        return self("exec", "-T", "serverapp", "cat", path)

    def inspect(self, service: str) -> dict:
        container = self("ps", "-q", service).strip()
        done = subprocess.run(["docker", "inspect", container], capture_output=True, text=True)
        return json.loads(done.stdout)[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The images built offline (the docs' build block) from a copy of the project."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"compose scenario: {reason}")
    folder = tmp_path_factory.mktemp("compose") / "fedforget"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    compose = Compose(folder)
    compose("down", "-v", "--remove-orphans", check=False)
    compose.block("build", timeout=1800)
    return folder


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the API or a file is not there yet
            value = None
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def api_client(folder: Path):
    from fedforget.api.client import UnlearningClient, read_token_file

    return UnlearningClient(API_URL, read_token_file(folder / ".compose" / "api-token"))


def check_isolation(compose: Compose) -> None:
    """Compose networks only (SuperNodes on the internal one alone); ports on 127.0.0.1 only."""
    internal = f"{PROJECT}_federation"
    for service in ("superlink", "serverapp", "supernode-0", "supernode-1", "supernode-2"):
        spec = compose.inspect(service)
        networks = set(spec["NetworkSettings"]["Networks"])
        allowed = (
            {internal} if service.startswith("supernode") else {internal, f"{PROJECT}_published"}
        )
        assert networks == allowed, (service, networks)
        assert spec["HostConfig"]["NetworkMode"] not in ("host", "bridge")
        for bindings in (spec["HostConfig"]["PortBindings"] or {}).values():
            assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, (service, bindings)
        assert spec["Config"]["User"] in ("", "app"), service  # the image's user: app
    # the SuperNodes' network is internal: Docker gives it no way out of the machine
    network = subprocess.run(
        ["docker", "network", "inspect", internal], capture_output=True, text=True, check=True
    )
    assert json.loads(network.stdout)[0]["Internal"] is True
    # on the host, the published ports listen on 127.0.0.1 and nowhere else
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    for port in ("9093", "8080"):
        local = {
            line.split()[3]
            for line in listening.splitlines()
            if line.split()[3].endswith(f":{port}")
        }
        assert local == {f"127.0.0.1:{port}"}, local


def check_files(compose: Compose) -> None:
    """Owners and modes inside the volumes: the images' app user, 0700 folders, 0600 secrets."""
    listing = compose(
        "exec", "-T", "serverapp", "stat", "-c", "%n %U %a", "/state", "/state/api-token"
    )
    assert listing.split() == ["/state", "app", "700", "/state/api-token", "app", "600"]
    database = compose(
        "exec", "-T", "superlink", "stat", "-c", "%U %a", "/state", "/state/superlink.db"
    )
    assert database.split()[:2] == ["app", "700"] and database.split()[2] == "app"


def scenario(compose: Compose, folder: Path, start: str, bad_input: bool) -> None:
    compose.block(start)
    check_files(compose)
    check_isolation(compose)
    token = (folder / ".compose" / "api-token").read_text().strip()
    assert len(token) >= 32 and (folder / ".compose" / "api-token").stat().st_mode & 0o077 == 0

    if bad_input:  # each run fails at once, and leaves the state-dir as it was
        compose("exec", "-T", "serverapp", "chmod", "644", "/state/api-token")
        assert "/state/api-token has mode 644" in compose.flwr_run()
        compose("exec", "-T", "serverapp", "chmod", "600", "/state/api-token")
        refused = compose.flwr_run("seed=1")
        assert "seed=1" in refused and "PREPARE_RUN_CONFIG='num-partitions=3'" in refused
        refused = compose.flwr_run("num-partitions=4")
        assert "num-partitions=4" in refused and "PREPARE_RUN_CONFIG='num-partitions=3'" in refused
        listing = compose("exec", "-T", "serverapp", "ls", "-A", "/state")
        assert "checkpoint.safetensors" not in listing.split(), listing  # no round ran

    compose.block("run")
    with api_client(folder) as client:
        wait_for(lambda: client.status()["current_round"] >= 2, 600, "round 2")
        unlearned = compose.block("unlearn")
        status, applied, audit = split_json(unlearned)
        assert status["current_round"] >= 2 and status["clients_forgotten"] == []
        assert applied["status"] == "applied", applied
        entries = audit if isinstance(audit, list) else audit.get("entries", audit.get("items"))
        assert [e["client_ids"] for e in entries] == [["1"]], audit
        round_before = client.status()["current_round"]
        compose.block("restart-superlink")
        wait_for(
            lambda: client.status()["current_round"] > round_before,
            600,
            "a round after the SuperLink restart",
        )
        compose.block("resume")
    history = json.loads(
        wait_for(lambda: compose.read("/state/out/history.json"), 900, "the run's end")
    )
    rounds = [r["round"] for r in history if r["round"] > 0]
    assert rounds == list(range(1, ROUNDS + 1)), rounds  # every round once, none lost
    unlearn_round = applied["applied_round"]
    assert history[1]["contributors"] == ["0", "1", "2"]
    for record in history:
        if record["round"] >= unlearn_round:
            assert "1" not in record["participants"] + record["contributors"], record
    # the second run resumed from the first one's checkpoint, which ended when its container did
    runs = json.loads(compose.flwr("ls", "compose", "--format", "json"))["runs"]
    completed = [r["run-id"] for r in runs if r["status"] == "finished:completed"]
    assert len(completed) == 1 and len(runs) == (5 if bad_input else 2), runs
    resumed = completed[0]
    assert "resuming from the checkpoint of round" in compose.flwr(
        "log", str(resumed), "compose", "--show"
    )
    events = json.loads(compose.block("results"))
    assert [e["clients"] for e in events] == [["1"]]


def split_json(text: str) -> list:
    """The JSON documents printed one after another."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while position < len(text.rstrip()):
        while text[position].isspace():
            position += 1
        value, position = decoder.raw_decode(text, position)
        documents.append(value)
    return documents


def test_compose_deployment_trains_forgets_and_survives_restarts(project):
    compose = Compose(project)
    try:
        scenario(compose, project, "start", bad_input=True)
    finally:
        compose("down", "-v", check=False)


def test_compose_deployment_with_tls(project):
    compose = Compose(project, "docker-compose.yml:docker-compose.tls.yml")
    try:
        scenario(compose, project, "tls-start", bad_input=False)
        assert "BEGIN CERTIFICATE" in (project / ".compose" / "ca.crt").read_text()
        config = (project / ".compose" / "flwr-home" / "config.toml").read_text()
        assert f'root-certificates = "{project / ".compose" / "ca.crt"}"' in config
    finally:
        compose("down", "-v", check=False)


def fedforget_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedforget.cli", *arguments],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_deploy_token_creates_a_private_token_once_and_refuses_a_loose_one(tmp_path):
    """What the compose docs run in the ServerApp container to get the API token."""
    state = tmp_path / "state"
    first = fedforget_cli("deploy", "token", "--state-dir", str(state))
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert len(token) == 43 and (state / "api-token").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    assert fedforget_cli("deploy", "token", "--state-dir", str(state)).stdout.strip() == token
    (state / "api-token").chmod(0o644)
    refused = fedforget_cli("deploy", "token", "--state-dir", str(state))
    assert refused.returncode == 2 and "chmod 600" in refused.stderr and not refused.stdout


def test_deploy_connect_writes_the_flower_cli_connection(tmp_path, monkeypatch):
    """Flower takes the CA certificate's path only absolute: a relative one is resolved."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    home = tmp_path / "home"
    done = fedforget_cli(
        "deploy", "connect", "--flwr-home", "home", "--superlink", "127.0.0.1:9093",
        "--root-certificates", "ca.crt",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = (home / "config.toml").read_text()
    assert 'default = "compose"' in text and 'address = "127.0.0.1:9093"' in text
    assert f'root-certificates = "{tmp_path / "ca.crt"}"' in text
    wrong = fedforget_cli("deploy", "connect", "--flwr-home", "home", "--superlink", "9093")
    assert wrong.returncode == 2 and "HOST:PORT" in wrong.stderr
