"""RL: random labels on the forget set, trained together with the retain set (``rl``).

Every forget example gets a wrong label drawn uniformly from the other
classes, once per run:

    y~ = (y + k) mod C,   k ~ Uniform{1, ..., C - 1},

so ``y~ != y`` always (SalUn's code draws from all C classes, which keeps
the true label for 1 / C of the examples). Then ``epochs`` passes of
mini-batch SGD from the original weights on the union

    D_f~ + D_r (union),  loss = mean CE over each mini-batch of the shuffled union,

which overwrites what the model learnt about the forget examples while the
retain examples hold the rest in place. With ``augment`` the inputs go
through TrivialAugmentWide, a random crop and a horizontal flip.

Golatkar et al., Eternal Sunshine of the Spotless Net: Selective Forgetting
in Deep Networks, CVPR 2020, arXiv 1911.04933 (as cited by SalUn for RL;
relabelling goes back to Graves et al., Amnesiac Machine Learning, AAAI
2021, arXiv 2010.10981). Cost: ``epochs`` over both the forget and the
retain set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    augmentation_for,
    generators,
    hand_back,
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

LABEL_SEED_OFFSET = 2
"""Random labels draw from a generator seeded ``data.seed + 2`` (order: +0, augmentation: +1)."""


def random_wrong_labels(
    labels: torch.Tensor, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """A label other than the true one for every example, uniform over the other classes."""
    if num_classes < 2:
        raise ValueError(f"random wrong labels need at least 2 classes, got {num_classes}")
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels.cpu() + shift) % num_classes


def relabelled_union(data: UnlearningData) -> tuple[torch.Tensor, torch.Tensor]:
    """The forget examples with random wrong labels, followed by the retain examples."""
    generator = torch.Generator().manual_seed(data.seed + LABEL_SEED_OFFSET)
    wrong = random_wrong_labels(data.forget_y, data.num_classes, generator)
    x = torch.cat([data.forget_x, data.retain_x])
    y = torch.cat([wrong.to(data.retain_y.dtype), data.retain_y.cpu()])
    return x, y


def train_on_random_labels(
    model: nn.Module,
    data: UnlearningData,
    settings: Mapping[str, ConfigValue],
    *,
    optimiser: torch.optim.Optimizer,
    after_step: Callable[[], None] | None = None,
) -> float:
    """``epochs`` passes over the relabelled union (RL's loop, SalUn's too); the epochs spent."""
    x, y = relabelled_union(data)
    order, augment = generators(data.seed)
    union = BatchCycle(
        x,
        y,
        int(settings["batch-size"]),
        order,
        device=data.device,
        augmentation=augmentation_for(data, settings),
        augment_generator=augment,
    )
    return run_epochs(
        model,
        union,
        task_loss(data.task),
        optimiser,
        epochs=int(settings["epochs"]),
        after_step=after_step,
    )


class RandomLabels(CentralisedMethod):
    """Fine-tune on the forget set with wrong labels together with the retain set."""

    name = "rl"
    limits: ClassVar[Mapping[str, float]] = FINE_TUNING_LIMITS
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        **FINE_TUNING_DEFAULTS,
        "epochs": 3,
        "augment": False,
    }
    space: ClassVar[SearchSpace] = {"lr": LogUniform(1e-3, 0.1), "epochs": IntRange(1, 10)}
    reference = (
        "Golatkar et al., Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep "
        "Networks, CVPR 2020, arXiv 1911.04933"
    )
    summary = "train on forget examples relabelled to random wrong classes, plus the retain set"

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Positive lr, epochs and batch size >= 1, momentum in [0, 1), weight decay >= 0."""
        return fine_tuning_problem(cls.table, settings)

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """Relabel the forget set, then train on it and the retain set for ``epochs`` passes."""
        require_nonempty(data, forget=True)
        model = start(original, data)
        spent = train_on_random_labels(
            model, data, settings, optimiser=sgd(model.parameters(), settings)
        )
        return CentralisedOutcome(hand_back(model), forget_epochs=spent, retain_epochs=spent)
