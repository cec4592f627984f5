"""Unlearning metrics: accuracies on test / forget / retain data and Yeom's MIA."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from torch import nn

from fedforget.data import FederatedData
from fedforget.training import per_example_loss

METRIC_NAMES = ("test_acc", "forget_acc", "retain_acc", "mia_yeom")


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


def evaluate_unlearning(
    model: nn.Module, federated: FederatedData, forgotten: tuple[str, ...], excluded: tuple[str, ...] = ()
) -> UnlearningMetrics:
    """Evaluate ``model`` for forgetting ``forgotten`` (test-time inputs, no augmentation).

    Forget data = the forgotten clients' whole training data; retain data = the
    training data of every other client that is not excluded.
    """
    data = federated.data
    retain_ids = [c for c in federated.client_ids() if c not in set(forgotten) | set(excluded)]
    forget_index = federated.client_indices(forgotten)
    retain_index = federated.client_indices(retain_ids)
    test_losses, test_correct = per_example_loss(model, data.test_x, data.test_y)
    forget_losses, forget_correct = per_example_loss(
        model, data.train_x[forget_index], data.train_y[forget_index]
    )
    retain_losses, retain_correct = per_example_loss(
        model, data.train_x[retain_index], data.train_y[retain_index]
    )
    return UnlearningMetrics(
        test_acc=float(test_correct.mean()),
        forget_acc=float(forget_correct.mean()),
        retain_acc=float(retain_correct.mean()),
        mia_yeom=yeom_mia(forget_losses, retain_losses),
        test_loss=float(test_losses.mean()),
    )
