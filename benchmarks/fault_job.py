"""One server process of the fault trials (``benchmarks/fault_trials.py``), or their baselines.

Usage::

    python benchmarks/fault_job.py run '<run config as JSON>'
    python benchmarks/fault_job.py baselines FOLDER NUM_PARTITIONS

``run`` is the federation a trial kills and restarts: ``simulate(config)``, the
product's own path (ServerApp, live API, private Ray instance with its client
actors), with two test-only additions installed by monkeypatching here, never
in the product:

* a **trace** (``$FEDFORGET_FAULT_TRACE``, JSON lines appended with
  ``O_APPEND``, so a SIGKILL loses at most the line being written): the job's
  start, the API coming up, each round's start (phase, the clients sent a
  training message, the forgotten set at that moment), the identities the
  clients reported in their replies, each completed step, each checkpoint
  write (begun, durable), each round's end after the queue commit, each PUF
  step and each disk-store write. The trials read it to tell in which phase
  a kill landed and whether a forgotten client trained again;
* a **pause** (``$FEDFORGET_FAULT_PAUSE`` = ``POINT:ROUND``): at the first
  ``POINT`` of a round >= ``ROUND`` the process writes
  ``$FEDFORGET_FAULT_MARKER`` and sleeps until it is killed. Points:
  ``checkpoint-write`` (half of the new checkpoint written to its temporary
  file), ``after-checkpoint`` (checkpoint durable; the round's request
  outcomes not yet committed to the queue, obsolete store files not yet
  deleted), ``puf-step`` (PUF computed the unlearned model; nothing recorded),
  ``store-write`` (half of a client's pseudo-gradient file written, disk store).

``baselines`` runs the uninterrupted federations the trials are compared with,
all in one simulation (one Ray start): it runs each job file
``FOLDER/jobs/<id>.json`` (``{"config": run config, "requests": [...]}``, each
request with the round it must take effect at as ``not_before_round``) as
:func:`~fedforget.federated.federation.run_federation` on the same grid, writes
``FOLDER/done/<id>.json`` and stops once ``FOLDER/stop`` exists and no job is
left.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.app import Message  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

import fedforget.api.server as api_server  # noqa: E402
import fedforget.federated.federation as federation  # noqa: E402
import fedforget.federated.strategy as strategy_module  # noqa: E402
import fedforget.methods.puf as puf  # noqa: E402
import fedforget.state.checkpoint as checkpoint_module  # noqa: E402
import fedforget.state.disk_store as disk_store  # noqa: E402
from fedforget.config import FederationConfig  # noqa: E402
from fedforget.protocol import IDENTITY_RECORD, PARTITION_ID_KEY  # noqa: E402
from fedforget.requests import InMemoryRequestQueue, UnlearningRequest  # noqa: E402
from fedforget.simulation import simulate, simulate_app  # noqa: E402
from fedforget.state.files import temporary_path  # noqa: E402

TRACE_ENV = "FEDFORGET_FAULT_TRACE"
PAUSE_ENV = "FEDFORGET_FAULT_PAUSE"
MARKER_ENV = "FEDFORGET_FAULT_MARKER"
PAUSE_POINTS = ("checkpoint-write", "after-checkpoint", "puf-step", "store-write")
NUM_CPUS = 1  # one client actor: half the start-up work of two, the same models
BASELINE_POLL_S = 0.2
STORE_ROUND = re.compile(r"\.r(\d+)(?:\.\d+)?\.safetensors$")


class Trace:
    """Appends one JSON line per event to the trace file (nothing without one)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if path else -1

    def __call__(self, event: str, **fields: Any) -> None:
        """Write ``{"t": now, "ev": event, **fields}`` as one line (one ``write``)."""
        if self._fd >= 0:
            line = json.dumps({"t": time.time(), "ev": event, **fields}) + "\n"
            os.write(self._fd, line.encode())


class Pause:
    """The armed pause point: where the process waits to be killed."""

    def __init__(self, spec: str, marker: str, trace: Trace) -> None:
        point, _, at_round = spec.partition(":")
        if spec and point not in PAUSE_POINTS:
            raise SystemExit(f"{PAUSE_ENV}={spec!r}: the point must be one of {PAUSE_POINTS}")
        self.point = point if spec else ""
        self.round = int(at_round or 0)
        self.marker = Path(marker) if marker else None
        self.trace = trace

    def due(self, point: str, server_round: int) -> bool:
        """Whether the process must stop at ``point`` of ``server_round``."""
        return self.point == point and server_round >= self.round

    def wait_to_be_killed(self, point: str, server_round: int) -> None:
        """Record the pause, write the marker, sleep until killed."""
        self.trace("paused", point=point, round=server_round)
        if self.marker is not None:
            partial = self.marker.with_suffix(".partial")
            partial.write_text(f"{point} {server_round}\n")
            partial.rename(self.marker)
        time.sleep(3600)
        raise SystemExit("paused for an hour and never killed")


def write_half(path: Path, data: bytes) -> None:
    """What a SIGKILL in the middle of ``write_durably`` leaves: half of the temporary file."""
    temporary = temporary_path(path)
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data[: len(data) // 2])
        file.flush()
        os.fsync(file.fileno())


def install_trace_and_pause(trace: Trace, pause: Pause) -> None:
    """Wrap the spine's functions so that they trace, and pause where ``pause`` says."""
    strategy_class = strategy_module.UnlearningStrategy
    configure_train = strategy_class.configure_train
    complete = strategy_class._complete
    end_round = strategy_class._end_round
    accept_replies = strategy_module.accept_replies
    save_checkpoint = federation.save_checkpoint
    checkpoint_write = checkpoint_module.write_durably
    store_write = disk_store.write_durably
    puf_apply = puf._Puf.apply
    write_endpoint = api_server.write_endpoint
    checkpoint_round = [0]

    def traced_configure_train(self: Any, server_round: int, *args: Any) -> Any:
        messages = configure_train(self, server_round, *args)
        record = self.rounds[-1]
        trace(
            "round",
            round=server_round,
            phase=record.phase,
            trained=sorted(c for c in record.participants if c not in record.actions),
            participants=list(record.participants),
            forgotten=sorted(self.directory.forgotten),
        )
        return messages

    def traced_accept_replies(replies: list[Message], *args: Any) -> Any:
        identities = []
        for message in replies:
            if message.has_error():
                continue
            identity = message.content.config_records.get(IDENTITY_RECORD)
            if identity is not None and PARTITION_ID_KEY in identity:
                identities.append(str(identity[PARTITION_ID_KEY]))
        trace("replies", identities=sorted(identities))
        return accept_replies(replies, *args)

    def traced_complete(self: Any, server_round: int, result: Any) -> None:
        targets = list(self._active.step.targets) if self._active is not None else []
        complete(self, server_round, result)
        trace("forgot", round=server_round, clients=targets)

    def traced_end_round(self: Any, server_round: int, *args: Any) -> None:
        end_round(self, server_round, *args)
        trace("committed", round=server_round)

    def traced_save_checkpoint(state_dir: Any, checkpoint: Any, config: Any) -> Path:
        checkpoint_round[0] = checkpoint.server_round
        trace("checkpoint-write", round=checkpoint.server_round)
        path = save_checkpoint(state_dir, checkpoint, config)
        trace("checkpoint-durable", round=checkpoint.server_round)
        if pause.due("after-checkpoint", checkpoint.server_round):
            pause.wait_to_be_killed("after-checkpoint", checkpoint.server_round)
        return path

    def paused_checkpoint_write(path: Path, data: bytes) -> None:
        if pause.due("checkpoint-write", checkpoint_round[0]):
            write_half(path, data)
            pause.wait_to_be_killed("checkpoint-write", checkpoint_round[0])
        checkpoint_write(path, data)

    def traced_store_write(path: Path, data: bytes) -> None:
        match = STORE_ROUND.search(path.name)
        server_round = int(match.group(1)) if match else 0
        trace("store-write", round=server_round, file=path.name)
        if pause.due("store-write", server_round):
            write_half(path, data)
            pause.wait_to_be_killed("store-write", server_round)
        store_write(path, data)

    def traced_puf_apply(self: Any, step: Any, *args: Any) -> Any:
        result = puf_apply(self, step, *args)
        trace("puf-step", round=step.first_round, clients=list(step.targets))
        if pause.due("puf-step", step.first_round):
            pause.wait_to_be_killed("puf-step", step.first_round)
        return result

    def traced_write_endpoint(path: Path, server: Any) -> None:
        write_endpoint(path, server)
        trace("api-up", url=server.url)

    patches: list[tuple[Any, str, Callable[..., Any]]] = [
        (strategy_class, "configure_train", traced_configure_train),
        (strategy_class, "_complete", traced_complete),
        (strategy_class, "_end_round", traced_end_round),
        (strategy_module, "accept_replies", traced_accept_replies),
        (federation, "save_checkpoint", traced_save_checkpoint),
        (checkpoint_module, "write_durably", paused_checkpoint_write),
        (disk_store, "write_durably", traced_store_write),
        (puf._Puf, "apply", traced_puf_apply),
        (api_server, "write_endpoint", traced_write_endpoint),
    ]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)


def run(run_config: dict[str, Any]) -> None:
    """The trial's federation, traced, pausing where the environment says."""
    trace = Trace(os.environ.get(TRACE_ENV, ""))
    pause = Pause(os.environ.get(PAUSE_ENV, ""), os.environ.get(MARKER_ENV, ""), trace)
    trace("start", pid=os.getpid(), pause=pause.point, pause_round=pause.round)
    install_trace_and_pause(trace, pause)
    record = simulate(FederationConfig.from_run_config(run_config), num_cpus=NUM_CPUS)
    trace("end", last_round=record.last_round)


def baselines(folder: Path, num_partitions: int) -> None:
    """Run every job of ``folder/jobs`` on one simulation's grid until ``folder/stop``."""
    jobs, done = folder / "jobs", folder / "done"
    jobs.mkdir(parents=True, exist_ok=True)
    done.mkdir(parents=True, exist_ok=True)

    def serve(grid: Grid) -> int:
        finished = 0
        while True:
            pending = sorted(p for p in jobs.glob("*.json") if not (done / p.name).exists())
            if not pending:
                if (folder / "stop").exists():
                    return finished
                time.sleep(BASELINE_POLL_S)
                continue
            for path in pending:
                (done / path.name).write_text(json.dumps(run_baseline(grid, path)))
                finished += 1

    simulate_app(serve, num_partitions, num_cpus=NUM_CPUS)


def run_baseline(grid: Grid, path: Path) -> dict[str, Any]:
    """One uninterrupted federation with the requests of a job; what it produced."""
    job = json.loads(path.read_text())
    config = FederationConfig.from_run_config(job["config"])
    queue = InMemoryRequestQueue(
        UnlearningRequest(
            client_ids=tuple(r["client_ids"]),
            method=r["method"],
            options=dict(r["options"]),
            not_before_round=int(r["not_before_round"]),
            request_id=r["request_id"],
        )
        for r in job["requests"]
    )
    started = time.monotonic()
    try:
        record = federation.run_federation(grid, config, queue)
    except Exception:  # reported with the job: the trials record it
        return {"error": traceback.format_exc()[-3000:]}
    return {
        "wall_s": time.monotonic() - started,
        "events": [
            {"first_round": e.first_round, "server_round": e.server_round, "clients": e.clients}
            for e in record.events
        ],
        "last_round": record.last_round,
    }


def main() -> None:
    """``run RUN_CONFIG_JSON`` or ``baselines FOLDER NUM_PARTITIONS``."""
    mode, argument = sys.argv[1], sys.argv[2]
    if mode == "run":
        run(json.loads(argument))
    elif mode == "baselines":
        baselines(Path(argument), int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}: use 'run' or 'baselines'")


if __name__ == "__main__":
    main()
