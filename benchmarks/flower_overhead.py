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

    python benchmarks/flower_overhead.py [--rounds 8] [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
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
    return [
        {
            "round": entry["round_s"],
            "training": training[entry["round"]] / processes,
            "client_other": (work[entry["round"]] - training[entry["round"]]) / processes,
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
        "target_pct": TARGET_PCT,
    }
    report("flower_overhead", record, args.out)


if __name__ == "__main__":
    main()
