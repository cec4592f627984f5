"""The one results schema: ``results.json`` rows, ``methods.csv``, ``history.csv``, the table.

A result is ``{"config", "targets", "rows": [...], "history": [...], "timing"}``.
Each row is one model: ``method``, ``kind`` ("federated"), ``status`` ("ok"
or "refused" with a ``reason``), ``targets``, ``seed``, the unlearning
metrics (fractions), ``recovery_rounds``, ``recovered`` and ``cost``
(``rounds``, ``client_epochs``, ``bytes_up``, ``bytes_down``,
``server_storage_bytes``, ``wall_s``). Gaps to the ``retrain`` row are
derived when the table and the CSV are written, never stored twice.
"""

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
COST_COLUMNS = (
    "rounds",
    "client_epochs",
    "bytes_up",
    "bytes_down",
    "server_storage_bytes",
    "wall_s",
)


def reference_row(results: dict[str, Any]) -> dict[str, Any]:
    """The ``retrain`` row of a result."""
    return next(row for row in results["rows"] if row["method"] == REFERENCE)


def gaps(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """``|metric - retrained metric|`` of a row's headline metrics."""
    return {m: abs(row[m] - reference[m]) for m in metric_names(reference)}


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    """Write ``results.json``, ``methods.csv`` (one row per model) and ``history.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    reference = reference_row(results)
    names = metric_names(reference)
    with (out_dir / METHODS_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "method",
                "status",
                *names,
                "recovery_rounds",
                "recovered",
                *(f"gap_{m}" for m in names),
                *(f"cost_{c}" for c in COST_COLUMNS),
                "reason",
            ]
        )
        for row in results["rows"]:
            ok = row["status"] == "ok"
            row_gaps = gaps(row, reference) if ok else {}
            writer.writerow(
                [
                    row["method"],
                    row["status"],
                    *(f"{row[m]:.6f}" if ok else "" for m in names),
                    row.get("recovery_rounds") if row.get("recovery_rounds") is not None else "",
                    row.get("recovered") if row.get("recovered") is not None else "",
                    *(f"{row_gaps[m]:.6f}" if ok else "" for m in names),
                    *(row["cost"].get(c, "") if ok else "" for c in COST_COLUMNS),
                    row.get("reason", ""),
                ]
            )
    score_columns = ["test_acc"] if names == METRIC_NAMES else ["test_dice", "test_dice_fg"]
    columns = [
        "run",
        "round",
        "phase",
        *score_columns,
        "test_loss",
        "bytes_down",
        "bytes_up",
        "client_epochs",
        "elapsed_s",
        "participants",
    ]
    with (out_dir / HISTORY_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in results["history"]:
            writer.writerow({**record, "participants": " ".join(record.get("participants", []))})


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def format_table(results: dict[str, Any]) -> str:
    """Each row's metrics with its gap to ``retrain``, then its costs.

    The ``original`` row's gaps show how much there was to forget: if they are
    near zero, the model never memorised the targets and no method can show an
    unlearning effect.
    """
    reference = reference_row(results)
    names = metric_names(reference)
    header = (
        f"{'method':<12}"
        + "".join(f"{m:>21}" for m in names)
        + f"{'rounds':>7}{'epochs':>8}{'up':>10}{'down':>10}{'stored':>10}{'wall':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in results["rows"]:
        if row["status"] != "ok":
            lines.append(f"{row['method']:<12}refused: {row['reason']}")
            continue
        row_gaps = gaps(row, reference)
        cells = "".join(
            f"{row[m]:>11.3f} (gap {row_gaps[m]:.3f})"
            if row["method"] != REFERENCE
            else f"{row[m]:>11.3f}{'':>10}"
            for m in names
        )
        cost = row["cost"]
        rounds = row["recovery_rounds"] if row["recovery_rounds"] is not None else cost["rounds"]
        lines.append(
            f"{row['method']:<12}{cells}{rounds:>7}{cost['client_epochs']:>8.0f}"
            f"{_size(cost['bytes_up']):>10}{_size(cost['bytes_down']):>10}"
            f"{_size(cost['server_storage_bytes']):>10}{cost['wall_s']:>7.0f}s"
        )
    lines.append(
        "gap = |value - retrain value|; rounds = rounds after the request (the step's included; "
        "original and retrain: training rounds); epochs = client-epochs; up/down = model bytes "
        "clients sent / received; stored = what the method kept on the server for the step"
    )
    return "\n".join(lines)
