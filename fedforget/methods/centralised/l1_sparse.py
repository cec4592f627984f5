"""l1-sparse: fine-tuning on the retain set with a decaying l1 penalty (``l1-sparse``).

From the original weights, SGD on the retain loss plus an l1 norm of all
parameters, whose coefficient decays linearly to zero over the first
``epochs - no-l1-epochs`` epochs; the last ``no-l1-epochs`` fine-tune without
it (Jia et al.'s code, ``FT_l1`` with its linear schedule):

    L_t(w) = L_r(w) + gamma_t * ||w||_1,
    gamma_t = l1-coefficient * (1 - t / T)   for epoch t < T = epochs - no-l1-epochs,
    gamma_t = 0                              afterwards,

``t = 0, 1, ...`` the epoch index. The penalty drives weights towards zero
(model sparsity), which the paper shows narrows the gap between approximate
unlearning and retraining.

Jia et al., Model Sparsity Can Simplify Machine Unlearning, NeurIPS 2023,
arXiv 2304.04934. Cost: ``epochs`` over the retain set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from fedforget.methods.base import ConfigValue
from fedforget.methods.centralised.base import (
    CentralisedMethod,
    CentralisedOutcome,
    UnlearningData,
)
from fedforget.methods.centralised.common import (
    BatchCycle,
    generators,
    hand_back,
    range_problem,
    require_nonempty,
    run_epochs,
    sgd,
    start,
    task_loss,
)
from fedforget.methods.centralised.finetune import (
    FINE_TUNING_DEFAULTS,
    FINE_TUNING_LIMITS,
    fine_tuning_problem,
)
from fedforget.methods.space import IntRange, LogUniform, SearchSpace


def l1_coefficient(epoch: int, epochs: int, no_l1_epochs: int, coefficient: float) -> float:
    """``gamma_t``: linear decay from ``coefficient`` at epoch 0, zero for the last epochs."""
    decay_epochs = epochs - no_l1_epochs
    if epoch >= decay_epochs:
        return 0.0
    return coefficient * (1.0 - epoch / decay_epochs)


def l1_norm(model: nn.Module) -> torch.Tensor:
    """``||w||_1`` over every parameter of ``model``."""
    return torch.stack([p.abs().sum() for p in model.parameters()]).sum()


class L1Sparse(CentralisedMethod):
    """Fine-tune on the retain set with ``gamma_t ||w||_1`` added, ``gamma_t`` decaying."""

    name = "l1-sparse"
    limits: ClassVar[Mapping[str, float]] = {
        **FINE_TUNING_LIMITS,
        "l1-coefficient": 10.0,
        "no-l1-epochs": 1000,
    }
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        **FINE_TUNING_DEFAULTS,
        "l1-coefficient": 5e-4,
        "no-l1-epochs": 1,
    }
    """``l1-coefficient`` 5e-4 (the paper's gamma), the last epoch without the penalty."""
    space: ClassVar[SearchSpace] = {
        "lr": LogUniform(1e-3, 0.1),
        "epochs": IntRange(2, 10),
        "l1-coefficient": LogUniform(1e-5, 1e-2),
    }
    tasks = ("classification", "segmentation")
    reference = (
        "Jia et al., Model Sparsity Can Simplify Machine Unlearning, NeurIPS 2023, arXiv 2304.04934"
    )
    summary = "fine-tune on the retain set with a linearly decaying l1 penalty on the weights"

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """The fine-tuning ranges, l1-coefficient >= 0, 0 <= no-l1-epochs < epochs."""
        problem = fine_tuning_problem(cls.table, settings) or range_problem(
            cls.table, settings, non_negative=("l1-coefficient", "no-l1-epochs")
        )
        if problem:
            return problem
        if not int(settings["no-l1-epochs"]) < int(settings["epochs"]):
            return (
                f"{cls.table}.no-l1-epochs must be below epochs ({settings['epochs']}) so that "
                f"some epoch carries the l1 penalty, got {settings['no-l1-epochs']!r}"
            )
        return ""

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """``epochs`` passes over the retain set, epoch ``t`` with penalty ``gamma_t``."""
        require_nonempty(data, retain=True)
        model = start(original, data)
        order, _ = generators(data.seed)
        retain = BatchCycle(
            data.retain_x, data.retain_y, int(settings["batch-size"]), order, device=data.device
        )
        optimiser = sgd(model.parameters(), settings)
        loss = task_loss(data.task)
        epochs = int(settings["epochs"])
        spent = 0.0
        for epoch in range(epochs):
            gamma = l1_coefficient(
                epoch, epochs, int(settings["no-l1-epochs"]), float(settings["l1-coefficient"])
            )

            def penalised(
                model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, gamma: float = gamma
            ) -> torch.Tensor:
                penalty = gamma * l1_norm(model) if gamma else 0.0
                return loss(model, inputs, targets) + penalty

            spent += run_epochs(model, retain, penalised, optimiser, epochs=1)
        return CentralisedOutcome(hand_back(model), forget_epochs=0.0, retain_epochs=spent)
