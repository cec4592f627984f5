"""Unlearning metrics: scores on test / forget / retain data and Yeom's MIA.

The score is accuracy for classification and Dice for segmentation (with
background, the papers' number, and foreground only); Yeom's attack uses the
per-example training loss of either task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fedforget.data import FederatedData
from fedforget.training import per_example_metrics

METRIC_NAMES = ("test_acc", "forget_acc", "retain_acc", "mia_yeom")
SEGMENTATION_METRIC_NAMES = (
    "test_dice",
    "forget_dice",
    "retain_dice",
    "mia_yeom",
    "test_dice_fg",
    "forget_dice_fg",
    "retain_dice_fg",
)


def metric_names(values: Mapping[str, object]) -> tuple[str, ...]:
    """The headline metric names of a task, recognised from one method's values."""
    return SEGMENTATION_METRIC_NAMES if "test_dice" in values else METRIC_NAMES


def yeom_mia(forget_losses: NDArray[np.float64], retain_losses: NDArray[np.float64]) -> float:
    """Yeom et al.'s loss-threshold membership inference on the forget set.

    The threshold is the mean cross-entropy on the retain training data (known
    members); the score is the fraction of forget examples whose loss is at or
    below it, i.e. the fraction the attack calls "member". Lower after
    unlearning is better; the retrained model gives the reference value.
    """
    if len(forget_losses) == 0 or len(retain_losses) == 0:
        raise ValueError("Yeom MIA needs non-empty forget and retain sets")
    threshold = float(np.mean(retain_losses))
    return float(np.mean(forget_losses <= threshold))


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


def evaluate_unlearning(
    model: nn.Module,
    federated: FederatedData,
    forgotten: tuple[str, ...],
    excluded: tuple[str, ...] = (),
    device: torch.device | str = "cpu",
) -> UnlearningMetrics | SegmentationUnlearningMetrics:
    """Evaluate ``model`` for forgetting ``forgotten`` (test-time inputs, no augmentation).

    Forget data = the forgotten clients' whole training data; retain data = the
    training data of every other client that is not excluded. Classification
    gives :class:`UnlearningMetrics`, segmentation
    :class:`SegmentationUnlearningMetrics`.
    """
    data = federated.data
    retain_ids = [c for c in federated.client_ids() if c not in set(forgotten) | set(excluded)]
    forget_index = torch.from_numpy(federated.client_indices(forgotten))
    retain_index = torch.from_numpy(federated.client_indices(retain_ids))
    test = per_example_metrics(model, data.test_x, data.test_y, data.task, device)
    forget = per_example_metrics(
        model, data.train_x[forget_index], data.train_y[forget_index], data.task, device
    )
    retain = per_example_metrics(
        model, data.train_x[retain_index], data.train_y[retain_index], data.task, device
    )
    mia = yeom_mia(forget["loss"], retain["loss"])
    if data.task == "segmentation":
        return SegmentationUnlearningMetrics(
            test_dice=float(test["dice"].mean()),
            forget_dice=float(forget["dice"].mean()),
            retain_dice=float(retain["dice"].mean()),
            mia_yeom=mia,
            test_loss=float(test["loss"].mean()),
            test_dice_fg=float(test["dice_fg"].mean()),
            forget_dice_fg=float(forget["dice_fg"].mean()),
            retain_dice_fg=float(retain["dice_fg"].mean()),
        )
    return UnlearningMetrics(
        test_acc=float(test["correct"].mean()),
        forget_acc=float(forget["correct"].mean()),
        retain_acc=float(retain["correct"].mean()),
        mia_yeom=mia,
        test_loss=float(test["loss"].mean()),
    )
