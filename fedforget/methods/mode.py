"""MoDe: momentum degradation, then memory guidance (registry name ``mode``).

Zhao et al., "Federated Unlearning With Momentum Degradation", IEEE Internet
of Things Journal, 2024 (doi:10.1109/JIOT.2023.3321594); checked against the
PUF authors' port (``alessiomora/puf_unlearning``: ``mode_unlearning.py`` and
the ``mode.*`` settings of its CIFAR scripts), the only public code.

A step is ``R = max(degradation-rounds, guidance-rounds)`` MoDe rounds (the
port: 10, of which the first 6 degrade). MoDe round ``j`` (0-based) is one
or two spine rounds:

* knowledge erasure, if ``j < degradation-rounds`` (K, default 6): a
  degradation model ``w_de``, freshly initialised for the step, is trained by
  the remaining clients (ordinary local training from ``w_de``, FedAvg of
  their updates against it, at the run's base learning rate, undecayed, as in
  the port); then the global model moves towards it::

      w <- momentum * w + (1 - momentum) * w_de          (momentum = 0.95)

  over the floating-point arrays (integer arrays keep ``w``'s values). Never
  having seen the targets' data, ``w_de`` pulls ``w`` towards the early state
  of a model retrained without them;
* memory guidance, if ``j >= R - guidance-rounds`` (G, default 10, so every
  MoDe round of the default step guides): every client trains from ``w``,
  the targets on their data labelled by ``w_de``'s arg-max predictions
  (``guidance-epochs``, SGD at ``lr``), the remaining clients ordinarily (at
  the run's learning rate, or at ``remaining-lr`` when it is set: the port's
  CIFAR scripts use 0.0005); the new global model is FedAvg over all of
  them, each weighted ``n_k / N`` with ``N`` the examples of every client
  that trained, so a target weighs ``n_u / N``.

``guidance = "targets"`` keeps the variant fedforget ran before: the
guidance rounds ask only the targets and the new global model is the mean
of their guided models (their share of the examples then is 1, about
``1 / p_u`` times the published weight). With ``degradation-rounds = 2``,
``guidance-rounds = 1``, ``guidance-epochs = 1`` and ``lr = 0.01`` it is that
variant exactly (two degradation rounds, then one guidance round).

Deviations from the port, and why:

* the targets' pseudo-labels are computed once per guidance round on
  test-time inputs, and the targets train on them with plain SGD (no weight
  decay, no augmentation): a client step receives the method's settings, not
  the run's optimiser recipe (the port labels each augmented batch as it
  trains, with the clients' SGD and weight decay 1e-3);
* the default ``lr`` (0.05) is the digits run's learning rate: the port's
  targets train at the run's base learning rate (0.1 for ResNet-18, 3e-4 for
  the ViT), so the CIFAR configurations set it;
* several targets may forget together (the port forgets one client).
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

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
    Needs,
    RoundPlan,
    StepResult,
    StepState,
    UnlearningStep,
    fedavg,
    target_updates,
)
from fedforget.methods.space import IntRange, LogUniform, SearchSpace, Uniform
from fedforget.training import train

logger = logging.getLogger(__name__)

DEGRADATION_ARRAYS = "degradation"
"""Name under which a guidance round sends ``w_de`` (``plan.extra``)."""
GUIDANCE_KINDS = ("fedavg", "targets")
"""``mode.guidance``: every client in FedAvg (the port), or the targets alone."""

Phase = Literal["degrade", "guide"]


def degradation_seed(run_seed: int, first_round: int) -> int:
    """Seed of a step's degradation model: distinct from the run's and between steps."""
    return zlib.crc32(f"mode:{run_seed}:{first_round}".encode())


def momentum_step(global_arrays: Arrays, degradation: Arrays, momentum: float) -> Arrays:
    """``momentum * w + (1 - momentum) * w_de`` over the float arrays; integer arrays of ``w``."""
    return weighted_sum(global_arrays, [(1.0 - momentum, difference(degradation, global_arrays))])


def schedule(degradation_rounds: int, guidance_rounds: int) -> tuple[Phase, ...]:
    """The spine rounds of a step, in order.

    MoDe round ``j`` degrades if ``j < K``, then guides if ``j >= R - G``,
    with ``R = max(K, G)`` (``K`` degradation, ``G`` guidance rounds).

    >>> schedule(2, 3)
    ('degrade', 'guide', 'degrade', 'guide', 'guide')
    >>> schedule(2, 1)
    ('degrade', 'degrade', 'guide')
    """
    total = max(degradation_rounds, guidance_rounds)
    phases: list[Phase] = []
    for j in range(total):
        if j < degradation_rounds:
            phases.append("degrade")
        if j >= total - guidance_rounds:
            phases.append("guide")
    return tuple(phases)


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

    ``extra["degradation"]`` is ``w_de``'s state dict; ``settings["guidance-epochs"]``
    the epochs (the server resolves 0 to the run's local epochs before it
    sends them). Mini-batches are shuffled by a generator seeded with
    ``seed`` (:func:`fedforget.training.train`).

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
        epochs=max(1, int(settings["guidance-epochs"])),
        batch_size=data.batch_size,
        lr=float(settings["lr"]),
        seed=seed,
        task=data.task,
        device=data.device,
    )


@dataclass
class DegradationState(StepState):
    """A MoDe step: its degradation model ``w_de`` and its schedule of spine rounds."""

    degradation: Arrays = field(default_factory=dict)
    phases: tuple[Phase, ...] = ()


class MoDe(FederatedMethod):
    """Degrade the global model towards a model of the remaining clients, then guide it.

    A step's ``w_de`` and its schedule of spine rounds (:func:`schedule`) live in
    its :class:`DegradationState`; the method keeps nothing between steps.
    """

    name = "mode"
    table = "mode"
    limits: ClassVar[Mapping[str, float]] = {
        "degradation-rounds": 100,
        "guidance-rounds": 100,
        "momentum": 1.0,
        "guidance-epochs": 100,
        "lr": 1e6,
        "remaining-lr": 1e6,
    }
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "degradation-rounds": 6,
        "guidance-rounds": 10,
        "guidance": "fedavg",
        "momentum": 0.95,
        "guidance-epochs": 0,
        "lr": 0.05,
        "remaining-lr": 0.0,
    }
    """The port's step: 6 degradation rounds within 10 guidance rounds.

    ``guidance-epochs`` 0: the targets guide for the run's local epochs (as
    every client in the port); ``remaining-lr`` 0: the remaining clients train
    at the run's learning rate in the guidance rounds.
    """
    space: ClassVar[SearchSpace] = {
        "lr": LogUniform(0.005, 0.5),
        "momentum": Uniform(0.5, 0.99),
        "degradation-rounds": IntRange(1, 10),
        "guidance-rounds": IntRange(2, 15),
    }
    needs = Needs(
        target_online=True,
        client_step="they train on their data labelled by the degradation model",
    )
    reference = (
        "Zhao et al., Federated Unlearning With Momentum Degradation, IEEE Internet of "
        "Things Journal 2024, doi:10.1109/JIOT.2023.3321594; checked against the PUF "
        "authors' port (alessiomora/puf_unlearning)"
    )
    summary = (
        "pull the model (x0.95) towards one the others train from scratch (6 rounds), "
        "within 10 FedAvg rounds of all clients, the targets on its pseudo-labels"
    )
    deviations = (
        "the targets' pseudo-labels are fixed per round, on un-augmented inputs, and they "
        "train with plain SGD (the port: the clients' SGD with weight decay 1e-3)"
    )
    client_step = staticmethod(memory_guidance)

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Round counts >= 1, epochs >= 0, momentum in [0, 1), lr > 0, remaining-lr >= 0."""
        for key in ("degradation-rounds", "guidance-rounds"):
            value = settings[key]
            if not (isinstance(value, int) and value >= 1):
                return f"mode.{key} must be an integer >= 1, got {value!r}"
        epochs = settings["guidance-epochs"]
        if not (isinstance(epochs, int) and epochs >= 0):
            return (
                f"mode.guidance-epochs must be an integer >= 0 (0: the run's local-epochs), "
                f"got {epochs!r}"
            )
        if settings["guidance"] not in GUIDANCE_KINDS:
            return (
                f"mode.guidance must be one of {', '.join(GUIDANCE_KINDS)} (fedavg: every "
                f"client, as published; targets: the targets alone), got {settings['guidance']!r}"
            )
        momentum, lr = settings["momentum"], settings["lr"]
        if not (isinstance(momentum, int | float) and 0.0 <= momentum < 1.0):
            return f"mode.momentum must be in [0, 1), got {momentum!r}"
        if not (isinstance(lr, int | float) and lr > 0 and np.isfinite(lr)):
            return f"mode.lr must be a finite number > 0, got {lr!r}"
        remaining_lr = settings["remaining-lr"]
        if not (isinstance(remaining_lr, int | float) and remaining_lr >= 0):
            return (
                f"mode.remaining-lr must be a finite number >= 0 (0: the run's learning "
                f"rate), got {remaining_lr!r}"
            )
        if not np.isfinite(remaining_lr):
            return f"mode.remaining-lr must be a finite number >= 0, got {remaining_lr!r}"
        return ""

    def guidance_epochs(self, settings: Mapping[str, ConfigValue]) -> int:
        """The targets' guidance epochs: ``guidance-epochs``, or the run's local epochs if 0."""
        return int(settings["guidance-epochs"]) or self.context.local_epochs

    def begin(self, step: UnlearningStep, global_arrays: Arrays) -> DegradationState:
        """A random ``w_de`` seeded by the run and the step's first round, and the schedule."""
        del global_arrays
        settings = step.settings
        return DegradationState(
            degradation=self.context.random_arrays(
                degradation_seed(self.context.seed, step.first_round)
            ),
            phases=schedule(int(settings["degradation-rounds"]), int(settings["guidance-rounds"])),
        )

    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        """A degradation round (the remaining clients train ``w_de``) or a guidance round."""
        assert isinstance(state, DegradationState)
        settings = step.settings
        local_epochs = float(self.context.local_epochs)
        if state.phases[state.index] == "degrade":
            # the port trains w_de at the base learning rate, undecayed
            return RoundPlan(
                state.degradation,
                dict.fromkeys(remaining, TRAIN_ACTION),
                epochs=local_epochs,
                config={"lr-decay": 1.0},
            )
        epochs = self.guidance_epochs(settings)
        clients = dict.fromkeys(step.targets, self.name)
        config: dict[str, ConfigValue] = {f"{self.table}.guidance-epochs": epochs}
        if settings["guidance"] == "fedavg":
            others = [c for c in remaining if c not in step.targets]
            clients = {**dict.fromkeys(others, TRAIN_ACTION), **clients}
            remaining_lr = float(settings["remaining-lr"])
            if remaining_lr > 0:
                config.update({"lr": remaining_lr, "lr-decay": 1.0})
            mean_epochs = (len(others) * local_epochs + len(step.targets) * epochs) / len(clients)
        else:
            mean_epochs = float(epochs)
        return RoundPlan(
            global_arrays,
            clients,
            epochs=mean_epochs,
            config=config,
            extra={DEGRADATION_ARRAYS: state.degradation},
        )

    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """A degradation round's momentum step, or the guidance round's FedAvg."""
        assert isinstance(state, DegradationState)
        if DEGRADATION_ARRAYS not in plan.extra:
            return StepResult(self._degrade(step, state, global_arrays, plan, updates), done=False)
        targets = target_updates(step, updates)  # every target must have guided
        if step.settings["guidance"] == "fedavg":
            guided = [u for u in updates if u.client_id in plan.clients]
        else:
            guided = targets
        new = fedavg(global_arrays, guided)
        done = state.index >= len(state.phases) - 1  # the schedule ends on a guidance round
        return StepResult(new, done=done)

    def _degrade(
        self,
        step: UnlearningStep,
        state: DegradationState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> Arrays:
        """Train ``w_de`` by FedAvg of the remaining clients, then take the momentum step."""
        remaining = [u for u in updates if u.client_id not in step.targets]
        if remaining:
            state.degradation = fedavg(plan.arrays, remaining)
        else:
            # a random w_de still erases; the round is not worth failing the step for
            logger.warning("mode: no remaining client trained the degradation model this round")
        return momentum_step(global_arrays, state.degradation, float(step.settings["momentum"]))
