"""What Flower + Ray add to local training, per round (after round 1).

Runs the default digits federation (10 clients, all clients every round, no
unlearning) on Flower's Ray backend, and the same clients' local training of
the same rounds in a plain process pool with as many processes as Ray actors
(one CPU and one torch thread each). Reports the mean wall time per round of
both, from round 2 on, and the overhead in percent. The Flower round is timed
from the strategy's configure_train to the end of its aggregate_train (the
server's ``round_s``), so fedforget's own per-round test-set evaluation is
not counted as Flower overhead.

    python benchmarks/flower_overhead.py [--rounds 8] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import torch
from record import report

from fedforget.config import FederationConfig
from fedforget.federated.federation import HISTORY_FILE
from fedforget.simulation import simulate
from fedforget.task import new_model, train_client

TARGET_PCT = 20.0


def _init_worker() -> None:
    torch.set_num_threads(1)


def _train_one(job: tuple[FederationConfig, int, int, dict[str, torch.Tensor]]) -> int:
    config, partition, server_round, state = job
    model = new_model(config)
    model.load_state_dict(state)
    _, count = train_client(config, partition, model, server_round)
    return count


def local_round_times(config: FederationConfig, rounds: int, processes: int) -> list[float]:
    """Wall time of each round of local training of all clients in a process pool."""
    state = new_model(config).state_dict()
    times = []
    with get_context("spawn").Pool(processes, initializer=_init_worker) as pool:
        for server_round in range(1, rounds + 1):
            jobs = [(config, p, server_round, state) for p in range(config.num_partitions)]
            start = time.perf_counter()
            pool.map(_train_one, jobs, chunksize=1)
            times.append(time.perf_counter() - start)
    return times


def flower_round_times(config: FederationConfig, processes: int) -> list[float]:
    """Seconds of each round of the Ray simulation, from sending to aggregating.

    ``round_s`` in the server's history spans configure_train to the end of
    aggregate_train: everything Flower and Ray do for the round, but not the
    server-side evaluation fedforget adds after it.
    """
    with tempfile.TemporaryDirectory() as out:
        simulate(config.replace(out_dir=out), num_cpus=processes)
        history = json.loads((Path(out) / HISTORY_FILE).read_text())
    return [record["round_s"] for record in history if record["round"] > 0]


def main() -> None:
    """Measure and print; write a JSON record when --out is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = FederationConfig(num_server_rounds=args.rounds, unlearn_at_round=0, progress=False)
    flower, local = [], []
    for _ in range(args.repeats):  # alternate, so that a noisy neighbour hits both alike
        flower.append(statistics.mean(flower_round_times(config, args.processes)[1:]))
        local.append(statistics.mean(local_round_times(config, args.rounds, args.processes)[1:]))
    overheads = [100 * (f / loc - 1) for f, loc in zip(flower, local, strict=True)]
    record = {
        "config": "default digits federation, 10 clients, 10 local epochs, no unlearning",
        "rounds_measured": f"2..{args.rounds}",
        "repeats": args.repeats,
        "processes": args.processes,
        "flower_round_s": [round(v, 4) for v in flower],
        "local_round_s": [round(v, 4) for v in local],
        "overhead_pct": [round(v, 1) for v in overheads],
        "median_overhead_pct": round(statistics.median(overheads), 1),
        "target_pct": TARGET_PCT,
    }
    report("flower_overhead", record, args.out)


if __name__ == "__main__":
    main()
