"""Seconds per cell of `fedforget experiment`.

Runs the federation of an experiment file (default
``experiments/digits-each.toml``) for one seed and one target (every method
of the file: for digits-each 2 + 9 + 11 cells, plus K - 1 more references)
into a temporary folder with an empty reference cache, and records the
seconds between consecutive finished cells (the first cell includes training
the original federation and the references), by kind and method, and where
it ran (:func:`fedforget.provenance.provenance`).

    python benchmarks/experiment_cells.py [--out benchmarks/results]
    python benchmarks/experiment_cells.py --spec experiments/digits-backdoor.toml --out ...

A file too large to time whole on this machine is timed at a reduced size,
written into the record: ``--set KEY=VALUE`` replaces a line of the file
(``--set local-epochs=1 --set unlearn-at-round=1 --set num-server-rounds=2
--set 'methods=["puf-special"]' --set 'centralised=[]' --set references=1``);
the time of the full size is then an estimate from it, not a measurement.
``--keep DIR`` keeps the run in DIR (``fedforget report DIR/out`` then shows
its metrics).

The record is ``experiment_cells.json`` for digits-each, else
``experiment_cells-<file name>.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

from record import report, set_lines

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "experiments" / "digits-each.toml"


def main() -> None:
    """Run one seed and one target of the committed experiment; record seconds per cell."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--spec", type=Path, default=SPEC, help="the experiment file")
    parser.add_argument("--target", default="0", help="the target client (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="the seed (default: 0)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace the file's line KEY = ... (a smaller run of a large experiment)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="write the run (cells, references, cache) here instead of a temporary folder, "
        "so that `fedforget report KEEP/out` reads its metrics",
    )
    args = parser.parse_args()
    text, seeds = re.subn(r"(?m)^seeds = .*$", f"seeds = [{args.seed}]", args.spec.read_text())
    text, targets = re.subn(r"(?m)^targets = .*$", f'targets = [["{args.target}"]]', text)
    assert seeds == 1 and targets == 1, f"{args.spec} names no seeds or targets line"
    text = set_lines(text, args.set, args.spec)
    references = tomllib.loads(text)["experiment"].get("references", 3)
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as temporary:
        folder = str(args.keep) if args.keep else temporary
        Path(folder).mkdir(parents=True, exist_ok=True)
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
        for kind in ("federated", "centralised", "reference")
        if any(c["kind"] == kind for c in cells)
    }
    from fedforget.provenance import provenance

    spec_name = args.spec.resolve().relative_to(ROOT) if args.spec.is_absolute() else args.spec
    record = {
        "command": f"python benchmarks/experiment_cells.py --spec {spec_name} --target "
        f"{args.target} --seed {args.seed}" + "".join(f" --set '{item}'" for item in args.set),
        "reduced": args.set,
        "experiment": f"{spec_name}, seed {args.seed}, target client {args.target}, "
        f"{references} reference(s)",
        "provenance": provenance(),
        "load_average_at_start": load_at_start,
        "cells": len(cells),
        "total_s": round(ends[-1] - started, 1),
        "median_cell_s_by_kind": by_kind,
        "per_cell": cells,
    }
    name = (
        "experiment_cells" if args.spec.stem == SPEC.stem else f"experiment_cells-{args.spec.stem}"
    )
    report(name, record, args.out)


if __name__ == "__main__":
    main()
