"""An experiment's results as data: long-format rows and aggregated tables.

* ``results-long.csv`` / ``results-long.json``: one row per (method, target
  set, seed, metric) with the forget-set size, the retraining noise floor,
  the gap to the references, gap / floor and the verdict
  (:mod:`fedforget.experiment.validity`), and where the cell was computed;
* ``summary.csv`` / ``summary.json``: per (kind, method, metric) the mean and
  standard deviation over target sets and seeds, the mean signed delta to the
  retrained reference of the same (target set, seed), its 95 % confidence
  interval (Student t over the paired deltas) and the mean absolute gap; with
  K >= 2 references, the mean gap to the references with its 95 % interval,
  the mean floor, gap / floor and the verdict;
* ``curves.csv``: each federated cell's test score by round after the request;
* ``provenance.json``: each computing environment (CPU capability torch
  uses, torch / flwr / numpy versions, threads) and how many cells it computed.

The retrained reference is the federated ``retrain`` row of the same target
set and seed; the ``original`` row's gaps show how much there was to forget.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedforget.experiment.validity import REFERENCE, Verdict, summarise_verdicts, with_verdicts
from fedforget.provenance import provenance_label

LONG_CSV = "results-long.csv"
LONG_JSON = "results-long.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
CURVES_CSV = "curves.csv"
REFUSED_JSON = "refused.json"
PROVENANCE_JSON = "provenance.json"
_NOT_METRICS = {"seed", "forget_size", "unlearning_round", "recovered", "references"}


@dataclass(frozen=True)
class Summary:
    """One (kind, method, metric) aggregated over target sets and seeds."""

    kind: str
    method: str
    metric: str
    n: int
    mean: float
    std: float
    delta_mean: float | None
    delta_ci_low: float | None
    delta_ci_high: float | None
    gap_mean: float | None
    forget_size: float
    noise_gap: float | None = None
    """Mean gap to the K references (|value - their mean|, or the distance itself)."""
    noise_gap_ci_low: float | None = None
    noise_gap_ci_high: float | None = None
    noise_floor: float | None = None
    """Mean retraining noise floor (the references' largest pairwise difference)."""
    gap_floor: float | None = None
    verdict: str = ""
    """``within retraining noise``, ``differs``, what the floor needs, or "" (a cost)."""
    within_share: float | None = None
    """Share of the (target set, seed) cells whose gap is within their floor."""
    machines: str = ""
    """Where the cells were computed (:func:`fedforget.provenance.provenance_label`)."""


def targets_key(row: dict[str, Any]) -> str:
    """A row's target set as text (``"0+3"``; ``"scenario"`` for a class or random forget set)."""
    return "+".join(row.get("targets", [])) or "scenario"


def machine(cell: dict[str, Any]) -> str:
    """Where a cell was computed, as one text ("" for a cell that did not record it)."""
    recorded = cell.get("provenance")
    return provenance_label(recorded) if isinstance(recorded, dict) else ""


def long_rows(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, target set, seed, metric) of the cells that ran ("ok").

    Each row carries the floor, gap, gap / floor and verdict of
    :func:`fedforget.experiment.validity.with_verdicts`, and ``machine``.
    """
    out = []
    for cell in cells:
        if cell.get("status") != "ok":
            continue
        values = {
            key: value
            for key, value in cell.items()
            if isinstance(value, int | float)
            and not isinstance(value, bool)
            and key not in _NOT_METRICS
        }
        values |= {
            f"cost_{key}": value
            for key, value in cell.get("cost", {}).items()
            if isinstance(value, int | float)
        }
        for metric, value in sorted(values.items()):
            out.append(
                {
                    "kind": cell["kind"],
                    "method": cell["method"],
                    "scenario": cell.get("scenario", "client"),
                    "targets": targets_key(cell),
                    "seed": cell["seed"],
                    "forget_size": cell.get("forget_size"),
                    "metric": metric,
                    "value": float(value),
                    "machine": machine(cell),
                }
            )
    return with_verdicts(out)


def t_quantile_975(degrees: int) -> float:
    """The 97.5 % quantile of Student's t with ``degrees`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, degrees))


def summarise(long: Sequence[dict[str, Any]]) -> list[Summary]:
    """Mean, std, delta to retrain with its 95 % CI, and mean |gap| per (kind, method, metric).

    Deltas pair each value with the federated ``retrain`` value of the same
    target set, seed and metric; cost metrics get no delta.
    """
    reference = {
        (r["targets"], r["seed"], r["metric"]): r["value"]
        for r in long
        if r["method"] == REFERENCE and r["kind"] == "federated"
    }
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in long:
        groups[(row["kind"], row["method"], row["metric"])].append(row)
    summaries = []
    for (kind, method, metric), rows in groups.items():
        judged = summarise_verdicts(rows) if "verdict" in rows[0] else None
        values = np.array([r["value"] for r in rows], dtype=np.float64)
        deltas = np.array(
            [
                r["value"] - reference[(r["targets"], r["seed"], metric)]
                for r in rows
                if (r["targets"], r["seed"], metric) in reference
            ],
            dtype=np.float64,
        )
        use_delta = not metric.startswith("cost_") and len(deltas) > 0
        low = high = None
        if use_delta and len(deltas) > 1:
            half = t_quantile_975(len(deltas) - 1) * deltas.std(ddof=1) / math.sqrt(len(deltas))
            low, high = float(deltas.mean() - half), float(deltas.mean() + half)
        summaries.append(
            Summary(
                kind=kind,
                method=method,
                metric=metric,
                n=len(values),
                mean=float(values.mean()),
                std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                delta_mean=float(deltas.mean()) if use_delta else None,
                delta_ci_low=low,
                delta_ci_high=high,
                gap_mean=float(np.abs(deltas).mean()) if use_delta else None,
                forget_size=float(np.mean([r["forget_size"] or 0 for r in rows])),
                **_verdict_fields(judged),
                machines=" | ".join(sorted({r.get("machine", "") for r in rows} - {""})),
            )
        )
    order = {"federated": 0, "centralised": 1}
    return sorted(summaries, key=lambda s: (order.get(s.kind, 2), s.method, s.metric))


def _verdict_fields(judged: Verdict | str | None) -> dict[str, Any]:
    """The :class:`Summary` fields of a verdict (only ``verdict`` for a reason)."""
    if judged is None:
        return {}
    if isinstance(judged, str):
        return {"verdict": judged}
    return {
        "noise_gap": judged.gap,
        "noise_gap_ci_low": judged.gap_ci_low,
        "noise_gap_ci_high": judged.gap_ci_high,
        "noise_floor": judged.floor,
        "gap_floor": judged.gap_floor,
        "verdict": judged.verdict,
        "within_share": judged.within_share,
    }


def curve_rows(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each federated cell's test scores by rounds after the request."""
    out = []
    for cell in cells:
        for point in cell.get("curve", []):
            out.append(
                {
                    "method": cell["method"],
                    "targets": targets_key(cell),
                    "seed": cell["seed"],
                    **point,
                    "machine": machine(cell),
                }
            )
    return out


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_experiment_results(out_dir: Path, cells: Sequence[dict[str, Any]]) -> list[Summary]:
    """Write the long-format rows, the summary and the curves of ``cells``."""
    long = long_rows(cells)
    summaries = summarise(long)
    _write_csv(out_dir / LONG_CSV, long)
    (out_dir / LONG_JSON).write_text(json.dumps(long, indent=1, allow_nan=False))
    summary_rows = [asdict(s) for s in summaries]
    _write_csv(out_dir / SUMMARY_CSV, summary_rows)
    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary_rows, indent=1, allow_nan=False))
    _write_csv(out_dir / CURVES_CSV, curve_rows(cells))
    refused = [c for c in cells if c.get("status") != "ok"]
    (out_dir / REFUSED_JSON).write_text(
        json.dumps(
            [
                {
                    **{k: c.get(k) for k in ("kind", "method", "targets", "seed", "reason")},
                    "machine": machine(c),
                }
                for c in refused
            ],
            indent=1,
        )
    )
    (out_dir / PROVENANCE_JSON).write_text(json.dumps(provenance_counts(cells), indent=1))
    return summaries


def provenance_counts(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each distinct computing environment of ``cells`` with its number of cells."""
    counts: dict[str, int] = defaultdict(int)
    records: dict[str, dict[str, Any]] = {}
    for cell in cells:
        recorded = cell.get("provenance")
        key = json.dumps(recorded, sort_keys=True) if isinstance(recorded, dict) else "null"
        counts[key] += 1
        records[key] = recorded if isinstance(recorded, dict) else {}
    return [
        {
            "cells": counts[key],
            "label": provenance_label(records[key]) if records[key] else "not recorded",
            **records[key],
        }
        for key in sorted(counts, key=lambda k: -counts[k])
    ]
