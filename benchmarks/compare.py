"""Wall time of `fedforget compare` with every federated method on the embedded default.

Runs the command as a user does, with an empty reference cache (so the
retrained reference is trained too: the worst case), and records its time
against the target (at most 600 s on the 2-core machine) and every row.

    python benchmarks/compare.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from record import report, time_fedforget

TARGET_S = 600.0


def main() -> None:
    """Run the default comparison once; print (and write) its time and rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    wall, results = time_fedforget("compare")
    record = {
        "command": "fedforget compare (defaults, every registered method, empty cache)",
        "wall_s": round(wall, 1),
        "target_s": TARGET_S,
        "within_target": wall <= TARGET_S,
        "rows": [
            {k: v for k, v in row.items() if k not in ("kind", "targets", "seed")}
            for row in results["rows"]
        ],
    }
    report("compare", record, args.out)


if __name__ == "__main__":
    main()
