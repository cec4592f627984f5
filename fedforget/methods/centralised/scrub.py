"""SCRUB: a student that disobeys its teacher on the forget set only (``scrub``).

Kurmanji et al., "Towards Unbounded Machine Unlearning" (NeurIPS 2023,
arXiv 2302.09880). The teacher is the original model, frozen; the student
starts as a copy of it. With the distillation divergence at temperature ``T``

    KL_T(x) = T^2 * KL( softmax(teacher(x) / T) || softmax(student(x) / T) ),

each epoch ``e = 1..min-steps`` runs, with one SGD optimiser throughout,

* while ``e <= max-steps``, a **max-step** pass over the forget set that
  minimises ``-KL_T`` (the student moves away from the teacher there);
* a **min-step** pass over the retain set that minimises
  ``alpha * KL_T + gamma * CE(student(x), y)`` (it stays with the teacher
  and the labels there).

Since ``max-steps <= min-steps`` every epoch ends on its min-step, so the
run ends on min-steps, as the paper prescribes (they repair the retain
performance the max-steps cost). ``alpha``, ``gamma``, ``T`` and ``lr``
default to the paper's code's 0.001, 0.99, 4 and 0.0005 (SGD, momentum 0.9,
weight decay 5e-4).

The student starts at the teacher, where ``KL_T`` is at its minimum and its
gradient is zero: the first max-step barely moves it, later ones push it
away ever faster, and ``-KL_T`` is unbounded. A learning rate much above the
default makes the logits diverge; the loop then raises ``FloatingPointError``
("lower the learning rate"). On the digits CNN the defaults take class 3's
forget accuracy from 1.00 to 0 with retain accuracy 1.00.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
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
)
from fedforget.methods.space import IntRange, LogUniform, SearchSpace


def distillation_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    # kl_div(input=log q, target=log p) = KL(p || q): p the teacher, q the student
    divergence = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return divergence * temperature**2


class SCRUB(CentralisedMethod):
    """Alternate max-steps (away from the teacher on forget data) and min-steps (retain)."""

    name = "scrub"
    limits: ClassVar[Mapping[str, float]] = {
        "max-steps": 1000,
        "min-steps": 1000,
        "lr": 1e6,
        "momentum": 1.0,
        "weight-decay": 10.0,
        "temperature": 1000.0,
        "alpha": 1e6,
        "gamma": 1e6,
        "batch-size": 65536,
        "forget-batch-size": 65536,
    }
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "max-steps": 2,
        "min-steps": 4,
        "lr": 0.0005,
        "momentum": 0.9,
        "weight-decay": 5e-4,
        "temperature": 4.0,
        "alpha": 0.001,
        "gamma": 0.99,
        "batch-size": 32,
        "forget-batch-size": 16,
    }
    space: ClassVar[SearchSpace] = {
        "lr": LogUniform(1e-4, 1e-2),
        "max-steps": IntRange(1, 4),
        "min-steps": IntRange(4, 10),
    }
    reference = (
        "Kurmanji et al., Towards Unbounded Machine Unlearning, NeurIPS 2023, arXiv 2302.09880"
    )
    summary = (
        "student from the original model: max-steps raise KL(teacher || student) on forget "
        "data, min-steps lower KL + cross-entropy on retain data, ending on min-steps"
    )

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Positive rates and sizes; ``0 <= max-steps <= min-steps`` (it ends on a min-step)."""
        problem = range_problem(
            cls.table,
            settings,
            positive=("lr", "temperature"),
            non_negative=("weight-decay", "alpha", "gamma", "max-steps"),
            at_least_one=("min-steps", "batch-size", "forget-batch-size"),
            below_one=("momentum",),
        )
        if problem:
            return problem
        if int(settings["max-steps"]) > int(settings["min-steps"]):
            return (
                f"{cls.table}.max-steps ({settings['max-steps']}) must not exceed "
                f"{cls.table}.min-steps ({settings['min-steps']}): SCRUB ends on min-steps"
            )
        if float(settings["alpha"]) == 0 and float(settings["gamma"]) == 0:
            return f"{cls.table}.alpha and {cls.table}.gamma are both 0: min-steps would do nothing"
        return ""

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """Distil the frozen original into its copy, disobeying it on the forget set."""
        problem = self.check_settings(settings)
        if problem:
            raise ValueError(problem)
        require_nonempty(data, forget=True, retain=True)
        student = start(original, data)
        teacher = copy.deepcopy(student).eval()
        teacher.requires_grad_(False)
        temperature = float(settings["temperature"])
        alpha, gamma = float(settings["alpha"]), float(settings["gamma"])

        def max_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            del y
            with torch.no_grad():
                target = teacher(x)
            return -distillation_divergence(model(x), target, temperature)

        def min_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target = teacher(x)
            logits = model(x)
            divergence = distillation_divergence(logits, target, temperature)
            return alpha * divergence + gamma * F.cross_entropy(logits, y)

        order, _ = generators(data.seed)
        forget = BatchCycle(
            data.forget_x,
            data.forget_y,
            int(settings["forget-batch-size"]),
            order,
            device=data.device,
        )
        retain = BatchCycle(
            data.retain_x, data.retain_y, int(settings["batch-size"]), order, device=data.device
        )
        optimiser = sgd(student.parameters(), settings)
        forget_epochs = retain_epochs = 0.0
        for epoch in range(int(settings["min-steps"])):
            if epoch < int(settings["max-steps"]):
                forget_epochs += run_epochs(student, forget, max_step, optimiser, epochs=1)
            retain_epochs += run_epochs(student, retain, min_step, optimiser, epochs=1)
        return CentralisedOutcome(hand_back(student), forget_epochs, retain_epochs)
