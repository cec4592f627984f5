"""A local multi-process deployment: one SuperLink and N SuperNodes on loopback.

The same commands run in the containers of ``docker-compose.yml`` (a test
keeps them identical and checks every flag against the installed Flower CLI):

* SuperLink: ``flower-superlink --database <state>/superlink.db --host H --port P``
  (``--insecure``, or the three ``--ssl-*`` files with TLS). It runs the
  ServerApp, and with it the unlearning API, in a subprocess.
* SuperNode i: ``flower-supernode --superlink H:P --port P_i --node-config
  "partition-id=i num-partitions=N"`` (``--insecure``, or
  ``--root-certificates ca.crt``). Each ClientApp message runs in a subprocess.
* With ``serverapp_process`` (docker-compose.yml): the SuperLink runs with
  ``--isolation process`` and ``flower-superexec --runtime-api-address H:P``
  runs the ServerApp, so the run outlives a SuperLink restart.
* The app: ``flwr run <app> local-deployment --stream`` with ``FLWR_HOME`` in
  the run directory (never the user's ``~/.flwr``).

Latency settings (Flower's own knobs; what each costs is said where it is set):

* every SuperExec (the process that starts ServerApp / ClientApp processes)
  asks for new work every :data:`TASK_POLL_INTERVAL_S` instead of Flower's
  default 1 s (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``);
* each SuperNode's ClientApps train with ``cores // SuperNodes`` threads
  (``OMP_NUM_THREADS``), as the simulation gives each client one CPU: three
  ClientApps with one thread per core each would fight over the cores.

Flower 1.42 has no setting for: the SuperNode's 3 s wait between polls of the
SuperLink when it has no message (a SuperNode that has just replied looks for
the next round's message 3 s later, so a deployed round lasts at least 3 s
plus the ClientApp process's life); its 0.5 s checks for the ClientApp's
reply; its heartbeat (30 s; off the round's path, it only decides how soon a
dead SuperNode is noticed); and the ServerApp's grid, which pulls replies every
3 s (fedforget's ServerApp pulls every 0.2 s through the grid's public calls,
:mod:`fedforget.grid`) and backs off 1 s when a reply's arrays are still being
uploaded. ``benchmarks/deploy_breakdown.py`` measures each of these waits.

Everything a deployment writes lives in its run directory: ``logs/`` (one log
per process), ``flwr-home/`` (the connection), ``state/`` (SuperLink
database), ``pids.json`` (what ``down`` stops: exactly the processes ``up``
started, each in its own process group with its children).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

CONNECTION = "local-deployment"
PIDS_FILE = "pids.json"
STARTUP_TIMEOUT_S = 60.0
TASK_POLL_INTERVAL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
TASK_POLL_INTERVAL_S = 0.2
"""Seconds between a SuperExec's requests for new work (Flower's default: 1 s).

A message waits for the next poll before its ClientApp process starts: on
average half the interval, 0.1 s here instead of 0.5 s. The price is five
small loopback requests per second from each idle SuperExec to its SuperNode
(or SuperLink), a few milliseconds of CPU per second.
"""


@dataclass(frozen=True)
class TlsFiles:
    """Certificate files for TLS between CLI, SuperLink and SuperNodes."""

    ca_cert: str
    server_cert: str
    server_key: str


@dataclass(frozen=True)
class DeploymentLayout:
    """Addresses and files of a deployment; builds every process's command."""

    num_supernodes: int
    superlink_host: str = "127.0.0.1"
    superlink_port: int = 9093
    bind_host: str = "127.0.0.1"
    supernode_ports: tuple[int, ...] = ()
    state_dir: str = "state"
    tls: TlsFiles | None = None
    serverapp_process: bool = False
    """Run the ServerApp outside the SuperLink (``--isolation process``): a
    ``flower-superexec`` process (:meth:`serverapp_command`) takes the run's
    ServerApp task from the SuperLink and starts it, so a restarted SuperLink
    does not end the run (docker-compose.yml's ``serverapp`` container)."""

    @property
    def superlink_address(self) -> str:
        """Where SuperNodes and the CLI reach the SuperLink."""
        return f"{self.superlink_host}:{self.superlink_port}"

    def superlink_command(self) -> list[str]:
        """The SuperLink's command line."""
        security = (
            [
                "--ssl-ca-certfile",
                self.tls.ca_cert,
                "--ssl-certfile",
                self.tls.server_cert,
                "--ssl-keyfile",
                self.tls.server_key,
            ]
            if self.tls
            else ["--insecure"]
        )
        isolation = ["--isolation", "process"] if self.serverapp_process else []
        return [
            "flower-superlink",
            *security,
            *isolation,
            "--database",
            f"{self.state_dir}/superlink.db",
            "--host",
            self.bind_host,
            "--port",
            str(self.superlink_port),
            "--disable-runtime-dependency-installation",
        ]

    def serverapp_command(self) -> list[str]:
        """The command of the process that runs ServerApps (with ``serverapp_process``)."""
        security = ["--root-certificates", self.tls.ca_cert] if self.tls else ["--insecure"]
        return ["flower-superexec", *security, "--runtime-api-address", self.superlink_address]

    def supernode_port(self, partition_id: int) -> int:
        """Port of SuperNode ``partition_id``'s ClientApp API (default 9094 + id)."""
        if self.supernode_ports:
            return self.supernode_ports[partition_id]
        return 9094 + partition_id

    def supernode_command(self, partition_id: int) -> list[str]:
        """SuperNode ``partition_id``'s command line."""
        security = ["--root-certificates", self.tls.ca_cert] if self.tls else ["--insecure"]
        return [
            "flower-supernode",
            *security,
            "--superlink",
            self.superlink_address,
            "--port",
            str(self.supernode_port(partition_id)),
            "--node-config",
            f"partition-id={partition_id} num-partitions={self.num_supernodes}",
        ]

    def connection_toml(self, name: str = CONNECTION) -> str:
        """The ``config.toml`` of a FLWR_HOME whose default connection ``name`` is this one.

        Flower needs the CA certificate's path absolute: it is resolved here.
        """
        lines = [
            "[superlink]",
            f'default = "{name}"',
            "",
            f"[superlink.{name}]",
            f'address = "{self.superlink_address}"',
        ]
        if self.tls:
            lines.append(f'root-certificates = "{Path(self.tls.ca_cert).resolve()}"')
        else:
            lines.append("insecure = true")
        return "\n".join(lines) + "\n"


@dataclass
class LocalDeployment:
    """Start, use and stop a deployment's processes in ``run_dir``."""

    run_dir: Path
    layout: DeploymentLayout
    processes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(
        cls, run_dir: Path, num_supernodes: int, tls: TlsFiles | None = None
    ) -> LocalDeployment:
        """A new deployment in ``run_dir`` on free loopback ports."""
        run_dir = run_dir.resolve()
        ports = free_ports(1 + num_supernodes)
        layout = DeploymentLayout(
            num_supernodes=num_supernodes,
            superlink_port=ports[0],
            supernode_ports=tuple(ports[1:]),
            state_dir=str(run_dir / "state"),
            tls=tls,
        )
        return cls(run_dir, layout)

    @classmethod
    def load(cls, run_dir: Path) -> LocalDeployment:
        """The deployment recorded in ``run_dir/pids.json`` by :meth:`up`."""
        path = run_dir.resolve() / PIDS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no deployment in {run_dir}: start one with `fedforget deploy up`"
            )
        saved = json.loads(path.read_text())
        layout = saved["layout"]
        tls_files = layout.pop("tls", None)
        tls = TlsFiles(**tls_files) if tls_files else None
        layout["supernode_ports"] = tuple(layout["supernode_ports"])
        return cls(run_dir.resolve(), DeploymentLayout(**layout, tls=tls), saved["processes"])

    # ------------------------------------------------------------ lifecycle
    @property
    def flwr_home(self) -> Path:
        """The deployment's own FLWR_HOME."""
        return self.run_dir / "flwr-home"

    def up(self) -> None:
        """Start the SuperLink, wait until it listens, then start the SuperNodes."""
        for folder in (self.run_dir / "logs", Path(self.layout.state_dir), self.flwr_home):
            folder.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(self.layout.connection_toml())
        self._start("superlink", self.layout.superlink_command(), self.tuning())
        wait_for_port(self.layout.superlink_host, self.layout.superlink_port)
        for partition_id in range(self.layout.num_supernodes):
            self.start_supernode(partition_id)

    def start_supernode(self, partition_id: int) -> None:
        """Start SuperNode ``partition_id``, stopping a running one first (a restart)."""
        name = f"supernode-{partition_id}"
        if self._alive(name):
            self._signal(name, signal.SIGKILL)
        self._start(name, self.layout.supernode_command(partition_id), self.tuning(supernode=True))

    def kill_supernode(self, partition_id: int) -> None:
        """Kill SuperNode ``partition_id`` at once (SIGKILL), as a crash would."""
        self._signal(f"supernode-{partition_id}", signal.SIGKILL)

    def down(self) -> None:
        """Stop exactly the processes this deployment started, and their children."""
        started = [pid for name, pid in self.processes.items() if self._alive(name)]
        family = started + [child for pid in started for child in descendants(pid)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(is_running(pid) for pid in family):
            time.sleep(0.2)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.processes.clear()
        self._save()

    def run_app(
        self,
        app_dir: Path,
        run_config: str = "",
        extra_env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run APP local-deployment --stream``; output also in ``logs/flwr-run.log``."""
        command = [
            str(Path(sys.executable).with_name("flwr")),
            "run",
            str(app_dir),
            CONNECTION,
            "--stream",
        ]
        if run_config:
            command += ["--run-config", run_config]
        done = subprocess.run(
            command,
            env=self.environment(extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        (self.run_dir / "logs" / "flwr-run.log").write_text(done.stdout + done.stderr)
        return done

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment of every process: the deployment's FLWR_HOME, no telemetry.

        Flower's processes start others by name (``flower-superexec``,
        ``flwr-serverapp``, ``flwr-clientapp``): this Python's ``bin`` folder goes
        first on PATH, so they are found in a virtual environment that is not
        activated.
        """
        return {
            **os.environ,
            "PATH": executables_first_on_path(),
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            **(extra or {}),
        }

    def tuning(self, supernode: bool = False) -> dict[str, str]:
        """Latency settings of a SuperLink's or SuperNode's environment (see the module doc).

        Values already in this process's environment win, so a user can
        override each of them.
        """
        settings = {TASK_POLL_INTERVAL_ENV: str(TASK_POLL_INTERVAL_S)}
        if supernode:
            cores = os.cpu_count() or 1
            settings["OMP_NUM_THREADS"] = str(max(1, cores // self.layout.num_supernodes))
        return {key: value for key, value in settings.items() if key not in os.environ}

    def prepare_data(self, run_config: str = "", timeout: float | None = None) -> None:
        """Build the run's data split and partitions into the cache the ClientApps read.

        Round 1's ClientApps would otherwise build them, each SuperNode at the
        same time (:mod:`fedforget.data.cache`). Runs in a subprocess with the
        deployment's environment (so the same ``FEDFORGET_CACHE``).
        """
        command = [sys.executable, "-m", "fedforget.data.prepare"]
        if run_config:
            command += ["--run-config", run_config]
        done = subprocess.run(
            command, env=self.environment(), timeout=timeout, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"preparing the data for run config {run_config!r} failed:\n{done.stderr[-3000:]}"
            )

    # -------------------------------------------------------------- helpers
    def _start(self, name: str, command: Sequence[str], extra_env: dict[str, str]) -> None:
        executable = Path(sys.executable).with_name(command[0])
        log = (self.run_dir / "logs" / f"{name}.log").open("a")
        process = subprocess.Popen(
            [str(executable), *command[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(extra_env),
            cwd=self.run_dir,
            start_new_session=True,  # a Ctrl-C in the terminal does not reach it
        )
        self.processes[name] = process.pid
        self._save()

    def _alive(self, name: str) -> bool:
        pid = self.processes.get(name)
        return pid is not None and is_running(pid) and _is_ours(pid, self.run_dir)

    def _signal(self, name: str, signum: int) -> None:
        pid = self.processes.get(name)
        if pid is not None and self._alive(name):
            for member in [pid, *descendants(pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, signum)

    def _save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {"layout": asdict(self.layout), "processes": self.processes}
        (self.run_dir / PIDS_FILE).write_text(json.dumps(record, indent=2))


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (reaping it if it is our child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        for child in children.get(current, []):
            found.append(child)
            frontier.append(child)
    return found


def _is_ours(pid: int, run_dir: Path) -> bool:
    """A recycled pid is not ours: our processes run with cwd = run_dir."""
    try:
        return Path(f"/proc/{pid}/cwd").resolve() == run_dir
    except OSError:
        return True  # no /proc: trust the process group


def executables_first_on_path() -> str:
    """PATH with the folder of this Python's console scripts (flwr, flower-*) first."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def free_ports(count: int) -> list[int]:
    """``count`` currently free TCP ports on 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]


def wait_for_port(host: str, port: int, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Block until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s: see the logs")


@contextlib.contextmanager
def running(deployment: LocalDeployment) -> Iterator[LocalDeployment]:
    """``up`` on entry, ``down`` on exit (also on errors)."""
    try:
        deployment.up()
        yield deployment
    finally:
        deployment.down()
