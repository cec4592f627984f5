"""Where a deployed round's time goes, next to a simulated round and the deployment's floor.

Three runs of the digits federation with N clients (the configuration of
``deploy_overhead.py``: 10 local epochs, no unlearning), rounds 2.. measured:

* ``deployed``: SuperLink + N SuperNodes as processes on loopback
  (:mod:`fedforget.deploy`, with its latency settings), the real ServerApp and
  ClientApp, the data cache prepared beforehand;
* ``floor``: the same deployment and ServerApp, with a ClientApp that imports
  torch and returns the received model at once (no ``torch._dynamo``: the
  ClientApp's training no longer imports it): what a round costs before any
  training;
* ``simulated``: Flower's Ray backend in one process (``fedforget.simulation``).

The ClientApp and the ServerApp's grid write wall-clock timestamps
(``FEDFORGET_TIMING_LOG``, :mod:`fedforget.timing`). A round's period, from
the push of round r's messages to the push of round r+1's, is split along
its critical path (the client whose reply came last) into segments that add
up to the period: waiting for the SuperNode and SuperExec polls, the
ClientApp process's start, imports, config, data, arrays in, training,
reply, Flower's push and process exit, reply collection (split into the wait
for the SuperNode's reply check, the upload and the grid's next pull, and the
pull that brought the last replies: downloading their arrays, with Flower's
1 s ``PULL_INITIAL_BACKOFF`` when a reply's arrays were not all uploaded yet),
and the ServerApp's own work (aggregation, test-set evaluation, the next
round's messages). ``pull_backoffs`` counts the pulls of replies that took
0.8 s or more (a backoff: jittered +-20 % around 1 s).

A fresh process that does what a ClientApp process does, run under
``python -X importtime``, splits the imports by package and times the
serialisation of a reply; the data cache is timed cold (built) and warm
(read).

    python benchmarks/deploy_breakdown.py [--clients 3] [--rounds 6] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from record import report

from fedforget.config import FederationConfig
from fedforget.deploy import TASK_POLL_INTERVAL_S, LocalDeployment, running
from fedforget.grid import REPLY_POLL_INTERVAL_S, SIMULATION_REPLY_POLL_INTERVAL_S
from fedforget.timing import TIMING_ENV

ROOT = Path(__file__).resolve().parents[1]
BACKOFF_S = 0.8
"""A pull of replies this long waited out Flower's first backoff (1 s +- 20 %)."""
FLOOR_MODULE = "floor_client"
FLOOR_CLIENT = '''"""The floor: a ClientApp that imports torch and returns at once."""

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedforget import timing

app = ClientApp()


def identity(context):
    return ConfigRecord({"partition-id": int(context.node_config["partition-id"])})


@app.query()
def query(message, context):
    with timing.phases("query", partition=context.node_config["partition-id"], round=0):
        return Message(RecordDict({"identity": identity(context)}), reply_to=message)


@app.train()
def train(message, context):
    server_round = int(message.content["config"]["server-round"])
    about = {"partition": context.node_config["partition-id"], "round": server_round}
    with timing.phases("train", **about) as mark:
        # what training needs, imported where fedforget's is: torch (and no torch._dynamo:
        # fedforget's training uses torch.optim's functional updates)
        import torch  # noqa: F401

        mark("imports")
        content = RecordDict(
            {
                "arrays": message.content["arrays"],
                "metrics": MetricRecord({"train-loss": 0.0, "num-examples": 1}),
                "identity": identity(context),
            }
        )
        reply = Message(content, reply_to=message)
        mark("reply")
        return reply
'''

REPLICA = r"""
import json, sys, time
started = time.perf_counter()
import flwr.supernode.cli.flwr_clientapp  # what the flwr-clientapp process imports first
flower = time.perf_counter()
by_flower = set(sys.modules)
import clients.client_app as client_app
app_module = time.perf_counter()
from fedforget import task  # torch and the task code: what the train action imports
task_code = time.perf_counter()
from flwr.app import ConfigRecord, Context, Message, RecordDict
from fedforget.config import FederationConfig
from fedforget.data.datasets import load_federated_data
config = FederationConfig(num_partitions=int(sys.argv[1]), unlearn_at_round=0, progress=False)
t = time.perf_counter(); load_federated_data(config); data = time.perf_counter() - t
from flwr.app import ArrayRecord
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a SuperLink would
model = task.new_model(config)
content = RecordDict({
    "arrays": ArrayRecord(model.state_dict()),
    "config": ConfigRecord({**config.to_run_config(), "server-round": 2}),
})
message = Message(content, dst_node_id=1, message_type="train")
node = {"partition-id": 0, "num-partitions": config.num_partitions}
context = Context(1, 1, node, RecordDict(), {})
by_train = set(sys.modules)
t = time.perf_counter(); reply = client_app.app(message, context); handler = time.perf_counter() - t
t = time.perf_counter(); client_app.app(message, context); warm = time.perf_counter() - t
loaded_by_training = sorted({m.split(".")[0] for m in set(sys.modules) - by_train})
t = time.perf_counter(); ArrayRecord(model.state_dict()); to_record = time.perf_counter() - t
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
t = time.perf_counter()
reply.metadata.__dict__["_message_id"] = reply.object_id  # as flwr-clientapp does
objects = get_all_nested_objects(reply)
payload = sum(len(o.deflate()) for o in objects.values())
deflate = time.perf_counter() - t
heavy = ["flwr_datasets", "datasets", "monai", "fastapi", "uvicorn", "sklearn", "scipy", "pandas"]
print(json.dumps({
    "flower_runtime_import_s": flower - started,
    "clientapp_module_import_s": app_module - flower,
    "task_code_import_s": task_code - app_module,
    "data_cache_read_s": data,
    "train_handler_s": handler,
    "train_handler_again_s": warm,
    "top_level_packages_first_loaded_by_training": loaded_by_training,
    "state_dict_to_arrayrecord_s": to_record,
    "reply_deflate_s": deflate,
    "reply_bytes": payload,
    "heavy_packages_loaded_by_flower_runtime": sorted(m for m in heavy if m in by_flower),
    "heavy_packages_loaded_by_fedforget": sorted(
        m for m in heavy if m in sys.modules and m not in by_flower
    ),
}))
"""


def median(values: list[float]) -> float:
    """Median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The timing log's records (none if it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_pushes(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The grid's record of each round's training messages, by round."""
    return {
        r["rounds"][0]: r
        for r in records
        if r.get("event") == "grid" and r["types"] == ["train"] and len(r["rounds"]) == 1
    }


def critical_path(
    records: list[dict[str, Any]], first_round: int, deployed: bool
) -> tuple[list[float], dict[str, list[float]], dict[str, list[float]]]:
    """Round periods and their split along the critical path; per-client phase durations.

    Returns (periods, segments of the critical path per round, each phase's
    duration over all clients and rounds).
    """
    pushes = train_pushes(records)
    exits: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r.get("event") == "exit":
            exits[r["pid"]].append(r["t"])

    def finished(client: dict[str, Any]) -> float:
        """When the client's work ended: its process's exit (deployed) or handler's return."""
        end = client["marks"][-1][1]
        if not deployed:
            return end
        return min((t for t in exits[client["pid"]] if t >= end), default=end)

    actions: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("event") == "action" and r["action"] == "train":
            actions[int(r["round"])].append(r)
    periods: list[float] = []
    segments: dict[str, list[float]] = defaultdict(list)
    phases: dict[str, list[float]] = defaultdict(list)
    for server_round in sorted(pushes):
        if server_round < first_round or server_round + 1 not in pushes:
            continue
        push = pushes[server_round]
        next_push = pushes[server_round + 1]["pushed"]
        clients = actions.get(server_round, [])
        if not clients:
            continue
        for client in clients:
            marks = client["marks"]
            for (_, before), (name, at) in itertools.pairwise(marks):
                phases[name].append(at - before)

        last = max(clients, key=finished)
        marks = dict(last["marks"])
        handler = marks["start"]
        parts: list[tuple[str, float]] = []
        if deployed:
            parts += [
                ("wait: SuperNode poll + SuperExec poll + spawn", last["process_start"]),
                ("ClientApp process start (Python, Flower, message, app)", handler),
            ]
        else:
            parts.append(("wait: Flower's dispatch poll, Ray, clients before it", handler))
        parts += [(name, at) for name, at in last["marks"][1:] if name != "end"]
        if deployed:
            parts.append(("Flower push of the reply + process exit", finished(last)))
        else:
            parts.append(("handler return", marks["end"]))
        collection = "SuperNode reply check + upload + grid poll" if deployed else "Ray + grid poll"
        last_pull = push.get("pulls", [])[-1:]
        if last_pull:
            parts.append((f"reply collection: {collection}", last_pull[0][0]))
            parts.append(("reply collection: the pull of the last replies", push["received"]))
        else:
            parts.append((f"reply collection: {collection}", push["received"]))
        parts.append(("ServerApp work (aggregate, evaluate, next messages)", next_push))
        at = push["pushed"]
        for name, until in parts:
            segments[name].append(until - at)
            at = until
        periods.append(next_push - push["pushed"])
    return periods, segments, phases


def summarise(records: list[dict[str, Any]], first_round: int, deployed: bool) -> dict[str, Any]:
    """Median period, the critical path's median segments, the clients' median phases."""
    periods, segments, phases = critical_path(records, first_round, deployed)
    pulls = [
        seconds
        for r in train_pushes(records).values()
        if r["rounds"][0] >= first_round
        for _, seconds, _ in r.get("pulls", [])
    ]
    if not periods:
        raise RuntimeError(
            f"no round from {first_round} on was measured completely: "
            "run more rounds, or keep the logs (--keep) and read them"
        )
    return {
        "round_s": [round(p, 3) for p in periods],
        "median_round_s": round(median(periods), 3),
        "critical_path_median_s": {k: round(median(v), 3) for k, v in segments.items()},
        "client_phase_median_s": {k: round(median(v), 3) for k, v in phases.items()},
        "reply_pulls": {
            "count": len(pulls),
            "median_s": round(median(pulls), 3),
            "backoffs (>= 0.8 s)": sum(s >= BACKOFF_S for s in pulls),
        },
    }


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block (inherited by the processes it starts)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def floor_app(folder: Path) -> Path:
    """A Flower app folder: fedforget's ServerApp, the floor ClientApp, fedforget's config."""
    folder.mkdir(parents=True, exist_ok=True)
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject, count = re.subn(
        r'clientapp = "[^"]+"', f'clientapp = "{FLOOR_MODULE}:app"', pyproject
    )
    if count != 1:
        raise RuntimeError("pyproject.toml has no [tool.flwr.app.components] clientapp line")
    (folder / "pyproject.toml").write_text(pyproject)
    (folder / f"{FLOOR_MODULE}.py").write_text(FLOOR_CLIENT)
    return folder


def deployed_run(
    work: Path, app: Path, clients: int, run_config: str, name: str
) -> list[dict[str, Any]]:
    """Run ``app`` on a fresh local deployment; return its timing records."""
    log = work / f"{name}-timing.jsonl"
    with environment(**{TIMING_ENV: str(log)}):
        deployment = LocalDeployment.create(work / name, clients)
        with running(deployment):
            done = deployment.run_app(app, f"{run_config} out-dir='{work / name / 'out'}'")
        if done.returncode != 0:
            raise RuntimeError(f"{name} run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return read_log(log)


def simulated_run(work: Path, config: FederationConfig) -> list[dict[str, Any]]:
    """Run the federation on the Ray backend; return its timing records.

    The simulation's grid is a :class:`PromptGrid`, which logs its pushes.
    """
    from fedforget.federated.federation import run_federation
    from fedforget.simulation import simulate_app

    log = work / "simulated-timing.jsonl"
    with environment(**{TIMING_ENV: str(log)}):
        simulate_app(
            lambda grid: run_federation(grid, config),
            config.num_partitions,
        )
    return read_log(log)


def imports_by_package(stderr: str) -> dict[str, float]:
    """Seconds of ``-X importtime`` self time per top-level package, largest first."""
    totals: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if found:
            totals[found.group(2).split(".")[0]] += int(found.group(1)) / 1e6
    ordered = sorted(totals.items(), key=lambda item: -item[1])
    top = dict(ordered[:8])
    top["(other)"] = sum(v for _, v in ordered[8:])
    return {k: round(v, 3) for k, v in top.items()}


def replica(clients: int, cache: Path) -> dict[str, Any]:
    """A fresh process doing a ClientApp process's work, plain and under -X importtime."""
    env = {**os.environ, "FEDFORGET_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop(TIMING_ENV, None)
    plain = python(["-c", REPLICA, str(clients)], env)
    traced = python(["-X", "importtime", "-c", REPLICA, str(clients)], env)
    measured = json.loads(plain.stdout)
    result = {k: round(v, 4) if isinstance(v, float) else v for k, v in measured.items()}
    result["imports_by_package_s (-X importtime, self time)"] = imports_by_package(traced.stderr)
    return result


def python(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run this Python with ``arguments`` in the repository; raise with its stderr if it fails."""
    done = subprocess.run(
        [sys.executable, *arguments], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"python {' '.join(arguments[:2])} failed:\n{done.stderr[-3000:]}")
    return done


def data_cache_times(clients: int, cache: Path) -> dict[str, float]:
    """Seconds to prepare the data cache cold (built) and warm (read), each in a fresh process."""
    env = {**os.environ, "FEDFORGET_CACHE": str(cache)}
    command = ["-m", "fedforget.data.prepare", "--run-config", f"num-partitions={clients}"]
    times = {}
    for label in ("cold_build_process_s", "warm_read_process_s"):
        start = time.perf_counter()
        python(command, env)
        times[label] = round(time.perf_counter() - start, 3)
    return times


def main() -> None:
    """Measure the three runs and the replica; print (and write) the breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-floor", action="store_true", help="no floor run (smoke tests)")
    parser.add_argument("--keep", type=Path, help="keep logs and timing records in this folder")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be >= 3: rounds 2.. are measured, each up to the next push")
    keys = (
        f"num-partitions={args.clients} num-server-rounds={args.rounds} "
        "unlearn-at-round=0 progress=false"
    )
    config = FederationConfig(
        num_partitions=args.clients,
        num_server_rounds=args.rounds,
        unlearn_at_round=0,
        progress=False,
    )
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as folder:
        work = args.keep.resolve() if args.keep else Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        cache = work / "cache"
        with environment(FEDFORGET_CACHE=str(cache)):
            data = data_cache_times(args.clients, cache)
            clientapp = replica(args.clients, cache)
            deployed = summarise(deployed_run(work, ROOT, args.clients, keys, "deployed"), 2, True)
            floor = (
                {}
                if args.skip_floor
                else summarise(
                    deployed_run(work, floor_app(work / "floor-app"), args.clients, keys, "floor"),
                    2,
                    True,
                )
            )
            simulated = summarise(simulated_run(work, config), 2, False)
    sim_s, dep_s = simulated["median_round_s"], deployed["median_round_s"]
    floor_s = floor.get("median_round_s", float("nan"))
    target = max(3 * sim_s, 1.2 * floor_s) if floor else 3 * sim_s
    record = {
        "task": f"digits default, {args.clients} clients, 10 local epochs, rounds 2..{args.rounds}",
        "settings": {
            "superexec_task_poll_interval_s": TASK_POLL_INTERVAL_S,
            "grid_reply_poll_interval_s": REPLY_POLL_INTERVAL_S,
            "simulation_grid_reply_poll_interval_s": SIMULATION_REPLY_POLL_INTERVAL_S,
            "supernode_fleet_poll_s": "3 (Flower 1.42, fixed)",
            "clientapp_threads": max(1, (os.cpu_count() or 1) // args.clients),
        },
        "notes": {
            "heartbeats": "off the round's path: sent by background threads (SuperNode 30 s, "
            "ClientApp process), they decide only how soon a dead node is noticed",
            "critical_path": "segments of the client whose reply came last; they add up to "
            "the round (push of round r to push of round r+1)",
        },
        "load_average_1_5_15_min": {
            "start": load_at_start,
            "end": [round(v, 2) for v in os.getloadavg()],
        },
        "deployed": deployed,
        "floor": floor,
        "simulated": simulated,
        "clientapp_process": clientapp,
        "data_cache": data,
        "target": {
            "three_times_simulated_s": round(3 * sim_s, 3),
            "floor_plus_20pct_s": round(1.2 * floor_s, 3) if floor else None,
            "target_s": round(target, 3),
            "deployed_s": dep_s,
            "deployed_over_simulated": round(dep_s / sim_s, 2),
            "deployed_over_floor": round(dep_s / floor_s, 2) if floor else None,
            "binding": "floor + 20 %" if floor and 1.2 * floor_s > 3 * sim_s else "3 x simulated",
            "met": dep_s <= target,
        },
    }
    report("deploy_breakdown", record, args.out)


if __name__ == "__main__":
    main()
