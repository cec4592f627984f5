"""FedAU: mix the classifier head with one trained on random labels (registry name ``fedau``).

Gu et al., "Unlearning during Learning: An Efficient Federated Machine
Unlearning Method", IJCAI 2024 (arXiv 2405.15474). One round:

* each target receives the global model ``w`` and, with every layer but the
  classifier head (the last ``nn.Linear``) frozen, trains the head for
  ``epochs`` (10) with SGD at ``lr`` (0.1) on its own data relabelled at
  random; the returned head is its auxiliary head;
* the server mixes the heads, ``alpha`` = ``original-weight`` (0.04)::

      W_head' = alpha * W_orig + (1 - alpha) * W_aux
      W_aux   = sum_{u in U} (n_u / sum_{v in U} n_v) * W_u      (the targets' returned heads)

  and keeps every other array of ``w``.

Random labels are drawn uniformly from the classes other than the true one,
so that no example is ever trained towards its own label: the auxiliary head
holds the targets' data with every association to its classes broken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedforget.arrays import Arrays, weighted_sum
from fedforget.methods.base import (
    ClientData,
    ClientUpdate,
    ConfigValue,
    Needs,
    RoundPlan,
    StepResult,
    TargetStepMethod,
    UnlearningStep,
    target_updates,
    weights_by_examples,
)
from fedforget.models import head_keys
from fedforget.training import train


def random_other_labels(y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A label for every example, uniform over the ``num_classes - 1`` classes it is not."""
    generator = torch.Generator().manual_seed(seed)
    offset = torch.randint(1, num_classes, y.shape, generator=generator)
    return (y + offset) % num_classes


def train_auxiliary_head(
    model: nn.Module,
    data: ClientData,
    settings: Mapping[str, ConfigValue],
    extra: Mapping[str, dict[str, torch.Tensor]],
    seed: int,
) -> float:
    """FedAU's client step: train only the head of ``model`` on randomly relabelled data.

    Labels are drawn once (seeded by ``seed``) and kept for every epoch; the
    mini-batch order is seeded too (:func:`fedforget.training.train`). The
    frozen layers' parameters do not move; BatchNorm statistics of the
    backbone may, in train mode, but the server only takes the head.

    Returns
    -------
    float
        The mean cross-entropy over all mini-batches, against the random labels.

    """
    del extra
    head = set(head_keys(model))
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in head)
    try:
        return train(
            model,
            data.x,
            random_other_labels(data.y, data.num_classes, seed),
            epochs=int(settings["epochs"]),
            batch_size=data.batch_size,
            lr=float(settings["lr"]),
            seed=seed,
            task=data.task,
            device=data.device,
        )
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(frozen[name])


def mixed_head(
    global_arrays: Arrays, targets: Sequence[ClientUpdate], head: Sequence[str], alpha: float
) -> Arrays:
    """``global_arrays`` with the head ``alpha * W_orig + (1 - alpha) * W_aux``, all else kept.

    ``W_aux`` is the example-weighted mean of the targets' returned heads;
    since each update is ``W_u - W_orig``, the mix is
    ``W_orig + (1 - alpha) * sum_u p_u (W_u - W_orig)``.
    """
    terms = [((1.0 - alpha) * p, u.delta) for p, u in weights_by_examples(targets)]
    return weighted_sum(global_arrays, terms, keys=head)


class FedAU(TargetStepMethod):
    """The targets train an auxiliary head on random labels; the global head becomes a mix."""

    name = "fedau"
    table = "fedau"
    limits: ClassVar[Mapping[str, float]] = {"epochs": 100, "lr": 1e6, "original-weight": 1.0}
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "epochs": 10,
        "lr": 0.1,
        "original-weight": 0.04,
    }
    needs = Needs(
        target_online=True,
        client_step="they train the classifier head on their data with random labels",
        tasks=("classification",),
    )
    reference = (
        "Gu et al., Unlearning during Learning: An Efficient Federated Machine Unlearning "
        "Method, IJCAI 2024, arXiv 2405.15474"
    )
    summary = "mix the head with one the targets train on random labels (0.04 W + 0.96 W_aux)"
    client_step = staticmethod(train_auxiliary_head)

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """At least one epoch, a positive finite lr, an original weight in [0, 1]."""
        epochs, lr, alpha = settings["epochs"], settings["lr"], settings["original-weight"]
        if not (isinstance(epochs, int) and epochs >= 1):
            return f"fedau.epochs must be an integer >= 1, got {epochs!r}"
        if not (isinstance(lr, int | float) and lr > 0 and np.isfinite(lr)):
            return f"fedau.lr must be a finite number > 0, got {lr!r}"
        if not (isinstance(alpha, int | float) and 0.0 <= alpha <= 1.0):
            return f"fedau.original-weight must be in [0, 1], got {alpha!r}"
        return ""

    def refusal(self, targets: Sequence[str], settings: Mapping[str, ConfigValue]) -> str:
        """The model must end in a linear classifier head."""
        if not self.context.head_keys:
            return "fedau replaces the linear classifier head, and this model has none"
        return ""

    def apply(
        self,
        step: UnlearningStep,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """The global model with its head mixed with the targets' auxiliary heads."""
        targets = target_updates(step, updates)
        alpha = float(step.settings["original-weight"])
        return StepResult(mixed_head(global_arrays, targets, self.context.head_keys, alpha))
