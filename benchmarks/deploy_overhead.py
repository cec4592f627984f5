"""Per-round time of the multi-process deployment versus the Ray simulation.

Runs the same task (default digits setting with N clients, no unlearning) once
on Flower's Ray simulation backend and once as a local deployment (SuperLink +
N SuperNodes as processes on 127.0.0.1, `flwr run`), and reports the mean wall
time per round from round 2 on (from each run's history.json).

    python benchmarks/deploy_overhead.py [--clients 3] [--rounds 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from record import report

from fedforget.config import FederationConfig
from fedforget.deploy import LocalDeployment, running
from fedforget.federated.federation import HISTORY_FILE
from fedforget.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]


def round_times(history_file: Path) -> list[float]:
    """Seconds per round (round 1 onwards) from a history.json."""
    elapsed = [r["elapsed_s"] for r in json.loads(history_file.read_text())]
    return [b - a for a, b in itertools.pairwise(elapsed)]


def main() -> None:
    """Measure both runtimes; print (and write) the per-round means."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    keys = f"num-partitions={args.clients} num-server-rounds={args.rounds} unlearn-at-round=0"
    config = FederationConfig(
        num_partitions=args.clients,
        num_server_rounds=args.rounds,
        unlearn_at_round=0,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as work:
        simulation_out = Path(work) / "simulation"
        simulate(config.replace(out_dir=str(simulation_out)))
        simulation = round_times(simulation_out / HISTORY_FILE)[1:]
        deployment_out = Path(work) / "deployment"
        with running(LocalDeployment.create(Path(work) / "deploy", args.clients)) as deployment:
            deployment.prepare_data(keys)  # as `fedforget deploy app` does
            done = deployment.run_app(ROOT, f"{keys} progress=false out-dir='{deployment_out}'")
            done.check_returncode()
        deployed = round_times(deployment_out / HISTORY_FILE)[1:]
    sim_mean, dep_mean = sum(simulation) / len(simulation), sum(deployed) / len(deployed)
    record = {
        "task": f"digits default, {args.clients} clients, 10 local epochs, rounds 2..{args.rounds}",
        "simulation_round_s": round(sim_mean, 3),
        "deployment_round_s": round(dep_mean, 3),
        "overhead_s_per_round": round(dep_mean - sim_mean, 3),
    }
    report("deploy_overhead", record, args.out)


if __name__ == "__main__":
    main()
