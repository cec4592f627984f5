"""FT: fine-tune the original model on the retain set (registry name ``ft``).

Starting from the original weights ``w_0``, ``epochs`` passes of mini-batch
SGD (momentum, weight decay) on the retain loss

    L_r(w) = (1/|D_r|) sum_{(x, y) in D_r} loss(f_w(x), y),

relying on catastrophic forgetting to wash the forget set out. With
``augment`` the retain inputs go through TrivialAugmentWide, a random crop
and a horizontal flip (:mod:`fedforget.methods.centralised.augment`).

Warnecke et al., Machine Unlearning of Features and Labels, NDSS 2023,
arXiv 2108.11577 (as the fine-tuning baseline of Jia et al. 2023 and SalUn).
Cost: ``epochs`` over the retain set, none over the forget set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import nn

from fedforget.methods.base import ConfigValue
from fedforget.methods.centralised.base import (
    CentralisedMethod,
    CentralisedOutcome,
    UnlearningData,
)
from fedforget.methods.centralised.common import (
    BatchCycle,
    augmentation_for,
    generators,
    hand_back,
    range_problem,
    require_nonempty,
    run_epochs,
    sgd,
    start,
    task_loss,
)
from fedforget.methods.space import IntRange, LogUniform, SearchSpace

FINE_TUNING_DEFAULTS: Mapping[str, ConfigValue] = {
    "epochs": 5,
    "lr": 0.01,
    "batch-size": 32,
    "momentum": 0.9,
    "weight-decay": 5e-4,
}
"""SGD with momentum 0.9 and weight decay 5e-4, lr 0.01 (Jia et al.'s FT recipe), 5 epochs."""
FINE_TUNING_LIMITS: Mapping[str, float] = {
    "epochs": 1000,
    "lr": 1e6,
    "batch-size": 65536,
    "momentum": 1.0,
    "weight-decay": 10.0,
}
"""Upper bounds of the fine-tuning settings."""


def fine_tuning_problem(table: str, settings: Mapping[str, ConfigValue]) -> str:
    """Range checks of the fine-tuning settings (lr > 0, momentum in [0, 1), ...)."""
    return range_problem(
        table,
        settings,
        positive=("lr",),
        non_negative=("weight-decay",),
        at_least_one=("epochs", "batch-size"),
        below_one=("momentum",),
    )


class FineTune(CentralisedMethod):
    """SGD on the retain set from the original weights."""

    name = "ft"
    limits: ClassVar[Mapping[str, float]] = FINE_TUNING_LIMITS
    defaults: ClassVar[Mapping[str, ConfigValue]] = {**FINE_TUNING_DEFAULTS, "augment": False}
    space: ClassVar[SearchSpace] = {"lr": LogUniform(1e-3, 0.1), "epochs": IntRange(1, 10)}
    tasks = ("classification", "segmentation")
    reference = (
        "Warnecke et al., Machine Unlearning of Features and Labels, NDSS 2023, arXiv 2108.11577"
    )
    summary = "fine-tune the original model on the retain set (catastrophic forgetting)"

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Positive lr, epochs and batch size >= 1, momentum in [0, 1), weight decay >= 0."""
        return fine_tuning_problem(cls.table, settings)

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """Minimise the retain loss for ``epochs`` passes."""
        require_nonempty(data, retain=True)
        model = start(original, data)
        order, augment = generators(data.seed)
        retain = BatchCycle(
            data.retain_x,
            data.retain_y,
            int(settings["batch-size"]),
            order,
            device=data.device,
            augmentation=augmentation_for(data, settings),
            augment_generator=augment,
        )
        spent = run_epochs(
            model,
            retain,
            task_loss(data.task),
            sgd(model.parameters(), settings),
            epochs=int(settings["epochs"]),
        )
        return CentralisedOutcome(hand_back(model), forget_epochs=0.0, retain_epochs=spent)
