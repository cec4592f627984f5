"""Wall time and rows of `fedforget compare` on the embedded default, in each forget scenario.

Runs the command as a user does, with an empty reference cache (so the
retrained reference is trained too: the worst case), and records its time
against the target (at most 600 s on the 2-core machine for the client
scenario) and every row:

* ``client``: every federated and every centralised method forgets client 0;
* ``class``: class 3 (``--scenario class --forget-class 3``): the centralised
  methods, the federated ones listed as refused;
* ``random``: a random 10 % of the training examples (``--scenario random``).

    python benchmarks/compare.py [--out benchmarks/results] [--scenarios client,class,random]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from record import report, time_fedforget

TARGET_S = 600.0
SCENARIOS = {
    "client": (),
    "class": ("--scenario", "class", "--forget-class", "3"),
    "random": ("--scenario", "random", "--forget-fraction", "0.1"),
}


def main() -> None:
    """Run the default comparison in each scenario; print (and write) times and rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    record: dict[str, object] = {"load_average_at_start": os.getloadavg()[0]}
    for scenario in args.scenarios.split(","):
        wall, results = time_fedforget("compare", *SCENARIOS[scenario])
        record[scenario] = {
            "command": f"fedforget compare {' '.join(SCENARIOS[scenario])}".strip()
            + " (defaults, every registered method, empty cache)",
            "wall_s": round(wall, 1),
            "target_s": TARGET_S if scenario == "client" else None,
            "within_target": wall <= TARGET_S if scenario == "client" else None,
            "rows": [
                {k: v for k, v in row.items() if k not in ("targets", "seed")}
                for row in results["rows"]
            ],
        }
    report("compare", record, args.out)


if __name__ == "__main__":
    main()
