"""The headline evaluation of one model: :func:`evaluate_unlearning` and its dataclasses.

Four numbers per model (test, forget and retain accuracy or Dice, Yeom's MIA)
plus the test loss, computed through the registry, for code that wants one
model's headline as a typed value. The headline is the registry's
(``MetricInfo.headline``); the experiment rows, the tables and the report read
the registry directly (:mod:`fedforget.experiment.evaluation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedforget.metrics.base import SCENARIOS, MetricContext, Splits
from fedforget.metrics.registry import METRICS, evaluate_metrics, metric_info

if TYPE_CHECKING:
    from fedforget.data import FederatedData, SplitDataset
    from fedforget.scenarios import ForgetSet


def _headline(task: str, every_scenario: bool) -> tuple[str, ...]:
    """The registry's headline metrics of ``task`` (of every scenario, or scenario-specific)."""
    return tuple(
        name
        for name, metric in METRICS.items()
        if metric.info.headline
        and task in metric.info.tasks
        and (set(metric.info.scenarios) == set(SCENARIOS)) == every_scenario
    )


METRIC_NAMES = _headline("classification", every_scenario=True)
"""The classification headline (``test_acc``, ``forget_acc``, ``retain_acc``, ``mia_yeom``)."""
SEGMENTATION_METRIC_NAMES = _headline("segmentation", every_scenario=True)
"""The segmentation headline: Dice with background, ``mia_yeom``, Dice of the foreground."""
SCENARIO_METRIC_NAMES = tuple(
    dict.fromkeys((*_headline("classification", False), *_headline("segmentation", False)))
)
"""Metrics a scenario adds to the headline where they apply (the backdoor's attack success)."""


def metric_names(values: Mapping[str, object]) -> tuple[str, ...]:
    """The headline metric names of a task, recognised from one method's values."""
    return SEGMENTATION_METRIC_NAMES if "test_dice" in values else METRIC_NAMES


@dataclass(frozen=True)
class UnlearningMetrics:
    """One model's standard unlearning evaluation (accuracies as fractions)."""

    test_acc: float
    forget_acc: float
    retain_acc: float
    mia_yeom: float
    test_loss: float

    def as_dict(self) -> dict[str, float]:
        """The metrics as a plain dict."""
        return asdict(self)

    @property
    def test_score(self) -> float:
        """The score the recovery rule compares: test accuracy."""
        return self.test_acc


@dataclass(frozen=True)
class SegmentationUnlearningMetrics:
    """One segmentation model's unlearning evaluation (Dice with and without background)."""

    test_dice: float
    forget_dice: float
    retain_dice: float
    mia_yeom: float
    test_loss: float
    test_dice_fg: float
    forget_dice_fg: float
    retain_dice_fg: float

    def as_dict(self) -> dict[str, float]:
        """The metrics as a plain dict."""
        return asdict(self)

    @property
    def test_score(self) -> float:
        """The score the recovery rule compares: test Dice with background (the papers')."""
        return self.test_dice


def headline_metrics(
    model: nn.Module, splits: Splits, device: torch.device | str = "cpu"
) -> UnlearningMetrics | SegmentationUnlearningMetrics:
    """``model``'s headline metrics on ``splits`` (test-time inputs)."""
    context = MetricContext(unlearned=model, device=str(device))
    if splits.task == "segmentation":
        names = (*SEGMENTATION_METRIC_NAMES, "test_loss")
        return SegmentationUnlearningMetrics(**evaluate_metrics(context, splits, names))
    return UnlearningMetrics(**evaluate_metrics(context, splits, (*METRIC_NAMES, "test_loss")))


def evaluate_forget_set(
    model: nn.Module,
    data: SplitDataset,
    forget: ForgetSet,
    device: torch.device | str = "cpu",
) -> UnlearningMetrics | SegmentationUnlearningMetrics:
    """Headline metrics for forgetting a scenario's :class:`~fedforget.scenarios.ForgetSet`."""
    return headline_metrics(model, Splits.from_forget_set(data, forget), device)


def scenario_metrics(
    model: nn.Module,
    data: SplitDataset,
    forget: ForgetSet,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The :data:`SCENARIO_METRIC_NAMES` that apply to the scenario (``{}`` for most)."""
    splits = Splits.from_forget_set(data, forget)
    context = MetricContext(unlearned=model, device=str(device))
    names = [n for n in SCENARIO_METRIC_NAMES if not metric_info(n).missing(context, splits)]
    return evaluate_metrics(context, splits, names)


def evaluate_unlearning(
    model: nn.Module,
    federated: FederatedData,
    forgotten: tuple[str, ...],
    excluded: tuple[str, ...] = (),
    device: torch.device | str = "cpu",
) -> UnlearningMetrics | SegmentationUnlearningMetrics:
    """Evaluate ``model`` for forgetting clients ``forgotten`` (test-time inputs, no augmentation).

    Forget data = the forgotten clients' whole training data; retain data = the
    training data of every other client that is not excluded. Classification
    gives :class:`UnlearningMetrics`, segmentation
    :class:`SegmentationUnlearningMetrics`.
    """
    from fedforget.scenarios import ForgetSet

    retain_ids = [c for c in federated.client_ids() if c not in set(forgotten) | set(excluded)]
    forget = ForgetSet(
        "client",
        federated.client_indices(forgotten),
        federated.client_indices(retain_ids),
        targets=tuple(forgotten),
    )
    return evaluate_forget_set(model, federated.data, forget, device)
