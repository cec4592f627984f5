"""Wall time of the default main job (`fedforget run`), as a user runs it.

python benchmarks/main_job.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from record import report, time_fedforget

TARGET_S = 300.0


def main() -> None:
    """Run the default main job once; print (and write) its time and rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    wall, results = time_fedforget("run")
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
