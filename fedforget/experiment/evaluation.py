"""Rows: each model evaluated once, with every registry metric that applies (the row schema).

An :class:`Evaluator` serves one (target set, seed): it loads the data and the
forget set once, builds the retrained references and the original model once,
and gives each model one :class:`~fedforget.metrics.MetricContext`, so the
metrics share its outputs and each model runs once per split. The contexts
share one output cache in which the references' and the original's outputs
(and numbers derived from them, such as a reference's SVC-MIA) stay for every
row, so they too run once per split per Evaluator, not once per row; a
reference's or the original's own row reuses them (its arrays are recognised
by value). The same models on the same inputs give the same numbers, so the
values are those of a fresh context per row. A row carries
what the registry computed: the experiment's ``metrics`` (default: every
registered metric that applies to the task, the scenario and the models at
hand) and always the headline ones, which the tables and the recovery rule
read. All on test-time inputs (no augmentation).

A row is one model: ``method``, ``kind`` (``federated``, ``centralised`` or
``reference``), ``status`` (``ok``, or ``refused`` with a ``reason``),
``scenario``, ``forget_size``, ``targets``, ``seed``, the metric values,
``recovery_rounds``, ``recovered``, ``cost`` and, for a federated method's
run, ``unlearning_round``, ``update_norm`` and its recovery ``curve``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from fedforget.arrays import Arrays, same_arrays
from fedforget.config import ConfigError, FederationConfig
from fedforget.experiment.records import Cell, PhaseRecord
from fedforget.federated.federation import RunRecord
from fedforget.metrics import MetricContext, MetricOptions, Splits, evaluate_metrics
from fedforget.metrics.outputs import OutputCache
from fedforget.metrics.registry import METRICS, applicable_metrics
from fedforget.scenarios import ForgetSet, forget_set
from fedforget.task import model_with
from fedforget.training import resolve_device


def check_metrics(names: Sequence[str] | None) -> tuple[str, ...] | None:
    """The metrics an experiment names, checked against the registry (None: all that apply)."""
    if names is None:
        return None
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(
            f"unknown metric(s) {', '.join(unknown)}; registered metrics are {', '.join(METRICS)}"
        )
    return tuple(dict.fromkeys(names))


def test_score(row: dict[str, Any]) -> float:
    """The score the recovery rule compares: test accuracy, or test Dice with background."""
    return float(row["test_acc"] if "test_acc" in row else row["test_dice"])


class Evaluator:
    """The rows of one (target set, seed): each model's metrics against its references.

    Parameters
    ----------
    config : FederationConfig
        The run config of the (target set, seed).
    references : Sequence[Arrays]
        The retrained references 0..K-1 (a reference's own row is evaluated
        against the others; a lone reference against itself).
    original : Arrays | None
        The original model (metrics that need it are left out without it).
    metrics : Sequence[str] | None (default: None)
        The metrics to compute besides the headline ones; None: every
        registered metric that applies.

    """

    def __init__(
        self,
        config: FederationConfig,
        references: Sequence[Arrays],
        original: Arrays | None,
        metrics: Sequence[str] | None = None,
    ) -> None:
        from fedforget.data import load_federated_data

        self.config = config
        federated = load_federated_data(config)
        self.forget: ForgetSet = forget_set(config, federated)
        self.splits = Splits.from_forget_set(federated.data, self.forget)
        self.device = str(resolve_device(config.device))
        self.metrics = None if metrics is None else tuple(metrics)
        self.references = [model_with(config, r) for r in references]
        self.original = None if original is None else model_with(config, original)
        self._known = [*zip(references, self.references, strict=True)]
        if original is not None and self.original is not None:
            self._known.append((original, self.original))
        self.cache = OutputCache()
        """Outputs of the references and the original, kept for every row."""

    def module(self, model: nn.Module | Arrays) -> nn.Module:
        """``model`` as a module: a reference's or the original's own when its arrays are theirs."""
        if isinstance(model, nn.Module):
            return model
        for arrays, module in self._known:
            if arrays is model or same_arrays(arrays, model):
                return module
        return model_with(self.config, model)

    def context(self, model: nn.Module | Arrays, leave_out: int | None = None) -> MetricContext:
        """``model``'s context: every reference but ``leave_out``, the Evaluator's cache."""
        references = [r for i, r in enumerate(self.references) if i != leave_out]
        return MetricContext(
            unlearned=self.module(model),
            retrained=tuple(references or self.references),
            original=self.original,
            options=MetricOptions(seed=self.config.seed),
            device=self.device,
            cache=self.cache,
        )

    def _evaluate(self, context: MetricContext, names: Sequence[str]) -> dict[str, float]:
        """``names`` of ``context``; then its unlearned model leaves the cache (unless kept)."""
        try:
            return evaluate_metrics(context, self.splits, names)
        finally:
            if all(context.unlearned is not module for _, module in self._known):
                self.cache.release(context.unlearned)

    def values(self, model: nn.Module | Arrays, leave_out: int | None = None) -> dict[str, float]:
        """The registry metrics of ``model``, against every reference but ``leave_out``."""
        context = self.context(model, leave_out)
        chosen = [
            name
            for name in applicable_metrics(context, self.splits)
            if self.metrics is None or name in self.metrics or METRICS[name].info.headline
        ]
        return self._evaluate(context, chosen)

    def test_score(self, model: Arrays) -> float:
        """``model``'s test score alone (the recovery target when its row is not computed)."""
        name = "test_dice" if self.splits.task == "segmentation" else "test_acc"
        return self._evaluate(self.context(model), [name])[name]

    def _head(self, name: str, kind: str, status: str) -> dict[str, Any]:
        return {
            "method": name,
            "kind": kind,
            "status": status,
            "scenario": self.forget.scenario,
            "forget_size": len(self.forget.forget_index),
            "targets": list(self.forget.targets),
            "seed": self.config.seed,
        }

    def refused_row(self, name: str, reason: str, kind: str = "federated") -> dict[str, Any]:
        """The row of a method that could not serve the request, with the reason."""
        row = self._head(name, kind, "refused")
        del row["forget_size"]
        return {**row, "reason": reason}

    def model_row(
        self,
        name: str,
        model: nn.Module | Arrays,
        cost: dict[str, Any],
        kind: str = "federated",
        leave_out: int | None = None,
    ) -> dict[str, Any]:
        """One row: a model's metrics (evaluated once) and the cost of getting it."""
        started = time.monotonic()
        values = self.values(model, leave_out)
        return {
            **self._head(name, kind, "ok"),
            **values,
            "recovery_rounds": None,
            "recovered": None,
            "cost": {**cost, "eval_s": round(time.monotonic() - started, 2)},
        }

    def phase_row(
        self, name: str, phase: PhaseRecord, kind: str = "federated", reference: int | None = None
    ) -> dict[str, Any]:
        """The row of the original or of reference ``reference`` (against the others)."""
        return self.model_row(name, phase.arrays, phase.cost(), kind, leave_out=reference)

    def run_row(self, name: str, record: RunRecord, target_score: float) -> dict[str, Any]:
        """The row of a run that applied ``name``'s step after ``unlearn-at-round``.

        A continuous run (``fedforget run``) also holds the original's rounds:
        its cost counts from the request on.
        """
        request = self.config.unlearn_at_round
        phase = PhaseRecord.from_run(record)
        event = record.events[0]
        cost = {
            **phase.after(request).cost(request + 1),
            "step_rounds": event.server_round - event.first_round + 1,
            "server_storage_bytes": event.stored_bytes,
        }
        row = self.model_row(name, record.final_arrays, cost)
        row["recovery_rounds"] = record.last_round - request
        row["recovered"] = bool(test_score(row) >= target_score)
        row["unlearning_round"] = event.first_round
        row["update_norm"] = event.update_norm
        row["curve"] = phase.curve(request)
        return row

    def cell_row(self, cell: Cell, target_score: float) -> dict[str, Any]:
        """The row of a federated method's cell: after recovery, or the refusal."""
        if cell.record is None:
            return self.refused_row(cell.method, cell.reason)
        return self.run_row(cell.method, cell.record, target_score)
