"""The retraining noise floor, and whether a method can be told apart from retraining.

K retrained references are trained per (target set, seed) on the same data,
each with its own training seed (``references = K``). For every metric they
have, per (target set, seed):

* **floor**: the largest pairwise difference among the K references' values
  (their range). For a distance to the references (KL, JS, Average Gap: each
  reference is measured against the other references), the largest value a
  reference takes;
* **gap** of a model: ``|value - mean of the references' values|``; for a
  distance, the value itself;
* **verdict**: ``within retraining noise`` when gap <= floor, else ``differs``.

Over the target sets and seeds, a (kind, method, metric) gets the mean gap with
its 95 % confidence interval (Student t), the mean floor, gap / floor and the
verdict of the means (``within retraining noise`` when the mean gap is at most
the mean floor), and the share of (target set, seed) cells within their floor.
With one reference there is no floor: the verdict is ``needs references >= 2``.
A reference's offline U-LiRA is fit on the other references, so that metric's
floor needs three.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WITHIN = "within retraining noise"
DIFFERS = "differs"
NEEDS_REFERENCES = "needs references >= 2"
NEEDS_MORE_FOR_ULIRA = "needs references >= 3 (a reference's U-LiRA is fit on the others)"
REFERENCE = "retrain"
"""The row of reference 0 (kind ``federated``): the retrained model every table compares with."""
REFERENCE_KIND = "reference"
"""The kind of the rows of references 1..K-1."""
DISTANCE_PREFIXES = ("kl_", "js_", "avg_gap")
"""Metrics that are distances to the references (ideal 0): their gap is their value."""


def reference_name(index: int) -> str:
    """The row name of reference ``index``: ``retrain``, then ``retrain-1``, ``retrain-2``..."""
    return REFERENCE if index == 0 else f"{REFERENCE}-{index}"


def is_reference(row: dict[str, Any]) -> bool:
    """Whether a row is one of the retrained references (``retrain`` or ``retrain-k``)."""
    return row.get("kind") == REFERENCE_KIND or (
        row.get("method") == REFERENCE and row.get("kind", "federated") == "federated"
    )


def is_distance(metric: str) -> bool:
    """Whether ``metric`` is a distance to the references (KL, JS, Average Gap)."""
    return metric.startswith(DISTANCE_PREFIXES)


@dataclass(frozen=True)
class Floor:
    """One (target set, seed, metric): the references' values and their spread.

    ``floor`` is None with the ``reason`` when the references cannot give one.
    """

    references: int
    values: tuple[float, ...]
    floor: float | None
    reason: str = ""

    @property
    def centre(self) -> float:
        """The references' mean value (a gap is measured from it)."""
        return float(np.mean(self.values))


def floor_of(metric: str, values: Sequence[float], references: int) -> Floor:
    """The floor of ``metric`` from the values the ``references`` references have."""
    kept = tuple(float(v) for v in values)
    if references < 2:
        return Floor(references, kept, None, NEEDS_REFERENCES)
    if len(kept) < 2:
        reason = NEEDS_MORE_FOR_ULIRA if metric.startswith("ulira") else NEEDS_REFERENCES
        return Floor(references, kept, None, reason)
    spread = max(kept) if is_distance(metric) else max(kept) - min(kept)
    return Floor(references, kept, float(spread))


def gap_to(metric: str, value: float, floor: Floor) -> float:
    """A value's gap to the references: ``|value - their mean|``, or the distance itself."""
    return float(value) if is_distance(metric) else abs(float(value) - floor.centre)


def verdict(gap: float, floor: float) -> str:
    """``within retraining noise`` when ``gap <= floor``, else ``differs``."""
    return WITHIN if gap <= floor else DIFFERS


def floors(long: Sequence[dict[str, Any]]) -> dict[tuple[str, int, str], Floor]:
    """The floor of every (target set, seed, metric) the references have (not costs)."""
    references: dict[tuple[str, int], set[str]] = defaultdict(set)
    values: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for row in long:
        if is_reference(row):
            references[(row["targets"], row["seed"])].add(row["method"])
            if not row["metric"].startswith("cost_"):
                values[(row["targets"], row["seed"], row["metric"])].append(row["value"])
    return {
        key: floor_of(key[2], found, len(references[(key[0], key[1])]))
        for key, found in values.items()
    }


def with_verdicts(long: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long rows with ``floor``, ``gap``, ``gap_floor`` and ``verdict`` where they apply.

    A metric the references do not have (a cost, recovery rounds) gets none;
    with one reference, ``gap`` is the distance to it and ``verdict`` says
    what the floor needs.
    """
    table = floors(long)
    out = []
    for row in long:
        floor = table.get((row["targets"], row["seed"], row["metric"]))
        if floor is None or not floor.values:
            out.append({**row, "floor": None, "gap": None, "gap_floor": None, "verdict": ""})
            continue
        gap = gap_to(row["metric"], row["value"], floor)
        if floor.floor is None:
            reason = floor.reason
            out.append({**row, "floor": None, "gap": gap, "gap_floor": None, "verdict": reason})
            continue
        out.append(
            {
                **row,
                "floor": floor.floor,
                "gap": gap,
                "gap_floor": _ratio(gap, floor.floor),
                "verdict": verdict(gap, floor.floor),
            }
        )
    return out


@dataclass(frozen=True)
class Verdict:
    """One (kind, method, metric) over its target sets and seeds."""

    n: int
    gap: float
    gap_ci_low: float | None
    gap_ci_high: float | None
    floor: float
    gap_floor: float | None
    verdict: str
    within_share: float


def summarise_verdicts(rows: Sequence[dict[str, Any]]) -> Verdict | str | None:
    """The verdict of one (kind, method, metric) from its rows of :func:`with_verdicts`.

    A reason (str) when no row has a floor; None when the metric has no
    verdict at all (a cost).
    """
    judged = [r for r in rows if r["floor"] is not None]
    if not judged:
        reasons = [r["verdict"] for r in rows if r["verdict"]]
        return reasons[0] if reasons else None
    gaps = np.array([r["gap"] for r in judged], dtype=np.float64)
    floor = float(np.mean([r["floor"] for r in judged]))
    low = high = None
    if len(gaps) > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, len(gaps) - 1)) * gaps.std(ddof=1) / math.sqrt(len(gaps))
        low, high = float(gaps.mean() - half), float(gaps.mean() + half)
    gap = float(gaps.mean())
    return Verdict(
        n=len(judged),
        gap=gap,
        gap_ci_low=low,
        gap_ci_high=high,
        floor=floor,
        gap_floor=_ratio(gap, floor),
        verdict=verdict(gap, floor),
        within_share=float(np.mean([r["verdict"] == WITHIN for r in judged])),
    )


def _ratio(gap: float, floor: float) -> float | None:
    """``gap / floor`` (0 for a gap of 0; None for a positive gap over a floor of 0)."""
    if floor > 0:
        return gap / floor
    return 0.0 if gap == 0 else None
