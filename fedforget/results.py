"""The results schema of the main job: results.json, CSV files and the terminal table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from fedforget.metrics import METRIC_NAMES, metric_names

RESULTS_FILE = "results.json"
METHODS_CSV = "methods.csv"
HISTORY_CSV = "history.csv"
REFERENCE = "retrain"


def gaps_to_reference(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``|metric - retrained metric|`` of every method (the reference's are 0)."""
    reference = methods[REFERENCE]
    names = metric_names(reference)
    return {
        name: {metric: abs(values[metric] - reference[metric]) for metric in names}
        for name, values in methods.items()
    }


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    """Write ``results.json``, ``methods.csv`` (one row per method) and ``history.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    gaps = results["gaps"]
    names = metric_names(results["methods"][REFERENCE])
    with (out_dir / METHODS_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", *names, "recovery_rounds", *(f"gap_{m}" for m in names)])
        for name, values in results["methods"].items():
            writer.writerow(
                [
                    name,
                    *(f"{values[m]:.6f}" for m in names),
                    values.get("recovery_rounds", ""),
                    *(f"{gaps[name][m]:.6f}" for m in names),
                ]
            )
    score_columns = ["test_acc"] if names == METRIC_NAMES else ["test_dice", "test_dice_fg"]
    columns = ["run", "round", "phase", *score_columns, "test_loss", "elapsed_s", "participants"]
    with (out_dir / HISTORY_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in results["history"]:
            writer.writerow({**record, "participants": " ".join(record["participants"])})


def format_table(results: dict[str, Any]) -> str:
    """The methods table, each metric with its gap to the retrained reference.

    The ``original`` row's gaps show how much there was to forget: if they are
    near zero, the model never memorised the targets and no method can show an
    unlearning effect.
    """
    names = metric_names(results["methods"][REFERENCE])
    header = f"{'method':<10}" + "".join(f"{m:>22}" for m in names) + f"{'rounds':>8}"
    lines = [header, "-" * len(header)]
    gaps = results["gaps"]
    for name, values in results["methods"].items():
        cells = "".join(
            f"{values[m]:>12.3f} (gap {gaps[name][m]:.3f})"
            if name != REFERENCE
            else f"{values[m]:>12.3f}{'':>10}"
            for m in names
        )
        rounds = values.get("recovery_rounds")
        lines.append(f"{name:<10}{cells}{'' if rounds is None else rounds:>8}")
    lines.append(
        "gap = |value - retrain value|; rounds = PUF recovery rounds incl. the unlearning round"
    )
    return "\n".join(lines)
