"""FedQUIT: distillation from a quasi-competent virtual teacher on the target (``fedquit``).

Mora, Valerio, Bellavista and Passarella, "FedQUIT: On-Device Federated
Unlearning via a Quasi-Competent Virtual Teacher" (arXiv 2408.07587, 2024),
checked against the authors' code (``alessiomora/FedQUIT``) and the PUF
authors' port (``alessiomora/puf_unlearning``, ``model_kd_div.py``). The
target receives the global model ``w``; the teacher is a frozen copy of it
whose logit of each example's true class is replaced by that example's
minimum logit (:func:`virtual_teacher_logits`): it still knows how the
classes relate, but no longer favours the right one.
The student (the received model) minimises ``KL(softmax(teacher) ||
softmax(student))`` on the target's data with Adam. The new global model is
the example-weighted mean of the targets' students; recovery follows.

Deviations: none in the update; several targets forget together (the new
global model is the example-weighted mean of their students).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedforget.methods.base import (
    ClientData,
    ConfigValue,
    Needs,
    TargetStepMethod,
)
from fedforget.methods.space import IntRange, LogUniform, SearchSpace
from fedforget.training import make_optimizer


def virtual_teacher_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logits`` ``(N, C)`` with each row's true-class logit set to the row's minimum.

    The other classes keep their logits, so the teacher's distribution over
    them is the original model's, and the true class becomes (one of) the
    least likely.
    """
    minimum = logits.min(dim=1, keepdim=True).values
    return logits.scatter(1, labels.view(-1, 1), minimum)


def fedquit_client_step(
    model: nn.Module,
    data: ClientData,
    settings: Mapping[str, ConfigValue],
    extra: Mapping[str, dict[str, torch.Tensor]],
    seed: int,
) -> float:
    """Distil the virtual teacher of the received model into it on this client's data.

    Returns the mean KL divergence over the mini-batches.
    """
    del extra
    device = data.device
    model.to(device)
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    model.train()
    optimiser = make_optimizer("adam", model.parameters(), float(settings["lr"]))
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(int(settings["epochs"])):
        order = torch.randperm(len(data.x), generator=generator)
        for start in range(0, len(data.x), data.batch_size):
            batch = order[start : start + data.batch_size]
            inputs, labels = data.x[batch].to(device), data.y[batch].to(device)
            with torch.no_grad():
                target = F.log_softmax(virtual_teacher_logits(teacher(inputs), labels), dim=1)
            student = F.log_softmax(model(inputs), dim=1)
            # kl_div(input=log q, target=log p) = KL(p || q): p the teacher, q the student
            loss = F.kl_div(student, target, reduction="batchmean", log_target=True)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
    return total / max(count, 1)


class FedQUIT(TargetStepMethod):
    """The targets distil a virtual teacher that hides the true class into the global model."""

    name = "fedquit"
    table = "fedquit"
    limits: ClassVar[Mapping[str, float]] = {"lr": 1e6, "epochs": 100}
    defaults: ClassVar[Mapping[str, ConfigValue]] = {"lr": 1e-4, "epochs": 1}
    space: ClassVar[SearchSpace] = {"lr": LogUniform(1e-5, 1e-2), "epochs": IntRange(1, 5)}
    needs = Needs(
        target_online=True,
        client_step="distillation from a virtual teacher on its own data",
        tasks=("classification",),
    )
    reference = (
        "Mora, Valerio, Bellavista and Passarella, FedQUIT: On-Device Federated Unlearning "
        "via a Quasi-Competent Virtual Teacher, arXiv 2408.07587 (2024); checked against "
        "alessiomora/FedQUIT"
    )
    summary = "targets distil the global model with the true-class logit hidden (KL, Adam)"
    client_step = staticmethod(fedquit_client_step)

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """A finite lr > 0 and at least one epoch."""
        lr = settings["lr"]
        if not (isinstance(lr, int | float) and np.isfinite(lr) and lr > 0):
            return f"fedquit.lr must be a finite number > 0, got {lr!r}"
        if not int(settings["epochs"]) >= 1:
            return f"fedquit.epochs must be >= 1, got {settings['epochs']!r}"
        return ""
