"""GA: gradient ascent on the forget loss, with a stopping rule (registry name ``ga``).

From the original weights, mini-batch SGD steps that *raise* the forget loss

    w <- w + lr * grad_w (1/|B|) sum_{(x, y) in B} CE(f_w(x), y),   B a forget mini-batch,

i.e. descent on ``-L_f(w)``. The ascent is unbounded (the loss can grow
without limit while the model collapses), so it needs a stopping rule. The
retain-free rule of the literature, "stop when forget accuracy reaches the
level of unseen data", needs test data the method does not see, so the
level is a setting:

* the forget accuracy (whole forget set, eval mode) is measured before the
  first step and after every ``check-every``-th step; the ascent stops as
  soon as it is ``<= stop-forget-acc`` (``client`` and ``random`` scenarios;
  default 0.85, about what a digits model retrained without a client scores
  on that client's data) or ``<= stop-forget-acc-class`` (``class``
  scenario; default 0.0, as a model retrained without a class never
  predicts it);
* and after ``max-epochs`` passes over the forget set at the latest.

Cost: the forget examples actually ascended on, in epochs (stopping after one
and a half passes reports 1.5); none over the retain set.

Thudi et al., Unrolling SGD: Understanding Factors Influencing Machine
Unlearning, IEEE EuroS&P 2022, arXiv 2109.13398 (the GA baseline of Jia et
al. 2023 and SalUn).
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
    accuracy,
    generators,
    hand_back,
    range_problem,
    require_nonempty,
    run_epochs,
    sgd,
    start,
    task_loss,
)
from fedforget.methods.space import LogUniform, SearchSpace, Uniform


def stop_level(scenario: str, settings: Mapping[str, ConfigValue]) -> float:
    """The forget accuracy at or below which the ascent stops, for ``scenario``."""
    key = "stop-forget-acc-class" if scenario == "class" else "stop-forget-acc"
    return float(settings[key])


class GradientAscent(CentralisedMethod):
    """Ascend the forget loss until forget accuracy falls to the stop level (or max-epochs)."""

    name = "ga"
    limits: ClassVar[Mapping[str, float]] = {
        "max-epochs": 1000.0,
        "lr": 1e6,
        "batch-size": 65536,
        "momentum": 1.0,
        "stop-forget-acc": 1.0,
        "stop-forget-acc-class": 1.0,
        "check-every": 100000,
    }
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "max-epochs": 5.0,
        "lr": 0.01,
        "batch-size": 32,
        "momentum": 0.0,
        "stop-forget-acc": 0.85,
        "stop-forget-acc-class": 0.0,
        "check-every": 1,
    }
    """Plain SGD (no momentum: the ascent stops the step the rule fires, nothing carries on)."""
    space: ClassVar[SearchSpace] = {
        "lr": LogUniform(1e-4, 0.1),
        "max-epochs": Uniform(1.0, 10.0),
        "stop-forget-acc": Uniform(0.5, 0.99),
    }
    reference = (
        "Thudi et al., Unrolling SGD: Understanding Factors Influencing Machine Unlearning, "
        "IEEE EuroS&P 2022, arXiv 2109.13398"
    )
    summary = "gradient ascent on the forget loss until forget accuracy drops to a set level"

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Positive lr and max-epochs, whole numbers >= 1, levels and momentum in range."""
        return range_problem(
            cls.table,
            settings,
            positive=("lr", "max-epochs"),
            at_least_one=("batch-size", "check-every"),
            unit_closed=("stop-forget-acc", "stop-forget-acc-class"),
            below_one=("momentum",),
        )

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """Ascend on forget mini-batches until the stopping rule fires."""
        require_nonempty(data, forget=True)
        model = start(original, data)
        order, _ = generators(data.seed)
        forget = BatchCycle(
            data.forget_x, data.forget_y, int(settings["batch-size"]), order, device=data.device
        )
        descent = task_loss(data.task)
        level = stop_level(data.scenario, settings)
        check_every = int(settings["check-every"])
        steps = 0

        def ascent(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            nonlocal steps
            steps += 1
            return -descent(model, inputs, targets)

        def forgotten() -> bool:
            if steps % check_every:
                return False
            return accuracy(model, data.forget_x, data.forget_y) <= level

        spent = run_epochs(
            model,
            forget,
            ascent,
            sgd(model.parameters(), settings),
            epochs=float(settings["max-epochs"]),
            stop=forgotten,
        )
        return CentralisedOutcome(hand_back(model), forget_epochs=spent, retain_epochs=0.0)
