"""MoDe: momentum degradation, then memory guidance (registry name ``mode``).

Zhao et al., "Federated Unlearning With Momentum Degradation", IEEE Internet
of Things Journal, 2024 (doi:10.1109/JIOT.2023.3321594). A step of
``degradation-rounds`` (K, default 2) + 1 rounds:

* knowledge erasure, rounds 0..K-1: a degradation model ``w_de``, freshly
  initialised for the step, is trained by the remaining clients (ordinary
  local training, FedAvg of their updates against ``w_de``); after each round
  the global model moves towards it::

      w <- momentum * w + (1 - momentum) * w_de          (momentum = 0.95)

  over the floating-point arrays (integer arrays keep ``w``'s values). Never
  having seen the targets' data, ``w_de`` pulls ``w`` towards the early
  state of a model retrained without them.
* memory guidance, round K: each target fine-tunes ``w`` on its data for
  ``guidance-epochs`` (1) with SGD at ``lr`` (0.01), labelled by ``w_de``'s
  predictions (its arg-max), so that ``w`` keeps discriminating the inputs
  but learns on them only what a model without the targets would say; the new
  global model is the example-weighted mean of the targets' models.
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedforget.arrays import Arrays, difference, weighted_sum
from fedforget.methods.base import (
    TRAIN_ACTION,
    ClientData,
    ClientUpdate,
    ConfigValue,
    FederatedMethod,
    MethodContext,
    Needs,
    RoundPlan,
    StepResult,
    UnlearningStep,
    fedavg,
    target_updates,
)
from fedforget.training import train

logger = logging.getLogger(__name__)

DEGRADATION_ARRAYS = "degradation"
"""Name under which the guidance round sends ``w_de`` (``plan.extra``)."""


def degradation_seed(run_seed: int, first_round: int) -> int:
    """Seed of a step's degradation model: distinct from the run's and between steps."""
    return zlib.crc32(f"mode:{run_seed}:{first_round}".encode())


def momentum_step(global_arrays: Arrays, degradation: Arrays, momentum: float) -> Arrays:
    """``momentum * w + (1 - momentum) * w_de`` over the float arrays; integer arrays of ``w``."""
    return weighted_sum(global_arrays, [(1.0 - momentum, difference(degradation, global_arrays))])


@torch.no_grad()
def pseudo_labels(
    model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """The arg-max class of ``model``'s outputs (per pixel for segmentation), on the CPU."""
    model.to(device)
    model.eval()
    labels = [
        model(x[start : start + batch_size].to(device)).argmax(dim=1).cpu()
        for start in range(0, len(x), batch_size)
    ]
    model.to("cpu")
    return torch.cat(labels)


def memory_guidance(
    model: nn.Module,
    data: ClientData,
    settings: Mapping[str, ConfigValue],
    extra: Mapping[str, dict[str, torch.Tensor]],
    seed: int,
) -> float:
    """MoDe's client step: train ``model`` on its data labelled by the degradation model.

    ``extra["degradation"]`` is ``w_de``'s state dict. Mini-batches are
    shuffled by a generator seeded with ``seed`` (:func:`fedforget.training.train`).

    Returns
    -------
    float
        The mean loss over all mini-batches, against the pseudo-labels.

    """
    degradation = copy.deepcopy(model)
    degradation.load_state_dict(extra[DEGRADATION_ARRAYS])
    labels = pseudo_labels(degradation, data.x, data.batch_size, data.device)
    del degradation
    return train(
        model,
        data.x,
        labels,
        epochs=int(settings["guidance-epochs"]),
        batch_size=data.batch_size,
        lr=float(settings["lr"]),
        seed=seed,
        task=data.task,
        device=data.device,
    )


class MoDe(FederatedMethod):
    """Degrade the global model towards a model of the remaining clients, then guide it.

    ``degradation`` holds the active step's ``w_de`` (empty between steps).
    """

    name = "mode"
    table = "mode"
    limits: ClassVar[Mapping[str, float]] = {
        "degradation-rounds": 100,
        "momentum": 1.0,
        "guidance-epochs": 100,
        "lr": 1e6,
    }
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "degradation-rounds": 2,
        "momentum": 0.95,
        "guidance-epochs": 1,
        "lr": 0.01,
    }
    needs = Needs(
        target_online=True,
        client_step="they fine-tune on their data labelled by the degradation model",
    )
    reference = (
        "Zhao et al., Federated Unlearning With Momentum Degradation, IEEE Internet of "
        "Things Journal 2024, doi:10.1109/JIOT.2023.3321594"
    )
    summary = "pull the model (x0.95) towards one the others train from scratch, then guide it"
    client_step = staticmethod(memory_guidance)

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.degradation: Arrays = {}

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """At least one degradation round and epoch, momentum in [0, 1), a positive lr."""
        for key in ("degradation-rounds", "guidance-epochs"):
            value = settings[key]
            if not (isinstance(value, int) and value >= 1):
                return f"mode.{key} must be an integer >= 1, got {value!r}"
        momentum, lr = settings["momentum"], settings["lr"]
        if not (isinstance(momentum, int | float) and 0.0 <= momentum < 1.0):
            return f"mode.momentum must be in [0, 1), got {momentum!r}"
        if not (isinstance(lr, int | float) and lr > 0 and np.isfinite(lr)):
            return f"mode.lr must be a finite number > 0, got {lr!r}"
        return ""

    def plan(
        self, step: UnlearningStep, global_arrays: Arrays, remaining: Sequence[str], index: int
    ) -> RoundPlan:
        """Rounds 0..K-1: the remaining clients train ``w_de``; round K: the targets' guidance."""
        if index == 0:
            seed = degradation_seed(self.context.seed, step.first_round)
            self.degradation = self.context.random_arrays(seed)
        if index < int(step.settings["degradation-rounds"]):
            return RoundPlan(
                self.degradation,
                dict.fromkeys(remaining, TRAIN_ACTION),
                epochs=float(self.context.local_epochs),
            )
        return RoundPlan(
            global_arrays,
            dict.fromkeys(step.targets, self.name),
            epochs=float(step.settings["guidance-epochs"]),
            extra={DEGRADATION_ARRAYS: self.degradation},
        )

    def apply(
        self,
        step: UnlearningStep,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """A degradation round's momentum step, or the mean of the targets' guided models."""
        if DEGRADATION_ARRAYS not in plan.extra:
            return StepResult(self._degrade(step, global_arrays, plan, updates), done=False)
        self.degradation = {}
        targets = target_updates(step, updates)
        return StepResult(fedavg(global_arrays, targets))

    def _degrade(
        self,
        step: UnlearningStep,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> Arrays:
        """Train ``w_de`` by FedAvg of the remaining clients, then take the momentum step."""
        remaining = [u for u in updates if u.client_id not in step.targets]
        if remaining:
            self.degradation = fedavg(plan.arrays, remaining)
        else:
            # a random w_de still erases; the round is not worth failing the step for
            logger.warning("mode: no remaining client trained the degradation model this round")
        return momentum_step(global_arrays, self.degradation, float(step.settings["momentum"]))
