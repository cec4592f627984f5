"""Wall time of the default main job (`fedforget run`), as a user runs it.

python benchmarks/main_job.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import report

TARGET_S = 300.0


def main() -> None:
    """Run the default main job once; print (and write) its time and headline numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir, tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fedforget.cli", "run", "--out", run_dir],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "FEDFORGET_CACHE": cache},  # a first run: no cached reference
        )
        wall = time.perf_counter() - start
        results = json.loads((Path(run_dir) / "results.json").read_text())
    record = {
        "command": "fedforget run (defaults, empty reference cache)",
        "wall_s": round(wall, 1),
        "target_s": TARGET_S,
        "within_target": wall <= TARGET_S,
        "rows": results["rows"],
    }
    report("main_job", record, args.out)


if __name__ == "__main__":
    main()
