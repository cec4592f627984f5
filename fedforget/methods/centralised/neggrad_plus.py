"""NegGrad+: descent on the retain loss and ascent on the forget loss (``neggrad-plus``).

From the original weights, every SGD step pairs a retain mini-batch ``B_r``
with a forget mini-batch ``B_f`` (the forget set is cycled, reshuffled on
every pass) and descends

    alpha * L(w; B_r) - (1 - alpha) * L(w; B_f),

``L`` the mean cross-entropy of a batch: the retain term keeps the model
useful while the negated forget term pushes the forget examples out. The
loop makes ``epochs`` passes over the retain set.

Kurmanji et al., Towards Unbounded Machine Unlearning, NeurIPS 2023,
arXiv 2302.09880 (NegGrad+, introduced there as a strong baseline beside
SCRUB). Cost: ``epochs`` over the retain set, and the forget examples drawn
(``epochs x |D_r| / |D_f|`` passes when batches are full).
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
from fedforget.methods.space import IntRange, LogUniform, SearchSpace, Uniform


class NegGradPlus(CentralisedMethod):
    """Minimise ``alpha * L_retain - (1 - alpha) * L_forget`` over paired mini-batches."""

    name = "neggrad-plus"
    limits: ClassVar[Mapping[str, float]] = {
        "epochs": 1000,
        "lr": 1e6,
        "batch-size": 65536,
        "momentum": 1.0,
        "weight-decay": 10.0,
        "alpha": 1.0,
    }
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "epochs": 2,
        "lr": 0.01,
        "batch-size": 32,
        "momentum": 0.9,
        "weight-decay": 5e-4,
        "alpha": 0.99,
    }
    """``alpha`` weighs the retain descent, ``1 - alpha`` the forget ascent.

    0.99 and 2 epochs: on the digits CNN, forgetting a class drives its
    accuracy to 0 with retain accuracy 0.97; 0.95 lets the unbounded ascent
    term collapse the model (retain accuracy 0.11), 0.999 forgets nothing.
    """
    space: ClassVar[SearchSpace] = {
        "lr": LogUniform(1e-3, 0.1),
        "epochs": IntRange(1, 5),
        "alpha": Uniform(0.5, 0.999),
    }
    tasks = ("classification", "segmentation")
    reference = (
        "Kurmanji et al., Towards Unbounded Machine Unlearning, NeurIPS 2023, arXiv 2302.09880"
    )
    summary = "descent on retain batches plus weighted ascent on forget batches"

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Positive lr, whole epochs and batch size >= 1, alpha and momentum in [0, 1)."""
        return range_problem(
            cls.table,
            settings,
            positive=("lr",),
            non_negative=("weight-decay",),
            at_least_one=("epochs", "batch-size"),
            below_one=("alpha", "momentum"),
        )

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """``epochs`` passes over the retain set, each step with a forget batch beside it."""
        require_nonempty(data, forget=True, retain=True)
        model = start(original, data)
        order, _ = generators(data.seed)
        batch_size = int(settings["batch-size"])
        retain = BatchCycle(data.retain_x, data.retain_y, batch_size, order, device=data.device)
        forget = BatchCycle(data.forget_x, data.forget_y, batch_size, order, device=data.device)
        alpha = float(settings["alpha"])
        loss = task_loss(data.task)

        def descent_ascent(
            model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
        ) -> torch.Tensor:
            forget_inputs, forget_targets = next(forget)
            return alpha * loss(model, inputs, targets) - (1 - alpha) * loss(
                model, forget_inputs, forget_targets
            )

        spent = run_epochs(
            model,
            retain,
            descent_ascent,
            sgd(model.parameters(), settings),
            epochs=int(settings["epochs"]),
        )
        return CentralisedOutcome(
            hand_back(model), forget_epochs=forget.epochs, retain_epochs=spent
        )
