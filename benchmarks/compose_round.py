"""Per-round time of the docker-compose deployment, the local deployment and the simulation.

The same task on each runtime (digits, 3 clients, the default 10 local
epochs, no unlearning): Flower's Ray simulation, the local multi-process
deployment (``fedforget deploy``: SuperLink + 3 SuperNodes on 127.0.0.1) and
docker-compose.yml's containers (SuperLink, ServerApp and 3 SuperNodes, images
built beforehand: ``docker-compose build`` or ``bash docker/offline-build.sh``).
Reports the mean wall time per round from round 2 on (each run's
history.json), as benchmarks/deploy_overhead.py does.

    python benchmarks/compose_round.py [--rounds 5] [--out benchmarks/results]

Run from the repository root, with Docker and docker-compose, and nothing else
on ports 9093 and 8080.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy_overhead import round_times
from record import report

from fedforget.config import FederationConfig
from fedforget.deploy import DeploymentLayout, LocalDeployment, running
from fedforget.federated.federation import HISTORY_FILE
from fedforget.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "fedforgetbench"
CLIENTS = 3


def compose_rounds(keys: str, work: Path) -> list[float]:
    """Round times of one run on docker-compose.yml (brought up and down here)."""
    # docker-compose is a program of the system's Python: none of this process's PYTHON* variables
    # (the simulation's Ray sets PYTHONPATH to this environment's packages)
    clean = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env = {**clean, "COMPOSE_PROJECT_NAME": PROJECT, "FLWR_TELEMETRY_ENABLED": "0"}

    def compose(*arguments: str) -> str:
        done = subprocess.run(
            ["docker-compose", *arguments], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(arguments)}: {done.stderr[-2000:]}")
        return done.stdout

    home = work / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        DeploymentLayout(num_supernodes=CLIENTS, superlink_port=9093).connection_toml("compose")
    )
    compose("up", "-d")
    try:
        flwr = str(Path(sys.executable).with_name("flwr"))
        run_config = f"{keys} progress=false out-dir='/state/out'"
        subprocess.run(
            [flwr, "run", str(ROOT), "compose", "--run-config", run_config],
            env={**env, "FLWR_HOME": str(home)},
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            try:
                history = compose("exec", "-T", "serverapp", "cat", f"/state/out/{HISTORY_FILE}")
                break
            except RuntimeError:
                time.sleep(2)
        else:
            raise TimeoutError("the compose run did not end within 30 minutes")
    finally:
        compose("down", "-v")
    (work / HISTORY_FILE).write_text(history)
    return round_times(work / HISTORY_FILE)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    """Measure the three runtimes; print (and write) the per-round means."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    keys = f"num-partitions={CLIENTS} num-server-rounds={args.rounds} unlearn-at-round=0"
    config = FederationConfig(
        num_partitions=CLIENTS, num_server_rounds=args.rounds, unlearn_at_round=0, progress=False
    )
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        simulate(config.replace(out_dir=str(work / "simulation")))
        simulation = round_times(work / "simulation" / HISTORY_FILE)[1:]
        with running(LocalDeployment.create(work / "deploy", CLIENTS)) as deployment:
            deployment.prepare_data(keys)  # as `fedforget deploy app` does
            done = deployment.run_app(ROOT, f"{keys} progress=false out-dir='{work / 'local'}'")
            done.check_returncode()
        local = round_times(work / "local" / HISTORY_FILE)[1:]
        (work / "compose").mkdir()
        containers = compose_rounds(keys, work / "compose")[1:]
    record = {
        "task": f"digits default, {CLIENTS} clients, 10 local epochs, rounds 2..{args.rounds}",
        "simulation_round_s": round(mean(simulation), 3),
        "local_deployment_round_s": round(mean(local), 3),
        "compose_round_s": round(mean(containers), 3),
        "compose_rounds_s": [round(t, 3) for t in containers],
        "compose_minus_local_s_per_round": round(mean(containers) - mean(local), 3),
    }
    report("compose_round", record, args.out)


if __name__ == "__main__":
    main()
