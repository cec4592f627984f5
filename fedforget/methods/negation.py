"""NoT: negate the first convolution's weights, then recover (registry name ``not``).

Khalil et al., "NoT: Federated Unlearning via Weight Negation", CVPR 2025;
checked against the PUF authors' port (``alessiomora/puf_unlearning``,
``unlearning_routine.py``, algorithm ``not``: the first layer's weight
negated, its bias kept). Deviations: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedforget.arrays import Arrays, copy_arrays
from fedforget.methods.base import (
    ClientUpdate,
    ConfigValue,
    FederatedMethod,
    RoundPlan,
    StepResult,
    StepState,
    UnlearningStep,
)


class NoT(FederatedMethod):
    """Layer-wise weight negation: ``w[first conv] <- -w[first conv]``, nothing else.

    The negated model has lost what the first layer's features encoded; the
    remaining clients' recovery rounds rebuild it without the targets' data.
    """

    name = "not"
    table = "not"
    reference = (
        "Khalil et al., NoT: Federated Unlearning via Weight Negation, CVPR 2025; checked "
        "against the PUF authors' port (alessiomora/puf_unlearning)"
    )
    summary = "negate the first convolution's weights, then recover"

    def refusal(self, targets: Sequence[str], settings: Mapping[str, ConfigValue]) -> str:
        """The model must have a convolution."""
        if not self.context.first_conv_key:
            return "not negates the first convolution's weights, and this model has none"
        return ""

    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        """A server-only round."""
        return RoundPlan(global_arrays)

    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """The model with its first convolution's weight negated."""
        new = copy_arrays(global_arrays)
        key = self.context.first_conv_key
        new[key] = np.negative(new[key])
        return StepResult(new)
