"""What Flower + Ray add to local training, per round (after round 1), and where it goes.

Runs the default digits federation (10 clients, all clients every round, no
unlearning) on Flower's Ray backend, and the same clients' local training of
the same rounds in a plain process pool with as many processes as Ray actors
(one CPU and one torch thread each), alternately ``--repeats`` times, so that
a noisy neighbour hits both alike. Reports per repeat the mean wall time per
round from round 2 on, the overhead in percent, its median over the repeats
and its spread. The Flower round is timed from the strategy's configure_train
to the end of its aggregate_train (the server's ``round_s``), so fedforget's
own per-round test-set evaluation is not counted as Flower overhead.

Where the time goes, per round (medians over the repeats): the ClientApp
logs its phases (``FEDFORGET_TIMING_LOG``, :mod:`fedforget.timing`) and each
pool job times its own; a round splits into training, the rest of the
client's work (config, model in and out), and what happens outside the
clients' work (Flower's dispatch to the Ray actors, replies, load imbalance,
the ServerApp's configure and aggregate), each per process (summed over the
clients, divided by the number of actors or pool processes).

What else needs the CPU while the actors train: the CPU seconds of this
process (the ServerApp, Flower's simulation engine, the server's test-set
evaluation) and of Ray's daemons (raylet, GCS, agents, monitors; read from
/proc), per wall second of the whole simulation, start-up included.

    python benchmarks/flower_overhead.py [--rounds 8] [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from record import report

from fedforget.config import FederationConfig
from fedforget.federated.federation import HISTORY_FILE
from fedforget.simulation import simulate
from fedforget.task import new_model, train_client
from fedforget.timing import TIMING_ENV

TARGET_PCT = 5.0

Job = tuple[FederationConfig, int, int, dict[str, torch.Tensor]]


def _init_worker() -> None:
    torch.set_num_threads(1)


def _train_one(job: Job) -> tuple[float, float]:
    """Train one client from the global state; seconds of (setup, training)."""
    config, partition, server_round, state = job
    started = time.perf_counter()
    model = new_model(config)
    model.load_state_dict(state)
    ready = time.perf_counter()
    train_client(config, partition, model, server_round)
    return ready - started, time.perf_counter() - ready


def local_rounds(config: FederationConfig, rounds: int, processes: int) -> list[dict[str, float]]:
    """Each round of local training of all clients in a process pool: wall, work, training."""
    state = new_model(config).state_dict()
    measured = []
    with get_context("spawn").Pool(processes, initializer=_init_worker) as pool:
        for server_round in range(1, rounds + 1):
            jobs = [(config, p, server_round, state) for p in range(config.num_partitions)]
            start = time.perf_counter()
            timings = pool.map(_train_one, jobs, chunksize=1)
            wall = time.perf_counter() - start
            setup = sum(s for s, _ in timings) / processes
            training = sum(t for _, t in timings) / processes
            measured.append({"round": wall, "training": training, "client_other": setup})
    return measured


RAY_DAEMONS = ("raylet", "gcs_server", "dashboard.py", "agent.py", "log_monitor.py", "monitor.py")
"""What Ray runs beside the client actors: processes whose command names one of these."""


def ray_daemon_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) of each running Ray daemon process, by pid (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        head = command.split(" ", 3)[:3]
        if any(name in part for part in head for name in RAY_DAEMONS):
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


class CpuWatch:
    """CPU seconds of this process and of Ray's daemons while a simulation runs.

    The daemons end with the simulation, so they are sampled every
    ``interval`` s and each one's last reading counts.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.daemons: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.daemons.update(ray_daemon_cpu_s())

    def __enter__(self) -> CpuWatch:
        self._started = time.perf_counter()
        self._own = time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.wall_s = time.perf_counter() - self._started
        self.driver_cpu_s = time.process_time() - self._own

    def shares(self) -> dict[str, float]:
        """Each side's CPU seconds per wall second of the run (1.0 = one core, all the time)."""
        return {
            "driver": self.driver_cpu_s / self.wall_s,
            "ray_daemons": sum(self.daemons.values()) / self.wall_s,
        }


def flower_rounds(config: FederationConfig, processes: int) -> list[dict[str, float]]:
    """Each round of the Ray simulation: wall (``round_s``), work and training per actor.

    ``round_s`` in the server's history spans configure_train to the end of
    aggregate_train: everything Flower and Ray do for the round, but not the
    server-side evaluation fedforget adds after it.
    """
    with tempfile.TemporaryDirectory() as out:
        log = Path(out) / "timing.jsonl"
        previous = os.environ.get(TIMING_ENV)
        os.environ[TIMING_ENV] = str(log)
        try:
            with CpuWatch() as watch:
                simulate(config.replace(out_dir=out), num_cpus=processes)
        finally:
            if previous is None:
                os.environ.pop(TIMING_ENV, None)
            else:
                os.environ[TIMING_ENV] = previous
        history = json.loads((Path(out) / HISTORY_FILE).read_text())
        records = [json.loads(line) for line in log.read_text().splitlines() if line]
    work: dict[int, float] = defaultdict(float)
    training: dict[int, float] = defaultdict(float)
    for record in records:
        if record.get("event") != "action" or record["action"] != "train":
            continue
        marks = dict(record["marks"])
        work[record["round"]] += marks["end"] - marks["start"]
        training[record["round"]] += marks["train"] - marks["arrays-in"]
    shares = watch.shares()
    return [
        {
            "round": entry["round_s"],
            "training": training[entry["round"]] / processes,
            "client_other": (work[entry["round"]] - training[entry["round"]]) / processes,
            "driver_cpu_share": shares["driver"],
            "ray_daemons_cpu_share": shares["ray_daemons"],
        }
        for entry in history
        if entry["round"] > 0
    ]


def split(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Mean seconds per round of rounds 2.. : wall, training, other client work, the rest."""
    later = rounds[1:]
    parts = {key: statistics.mean(r[key] for r in later) for key in later[0]}
    parts["outside_client_work"] = parts["round"] - parts["training"] - parts["client_other"]
    return parts


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value (rounded)."""
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "all": [round(v, 1) for v in values],
    }


def main() -> None:
    """Measure and print; write a JSON record when --out is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of each")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: round 1 (start-up) is not measured")
    config = FederationConfig(num_server_rounds=args.rounds, unlearn_at_round=0, progress=False)
    flower, local = [], []
    for _ in range(args.repeats):  # alternate, so that a noisy neighbour hits both alike
        flower.append(split(flower_rounds(config, args.processes)))
        local.append(split(local_rounds(config, args.rounds, args.processes)))
    pairs = zip(flower, local, strict=True)
    overheads = [100 * (f["round"] / loc["round"] - 1) for f, loc in pairs]
    keys = ("round", "training", "client_other", "outside_client_work")
    record = {
        "config": "default digits federation, 10 clients, 10 local epochs, no unlearning",
        "rounds_measured": f"2..{args.rounds}",
        "repeats": args.repeats,
        "processes": args.processes,
        "flower_round_s": [round(f["round"], 4) for f in flower],
        "local_round_s": [round(loc["round"], 4) for loc in local],
        "overhead_pct": [round(v, 1) for v in overheads],
        "median_overhead_pct": round(statistics.median(overheads), 1),
        "overhead_pct_spread": summary(overheads),
        "where_the_round_goes_s (per process, median of repeats)": {
            "flower": {k: round(statistics.median(f[k] for f in flower), 4) for k in keys},
            "local": {k: round(statistics.median(loc[k] for loc in local), 4) for k in keys},
        },
        "cpu_beside_the_actors (cores busy, whole simulation, median of repeats)": {
            "driver (ServerApp, Flower's engine, test-set evaluation)": round(
                statistics.median(f["driver_cpu_share"] for f in flower), 3
            ),
            "ray_daemons (raylet, GCS, agents, monitors)": round(
                statistics.median(f["ray_daemons_cpu_share"] for f in flower), 3
            ),
        },
        "target_pct": TARGET_PCT,
    }
    report("flower_overhead", record, args.out)


if __name__ == "__main__":
    main()
