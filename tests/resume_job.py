"""A small federation on Flower's simulation with a state-dir, run as a process by test_checkpoint.

Usage: ``python tests/resume_job.py '<run config as JSON>' [PAUSE_ROUND MARKER]``.

With ``PAUSE_ROUND``, the process writes ``MARKER`` right after the checkpoint
of that round is durable and then waits to be killed: the moment between a
checkpoint and the request outcomes it records reaching the queue, and
before the disk store deletes what the checkpoint no longer names.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import fedforget.federated.federation as federation
from fedforget.config import FederationConfig
from fedforget.simulation import simulate


def pause_after(server_round: int, marker: Path) -> None:
    """Make the run write ``marker`` and sleep once the checkpoint of ``server_round`` is saved."""
    save = federation.save_checkpoint

    def save_then_wait(state_dir, checkpoint, config):
        path = save(state_dir, checkpoint, config)
        if checkpoint.server_round == server_round:
            marker.write_text(str(server_round))
            time.sleep(3600)  # until killed
        return path

    federation.save_checkpoint = save_then_wait


def main() -> None:
    """Run the federation the JSON run config describes."""
    config = FederationConfig.from_run_config(json.loads(sys.argv[1]))
    if len(sys.argv) == 4:
        pause_after(int(sys.argv[2]), Path(sys.argv[3]))
    record = simulate(config, num_cpus=2)
    # the run's wall time as the record reports it (the history has the elapsed seconds)
    (Path(config.out_dir) / "wall.json").write_text(json.dumps({"wall_s": record.wall_s}))


if __name__ == "__main__":
    main()
