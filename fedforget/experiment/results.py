"""An experiment's results as data: long-format rows and aggregated tables.

* ``results-long.csv`` / ``results-long.json``: one row per (method, target
  set, seed, metric) with the forget-set size;
* ``summary.csv`` / ``summary.json``: per (kind, method, metric) the mean and
  standard deviation over target sets and seeds, the mean signed delta to the
  retrained reference of the same (target set, seed), its 95 % confidence
  interval (Student t over the paired deltas) and the mean absolute gap;
* ``curves.csv``: each federated cell's test score by round after the request.

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

LONG_CSV = "results-long.csv"
LONG_JSON = "results-long.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
CURVES_CSV = "curves.csv"
REFUSED_JSON = "refused.json"
REFERENCE = "retrain"
_NOT_METRICS = {"seed", "forget_size", "unlearning_round", "recovered"}


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


def targets_key(row: dict[str, Any]) -> str:
    """A row's target set as text (``"0+3"``; ``"scenario"`` for a class or random forget set)."""
    return "+".join(row.get("targets", [])) or "scenario"


def long_rows(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, target set, seed, metric) of the cells that ran ("ok")."""
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
                }
            )
    return out


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
            )
        )
    order = {"federated": 0, "centralised": 1}
    return sorted(summaries, key=lambda s: (order.get(s.kind, 2), s.method, s.metric))


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
                {k: c.get(k) for k in ("kind", "method", "targets", "seed", "reason")}
                for c in refused
            ],
            indent=1,
        )
    )
    return summaries
