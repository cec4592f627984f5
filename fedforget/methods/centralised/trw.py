"""Tilted ReWeighting: forget a class by fine-tuning toward a tilted target (``trw``).

Ebrahimpour-Boroojeny, Wang & Sundaram, "On the Necessity of Output
Distribution Reweighting for Effective Class Unlearning" (arXiv 2506.20893,
2025). A model retrained without class ``c`` sends a class-``c`` input to
the classes that resemble it; the original model's probabilities over the
other classes carry that information, hidden under its mass on ``c``. TRW
fine-tunes the forget-class inputs toward that distribution, tilted toward
the classes most similar to ``c``, and keeps the retain data by
cross-entropy. Class scenario only.

Definitions used here, with ``z(x)`` the original model's logits and
``p(x) = softmax(z(x))``:

* **similarity** of class ``c`` to each class ``i`` (:func:`class_similarity`):
  the original model's mean probability of ``i`` on the forget-class inputs,
  renormalised over the classes other than ``c``,

      s_i = mean_{x in forget} p_i(x) / (1 - p_c(x))  for i != c,   s_c = 0,

  so ``s`` is a distribution over the remaining classes (the original
  model's confusion of ``c`` with each of them).
* **target** (:func:`tilted_targets`), for a forget-class input ``x``,

      q_i(x) = p_i(x) exp(t s_i) / sum_{j != c} p_j(x) exp(t s_j)   for i != c,
      q_c(x) = 0,

  computed as ``softmax`` of ``z_i(x) + t s_i`` over ``i != c`` (the
  ``p_c`` factor cancels), so it is exact where ``p_c(x)`` rounds to 1.
  ``t = tilt``; ``t = 0`` is the plain renormalisation ``p_i / (1 - p_c)``
  (the paper's first version, RWFT).

Each step takes a forget batch and a retain batch and minimises

    KL(q(x) || softmax(student(x)))  on the forget batch
    + retain-weight * CE(student(x), y)  on the retain batch,

with SGD; ``epochs`` counts passes over the forget set (the retain batches
are drawn alongside, as many as forget batches). The forget set is the
class's training examples, as the ``class`` scenario gives it.

On the digits CNN the defaults take class 3's forget accuracy from 1.00 to
0 (retain accuracy 0.99) and its inputs' mean prediction follows ``s``
(class 3 goes to 2, 9 and 8, about 0.3 each, as the original model confuses them).
"""

from __future__ import annotations

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
from fedforget.training import EVAL_BATCH_SIZE


def class_similarity(forget_logits: torch.Tensor, forget_class: int) -> torch.Tensor:
    """``s`` ``(C,)``: the mean of ``p_i / (1 - p_c)`` over forget-class logits, ``s_c = 0``."""
    remaining = forget_logits.index_fill(1, torch.tensor([forget_class]), float("-inf"))
    return F.softmax(remaining, dim=1).mean(dim=0)


def tilted_targets(
    logits: torch.Tensor, forget_class: int, similarity: torch.Tensor, tilt: float
) -> torch.Tensor:
    """``q`` ``(N, C)``: ``softmax(z + tilt * s)`` over the classes other than ``forget_class``.

    Every row sums to one and gives exactly zero to ``forget_class``.
    """
    tilted = logits + tilt * similarity.to(logits.dtype)
    tilted = tilted.index_fill(1, torch.tensor([forget_class], device=logits.device), float("-inf"))
    return F.softmax(tilted, dim=1)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [model(x[b : b + EVAL_BATCH_SIZE].to(device)) for b in range(0, len(x), EVAL_BATCH_SIZE)]
    )


class TiltedReweighting(CentralisedMethod):
    """Fine-tune forget-class inputs toward the original's tilted distribution over the rest."""

    name = "trw"
    limits: ClassVar[Mapping[str, float]] = {
        "tilt": 1000.0,
        "epochs": 1000,
        "lr": 1e6,
        "momentum": 1.0,
        "batch-size": 65536,
        "retain-weight": 1e6,
    }
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "tilt": 2.0,
        "epochs": 5,
        "lr": 0.003,
        "momentum": 0.9,
        "batch-size": 32,
        "retain-weight": 1.0,
    }
    space: ClassVar[SearchSpace] = {
        "tilt": LogUniform(0.5, 10.0),
        "lr": LogUniform(3e-4, 0.03),
        "epochs": IntRange(1, 10),
    }
    scenarios: ClassVar[frozenset[str]] = frozenset({"class"})
    scenarios_why = (
        "TRW redistributes the probability of one forgotten class, so it needs a whole "
        "class to forget"
    )
    reference = (
        "Ebrahimpour-Boroojeny, Wang & Sundaram, On the Necessity of Output Distribution "
        "Reweighting for Effective Class Unlearning, arXiv 2506.20893 (2025)"
    )
    summary = (
        "fine-tune forget-class inputs toward the original's distribution over the other "
        "classes tilted by class similarity (KL), cross-entropy on retain data"
    )

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """``tilt`` and ``retain-weight`` >= 0, ``lr`` > 0, whole ``epochs`` / ``batch-size``."""
        return range_problem(
            cls.table,
            settings,
            positive=("lr",),
            non_negative=("tilt", "retain-weight"),
            at_least_one=("epochs", "batch-size"),
            below_one=("momentum",),
        )

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """Fine-tune ``original`` toward the tilted targets on the forget class, CE on retain."""
        problem = self.check_settings(settings) or self.refusal(data.scenario, data.task)
        if problem:
            raise ValueError(problem)
        if data.forget_class is None:
            raise ValueError("the class scenario names no forget class: set forget-class")
        require_nonempty(data, forget=True, retain=True)
        model = start(original, data)
        logits = _logits(model, data.forget_x, data.device).cpu()
        similarity = class_similarity(logits, data.forget_class)
        targets = tilted_targets(logits, data.forget_class, similarity, float(settings["tilt"]))
        model.train()
        weight = float(settings["retain-weight"])
        batch_size = int(settings["batch-size"])
        order, _ = generators(data.seed)
        forget = BatchCycle(data.forget_x, targets, batch_size, order, device=data.device)
        retain = BatchCycle(data.retain_x, data.retain_y, batch_size, order, device=data.device)

        def batch_loss(student: nn.Module, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            # KL(q || softmax(student)) = CE(q, student) - H(q); H(q) does not depend on the student
            log_student = F.log_softmax(student(x), dim=1)
            loss = F.kl_div(log_student, q, reduction="batchmean")
            if weight > 0:
                retain_x, retain_y = next(retain)
                loss = loss + weight * F.cross_entropy(student(retain_x), retain_y)
            return loss

        forget_epochs = run_epochs(
            model,
            forget,
            batch_loss,
            sgd(model.parameters(), settings),
            epochs=int(settings["epochs"]),
        )
        return CentralisedOutcome(hand_back(model), forget_epochs, retain.epochs)
