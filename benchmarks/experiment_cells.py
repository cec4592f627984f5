"""Seconds per cell of `fedforget experiment` on the embedded data.

Runs the federation of ``experiments/digits-each.toml`` for one seed and one
target (every federated and centralised method: 2 + 9 + 11 cells) into a
temporary folder with an empty reference cache, and records the seconds
between consecutive finished cells (the ``original`` cell includes training
the original federation, ``retrain`` the reference), by kind and method.

    python benchmarks/experiment_cells.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

from record import report

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "experiments" / "digits-each.toml"


def main() -> None:
    """Run one seed and one target of the committed experiment; record seconds per cell."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = SPEC.read_text().replace("seeds = [0, 1, 2]", "seeds = [0]")
    text = text.replace('targets = "each"', 'targets = [["0"]]')
    assert "seeds = [0]" in text and '[["0"]]' in text, "experiments/digits-each.toml changed"
    tomllib.loads(text)
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        os.environ["FEDFORGET_CACHE"] = str(Path(folder) / "cache")
        from fedforget.experiment.runner import Runner, prepare

        spec_path = Path(folder) / "one.toml"
        spec_path.write_text(text)
        spec = prepare(spec_path, Path(folder) / "out")
        runner = Runner(spec, Path(folder) / "out", progress=False)
        started = time.monotonic()
        runner.run()
        ends = [started, *runner.finished_at]
        cells = [
            {
                "kind": key.kind,
                "method": key.method,
                "seconds": round(ends[i + 1] - ends[i], 2),
            }
            for i, key in enumerate(runner.computed)
        ]
    by_kind = {
        kind: round(statistics.median(c["seconds"] for c in cells if c["kind"] == kind), 2)
        for kind in ("federated", "centralised")
    }
    record = {
        "command": "python benchmarks/experiment_cells.py",
        "experiment": "experiments/digits-each.toml, seed 0, target client 0",
        "load_average_at_start": load_at_start,
        "cells": len(cells),
        "total_s": round(ends[-1] - started, 1),
        "median_cell_s_by_kind": by_kind,
        "per_cell": cells,
    }
    report("experiment_cells", record, args.out)


if __name__ == "__main__":
    main()
