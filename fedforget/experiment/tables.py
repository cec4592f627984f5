"""The per-run views of the rows: ``results.json``, ``methods.csv``, ``history.csv``, the table.

A result is ``{"config", "targets", "references", "rows": [...], "history": [...],
"timing", "provenance"}`` (``provenance``: where it was computed,
:mod:`fedforget.provenance`).
Each row is one model: ``method``, ``kind`` ("federated" or "centralised"),
``status`` ("ok" or "refused" with a ``reason``), ``scenario``,
``forget_size``, ``targets``, ``seed``, the unlearning metrics (fractions),
``recovery_rounds``, ``recovered`` and ``cost`` (federated: ``rounds``,
``client_epochs``, ``bytes_up``, ``bytes_down``, ``server_storage_bytes``,
``wall_s``; centralised: ``forget_epochs``, ``retain_epochs``, ``wall_s``).
Gaps to the federated ``retrain`` row (the reference) are derived when the
table and the CSV are written, never stored twice. References 1..K-1 (same
data, other training seeds) are rows of ``"kind": "reference"``; with K >= 2
the table measures gaps from the references' mean and marks those within the
retraining noise floor (:mod:`fedforget.experiment.validity`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from fedforget.experiment.validity import (
    NEEDS_REFERENCES,
    REFERENCE,
    Floor,
    floor_of,
    gap_to,
    is_reference,
)
from fedforget.metrics.registry import headline_metrics_of, metric_info, table_metrics
from fedforget.provenance import provenance_label

RESULTS_FILE = "results.json"
METHODS_CSV = "methods.csv"
HISTORY_CSV = "history.csv"
COST_COLUMNS = (
    "rounds",
    "client_epochs",
    "bytes_up",
    "bytes_down",
    "server_storage_bytes",
    "forget_epochs",
    "retain_epochs",
    "wall_s",
)


def reference_row(results: dict[str, Any]) -> dict[str, Any]:
    """The reference row of a result: the federated ``retrain``."""
    return next(
        row
        for row in results["rows"]
        if row["method"] == REFERENCE and row.get("kind", "federated") == "federated"
    )


def _present(results: dict[str, Any]) -> set[str]:
    """The keys of the rows that ran."""
    return {key for row in results["rows"] if row.get("status") == "ok" for key in row}


def columns(reference: dict[str, Any]) -> tuple[str, ...]:
    """The headline metric columns of a row: the registry's ``headline`` metrics it has."""
    return headline_metrics_of(reference)


def gaps(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """``|metric - retrained metric|`` of the metrics both rows have (the headline ones)."""
    return {m: abs(row[m] - reference[m]) for m in columns(reference) if m in row}


def reference_floors(results: dict[str, Any]) -> dict[str, Floor]:
    """The retraining noise floor of each metric column, from the result's K references."""
    references = [r for r in results["rows"] if is_reference(r) and r["status"] == "ok"]
    return {
        m: floor_of(m, [r[m] for r in references], len(references))
        for m in columns(reference_row(results))
    }


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    """Write ``results.json``, ``methods.csv`` (one row per model) and ``history.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    reference = reference_row(results)
    names = table_metrics(_present(results))
    where = provenance_label(results["provenance"]) if "provenance" in results else ""
    with (out_dir / METHODS_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "method",
                "kind",
                "status",
                "forget_size",
                *names,
                "recovery_rounds",
                "recovered",
                *(f"gap_{m}" for m in names),
                *(f"cost_{c}" for c in COST_COLUMNS),
                "reason",
                "machine",
            ]
        )
        for row in results["rows"]:
            ok = row["status"] == "ok"
            row_gaps = {m: abs(row[m] - reference[m]) for m in names if m in row and m in reference}
            writer.writerow(
                [
                    row["method"],
                    row.get("kind", "federated"),
                    row["status"],
                    row.get("forget_size", ""),
                    *(f"{row[m]:.6f}" if ok and m in row else "" for m in names),
                    row.get("recovery_rounds") if row.get("recovery_rounds") is not None else "",
                    row.get("recovered") if row.get("recovered") is not None else "",
                    *(f"{row_gaps[m]:.6f}" if m in row_gaps else "" for m in names),
                    *(row["cost"].get(c, "") if ok else "" for c in COST_COLUMNS),
                    row.get("reason", ""),
                    where,
                ]
            )
    score_columns = ["test_acc"] if "test_acc" in reference else ["test_dice", "test_dice_fg"]
    history_columns = [
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
        "machine",
    ]
    with (out_dir / HISTORY_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=history_columns, extrasaction="ignore")
        writer.writeheader()
        for record in results["history"]:
            participants = " ".join(record.get("participants", []))
            writer.writerow({**record, "participants": participants, "machine": where})


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def _row_line(
    row: dict[str, Any],
    reference: dict[str, Any],
    names: tuple[str, ...],
    floors: dict[str, Floor] | None = None,
) -> str:
    """One table line: metrics with gaps, then the row's costs.

    With ``floors`` (K >= 2 references), gaps are to the references' mean and
    a gap within the floor is marked ``*``.
    """
    if row["status"] != "ok":
        return f"{row['method']:<14}refused: {row['reason']}"
    if floors:
        cells = "".join(_marked(row[m], floors[m], m) for m in names)
    else:
        row_gaps = gaps(row, reference)
        cells = "".join(
            f"{row[m]:>11.3f}{'':>10}"
            if row is reference
            else f"{row[m]:>11.3f} (gap {row_gaps[m]:.3f})"
            for m in names
        )
    cost = row["cost"]
    if row.get("kind", "federated") == "centralised":
        epochs = f"{cost['forget_epochs']:g}+{cost['retain_epochs']:g}"
        return f"{row['method']:<14}{cells}{'-':>7}{epochs:>12}{'-':>10}{'-':>10}{'-':>10}" + (
            f"{cost['wall_s']:>7.0f}s"
        )
    rounds = row["recovery_rounds"] if row.get("recovery_rounds") is not None else cost["rounds"]
    return (
        f"{row['method']:<14}{cells}{rounds:>7}{cost['client_epochs']:>12.0f}"
        f"{_size(cost['bytes_up']):>10}{_size(cost['bytes_down']):>10}"
        f"{_size(cost['server_storage_bytes']):>10}{cost['wall_s']:>7.0f}s"
    )


def _marked(value: float, floor: Floor, metric: str) -> str:
    """A value with its gap to the references' mean, ``*`` when within the floor."""
    gap = gap_to(metric, value, floor)
    inside = floor.floor is not None and gap <= floor.floor
    return f"{value:>11.3f} (gap {gap:.3f}{'*' if inside else ' '})"


def _floor_legend(floors: dict[str, Floor]) -> str:
    """The table's line on the retraining noise floor."""
    known = {m: f.floor for m, f in floors.items() if f.floor is not None}
    if not known:
        return f"retraining noise floor: {NEEDS_REFERENCES} (--references K)"
    count = next(iter(floors.values())).references
    values = ", ".join(f"{m} {v:.3f}" for m, v in known.items())
    return (
        f"* = gap within the retraining noise floor, the largest difference among the {count} "
        f"references (same data, other training seeds): {values}; with K references, gap = "
        "|value - the references' mean|"
    )


def _more_metrics(results: dict[str, Any], headline: tuple[str, ...]) -> list[str]:
    """Lines of the registry metrics the rows carry beyond the headline, one row per model.

    The metrics and their order are the registry's (:func:`table_metrics`);
    none when the rows carry only the headline.
    """
    names = [m for m in table_metrics(_present(results)) if m not in headline]
    if not names:
        return []
    width = max(len(m) for m in names) + 2
    lines = [
        "more metrics (better: higher, lower, or near retrain, the retrained model's value):",
        f"{'method':<14}" + "".join(f"{m:>{width}}" for m in names),
        f"{'better':<14}" + "".join(f"{metric_info(m).direction:>{width}}" for m in names),
    ]
    for row in results["rows"]:
        if row["status"] == "ok":
            label = row["method"] if row.get("kind") != "centralised" else f"{row['method']} (c)"
            lines.append(
                f"{label:<14}"
                + "".join(f"{row[m]:>{width}.3f}" if m in row else f"{'-':>{width}}" for m in names)
            )
    return lines


def format_table(results: dict[str, Any]) -> str:
    """Each row's metrics with its gap to ``retrain``, then its costs.

    Federated rows come first, then the centralised ones. The ``original``
    row's gaps show how much there was to forget: if they are near zero, the
    model never memorised the forget set and no method can show an unlearning
    effect.
    """
    reference = reference_row(results)
    names = columns(reference)
    floors = reference_floors(results)
    marked = floors if any(f.floor is not None for f in floors.values()) else None
    header = (
        f"{'method':<14}"
        + "".join(f"{m:>21}" for m in names)
        + f"{'rounds':>7}{'epochs':>12}{'up':>10}{'down':>10}{'stored':>10}{'wall':>8}"
    )
    forget = f"forget set: {reference.get('scenario', 'client')} scenario"
    if "forget_size" in reference:
        forget += f", {reference['forget_size']} examples"
    lines = [forget, header, "-" * len(header)]
    rows = results["rows"]
    federated = [r for r in rows if r.get("kind", "federated") == "federated"]
    centralised = [r for r in rows if r.get("kind") == "centralised"]
    lines += [_row_line(row, reference, names, marked) for row in federated]
    more = [r for r in rows if is_reference(r) and r is not reference]
    if more:
        lines.append("references (the same data, other training seeds):")
        lines += [_row_line(row, reference, names, marked) for row in more]
    if centralised:
        lines.append("centralised (one model, the forget / retain split known):")
        lines += [_row_line(row, reference, names, marked) for row in centralised]
    lines += _more_metrics(results, names)
    lines.append(
        "gap = |value - retrain value|; rounds = rounds after the request (the step's included; "
        "original and retrain: training rounds); epochs = client-epochs (centralised: epochs "
        "over forget + retain data); up/down = model bytes clients sent / received; stored = "
        "what the method kept on the server for the step"
    )
    lines.append(_floor_legend(floors))
    if "provenance" in results:
        lines.append(f"computed on: {provenance_label(results['provenance'])}")
    return "\n".join(lines)
