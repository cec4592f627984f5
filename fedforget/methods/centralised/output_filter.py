"""An output filter that removes a class from a trained classifier (``output-filter``).

In the spirit of MPRU: Peng, Gunamardi, Tjuawinata & Lam, "MPRU: Modular
Projection-Redistribution Unlearning as Output Filter for Classification
Pipelines" (arXiv 2510.26230, 2025), which appends a projection-redistribution
layer to a trained classifier. It needs neither the training data nor a
change of the weights: the original model is wrapped, untouched, and only its
output is filtered. Class scenario only; it costs no epoch.

With ``p = softmax(z)`` the original probabilities and ``c`` the removed
class, the filtered distribution is

    p'_c = 0,    p'_j = p_j + p_c w_j  (j != c),   sum_{j != c} w_j = 1,

with the redistribution weights ``w``

* ``proportional`` (default): ``w_j = p_j / (1 - p_c)``, so ``p'_j = p_j / (1 -
  p_c)``, the original distribution conditioned on "not ``c``". It is the
  softmax of the logits with ``z_c`` removed, so the filter keeps the other
  logits as they are;
* ``uniform``: ``w_j = 1 / (C - 1)``; the filter outputs ``log p'``.

Both keep the order of the other classes' probabilities (each adds a
non-negative amount that is either proportional to ``p_j`` or the same for
all; ``uniform`` only weakly where float rounding makes ``p_j + p_c w_j``
equal for two classes). The output stays a vector of finite logits: the removed class gets
``m - |m| - REMOVED_LOGIT_GAP`` with ``m`` the largest other logit, so
``softmax`` gives it exactly ``0.0`` (``exp(-1000)`` underflows in float64 and
below) while cross-entropy on its label stays finite (about 1000 instead of
infinity), so losses, means and membership-inference thresholds downstream
remain numbers.
"""

from __future__ import annotations

import math
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

REDISTRIBUTIONS = ("proportional", "uniform")
REMOVED_LOGIT_GAP = 1_000.0
"""How far below the other logits the removed class's logit sits: its softmax is exactly 0."""


def remove_class_logit(logits: torch.Tensor, removed_class: int) -> torch.Tensor:
    """``logits`` with column ``removed_class`` set to ``m - |m| - REMOVED_LOGIT_GAP``.

    ``m`` is the row's largest other logit. The softmax of the removed class is
    ``exp(-(|m| + REMOVED_LOGIT_GAP)) / (...) == 0.0``; the ``|m|`` keeps the gap
    from being lost to rounding when the logits themselves are huge.
    """
    others = logits.index_fill(
        1, torch.tensor([removed_class], device=logits.device), float("-inf")
    )
    top = others.max(dim=1, keepdim=True).values
    floor = top - top.abs() - REMOVED_LOGIT_GAP
    column = torch.zeros_like(logits, dtype=torch.bool)
    column[:, removed_class] = True
    return torch.where(column, floor.expand_as(logits), logits)


def redistribute(logits: torch.Tensor, removed_class: int, redistribution: str) -> torch.Tensor:
    """Filtered logits whose softmax is ``p'`` (see the module docstring)."""
    if redistribution == "proportional":
        return remove_class_logit(logits, removed_class)
    if redistribution == "uniform":
        # log(p_j + p_c / (C - 1)), in log space so that no p_j underflows to log 0
        log_p = F.log_softmax(logits, dim=1)
        share = log_p[:, removed_class : removed_class + 1] - math.log(logits.shape[1] - 1)
        return remove_class_logit(torch.logaddexp(log_p, share), removed_class)
    raise ValueError(
        f"unknown redistribution {redistribution!r}: use one of {', '.join(REDISTRIBUTIONS)}"
    )


class OutputFilter(nn.Module):
    """A trained classifier with one class filtered out of its output.

    ``model`` is kept as the submodule ``model`` (its state_dict entries are
    ``model.<key>``, unchanged); the filter has no parameters.
    """

    def __init__(self, model: nn.Module, removed_class: int, redistribution: str) -> None:
        super().__init__()
        if redistribution not in REDISTRIBUTIONS:
            known = ", ".join(REDISTRIBUTIONS)
            raise ValueError(f"unknown redistribution {redistribution!r}: use one of {known}")
        self.model = model
        self.removed_class = removed_class
        self.redistribution = redistribution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's logits, filtered: ``softmax`` gives the removed class 0."""
        return redistribute(self.model(x), self.removed_class, self.redistribution)

    def extra_repr(self) -> str:
        """The removed class and the redistribution, for ``print(model)``."""
        return f"removed_class={self.removed_class}, redistribution={self.redistribution}"


class OutputFilterUnlearning(CentralisedMethod):
    """Wrap the original model in a filter that removes the forget class from its output."""

    name = "output-filter"
    defaults: ClassVar[Mapping[str, ConfigValue]] = {"redistribution": "proportional"}
    scenarios: ClassVar[frozenset[str]] = frozenset({"class"})
    scenarios_why = (
        "an output filter removes a whole class from the predictions and cannot tell "
        "particular examples apart"
    )
    reference = (
        "in the spirit of Peng et al., MPRU: Modular Projection-Redistribution Unlearning as "
        "Output Filter for Classification Pipelines, arXiv 2510.26230 (2025)"
    )
    summary = (
        "a layer after the classifier that zeroes the forget class's probability and "
        "redistributes it over the others (no data, weights unchanged)"
    )

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """``redistribution`` is ``proportional`` or ``uniform``."""
        if settings["redistribution"] not in REDISTRIBUTIONS:
            return (
                f"{cls.table}.redistribution must be one of {', '.join(REDISTRIBUTIONS)}, "
                f"got {settings['redistribution']!r}"
            )
        return ""

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """``original``, untouched, behind a filter of ``data.forget_class``; no data is read."""
        problem = self.check_settings(settings) or self.refusal(data.scenario, data.task)
        if problem:
            raise ValueError(problem)
        if data.forget_class is None or not 0 <= data.forget_class < data.num_classes:
            raise ValueError(
                f"the class scenario needs a forget class in 0..{data.num_classes - 1}, "
                f"got {data.forget_class!r}"
            )
        model = OutputFilter(
            original.to("cpu").eval(), data.forget_class, str(settings["redistribution"])
        )
        return CentralisedOutcome(model.eval(), forget_epochs=0.0, retain_epochs=0.0)
