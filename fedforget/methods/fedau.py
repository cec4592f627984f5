"""FedAU: mix the classifier head with one trained on random labels (registry name ``fedau``).

Gu et al., "Unlearning during Learning: An Efficient Federated Machine
Unlearning Method", IJCAI 2024 (arXiv 2405.15474); checked against the PUF
authors' port (``alessiomora/puf_unlearning``, ``fedau_unlearning.py``, run
with ``fedau.epochs=10 fedau.coefficient=0.04``). One round:

* the server sends the targets the global model ``w`` with a fresh
  auxiliary head: the classifier head (the last ``nn.Linear``) re-drawn as
  in the port, weight ``N(0, 0.01^2)`` (standard deviation 0.01) and bias 0,
  under a seed derived from the run's seed and the step's first round
  (:func:`auxiliary_head_seed`);
* each target, with every layer but the head frozen, trains the head for
  ``epochs`` (10) with SGD at ``lr`` (0.1) on its own data relabelled at
  random; the returned head is its auxiliary head ``W_u``;
* the server mixes the heads, ``alpha`` = ``original-weight`` (0.04)::

      W_head' = alpha * W_orig + (1 - alpha) * W_aux
      W_aux   = sum_{u in U} (n_u / sum_{v in U} n_v) * W_u      (the targets' returned heads)

  and keeps every other array of ``w``. From a fresh head, ``W_aux`` knows
  nothing but the random labels, so the mix all but replaces the head.

``aux-init = "global"`` keeps the variant fedforget ran before: the
auxiliary head starts from the global head, so the mix is
``W_orig + (1 - alpha) dW``, a nudge of the original head.

Deviations from the port, and why:

* random labels are drawn uniformly from the classes other than the true
  one (the port draws from all classes, the true one included), so that no
  example is ever trained towards its own label;
* the head trains with plain SGD at ``lr``, without the port's weight decay
  (1e-3) and learning-rate decay: a client step receives the method's
  settings, not the run's optimiser recipe;
* several targets may forget together (their heads are averaged).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedforget.arrays import Arrays, copy_arrays, weighted_sum
from fedforget.methods.base import (
    ClientData,
    ClientUpdate,
    ConfigValue,
    Needs,
    RoundPlan,
    StepResult,
    StepState,
    TargetStepMethod,
    UnlearningStep,
    target_updates,
    weights_by_examples,
)
from fedforget.methods.space import IntRange, LogUniform, SearchSpace, Uniform
from fedforget.models import head_keys
from fedforget.training import train

AUX_INITS = ("random", "global")
"""``fedau.aux-init``: a fresh N(0, 0.01^2) head (the port), or the global head."""
AUX_HEAD_STD = 0.01
"""Standard deviation of the fresh head's weight (the port's ``RandomNormal(stddev=0.01)``)."""


def auxiliary_head_seed(run_seed: int, first_round: int) -> int:
    """Seed of a step's fresh auxiliary head: reproducible, distinct between steps."""
    return zlib.crc32(f"fedau:{run_seed}:{first_round}".encode())


def fresh_head(arrays: Arrays, head: Sequence[str], seed: int) -> Arrays:
    """``arrays`` with the head re-drawn: weights ``N(0, AUX_HEAD_STD^2)``, biases 0.

    Arrays of the head with more than one dimension are weights, the others
    biases; every other array is ``arrays``' own (copied).
    """
    generator = torch.Generator().manual_seed(seed)
    new = copy_arrays(arrays)
    for name in head:
        value = arrays[name]
        if value.ndim > 1:
            draw = torch.randn(value.shape, generator=generator, dtype=torch.float64)
            new[name] = (AUX_HEAD_STD * draw.numpy()).astype(value.dtype)
        else:
            new[name] = np.zeros_like(value)
    return new


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
    global_arrays: Arrays,
    sent: Arrays,
    targets: Sequence[ClientUpdate],
    head: Sequence[str],
    alpha: float,
) -> Arrays:
    """``global_arrays`` with the head ``alpha * W_orig + (1 - alpha) * W_aux``, all else kept.

    ``W_aux`` is the example-weighted mean of the targets' returned heads
    ``W_u = sent + delta_u`` (``sent``: the model they trained from, whose head
    is the fresh one or the global one), so the mix is
    ``W_orig + (1 - alpha) * (W_sent - W_orig + sum_u p_u delta_u)``.
    """
    keep = 1.0 - alpha
    terms = [(keep, sent), (-keep, global_arrays)]
    terms += [(keep * p, u.delta) for p, u in weights_by_examples(targets)]
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
        "aux-init": "random",
    }
    """``aux-init``: ``random`` (a fresh N(0, 0.01^2) head, the port) or ``global``."""
    space: ClassVar[SearchSpace] = {
        "lr": LogUniform(0.01, 1.0),
        "epochs": IntRange(1, 20),
        "original-weight": Uniform(0.0, 0.5),
    }
    needs = Needs(
        target_online=True,
        client_step="they train the classifier head on their data with random labels",
        tasks=("classification",),
    )
    reference = (
        "Gu et al., Unlearning during Learning: An Efficient Federated Machine Unlearning "
        "Method, IJCAI 2024, arXiv 2405.15474; checked against the PUF authors' port "
        "(alessiomora/puf_unlearning)"
    )
    summary = (
        "mix the head with a fresh one the targets train on random labels (0.04 W + 0.96 W_aux)"
    )
    deviations = (
        "random labels avoid the true class (the port draws from all); the head trains "
        "with plain SGD (no weight decay or lr decay)"
    )
    client_step = staticmethod(train_auxiliary_head)

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """At least one epoch, a positive finite lr, an original weight in [0, 1], a known init."""
        epochs, lr, alpha = settings["epochs"], settings["lr"], settings["original-weight"]
        if settings["aux-init"] not in AUX_INITS:
            return (
                f"fedau.aux-init must be one of {', '.join(AUX_INITS)} (random: a fresh head, "
                f"as published; global: the global head), got {settings['aux-init']!r}"
            )
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

    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        """One round: the global model, with a fresh head (``aux-init`` random), to the targets."""
        plan = super().plan(step, state, global_arrays, remaining)
        if step.settings["aux-init"] == "random":
            seed = auxiliary_head_seed(self.context.seed, step.first_round)
            plan.arrays = fresh_head(global_arrays, self.context.head_keys, seed)
        return plan

    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """The global model with its head mixed with the targets' auxiliary heads."""
        targets = target_updates(step, updates)
        alpha = float(step.settings["original-weight"])
        head = self.context.head_keys
        return StepResult(mixed_head(global_arrays, plan.arrays, targets, head, alpha))
