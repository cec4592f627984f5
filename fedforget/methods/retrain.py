"""Retrain: start again from the initial model and train without the targets."""

from __future__ import annotations

from collections.abc import Sequence

from fedforget.arrays import Arrays, copy_arrays
from fedforget.methods.base import (
    ClientUpdate,
    FederatedMethod,
    RoundPlan,
    StepResult,
    StepState,
    UnlearningStep,
)


class Retrain(FederatedMethod):
    """The gold standard: the global model goes back to its initialisation.

    The step sends nothing; recovery (FedAvg of the remaining clients) is then
    the retraining, so its cost is every round until the model is back. No
    message ever reaches a target again.
    """

    name = "retrain"
    table = "retrain"
    reference = "the exact-unlearning reference (e.g. Bourtoule et al., SISA, S&P 2021)"
    summary = "reset to the initial model and retrain with the remaining clients"
    forgets_by_update = False  # the targets never train again; a reset may change nothing yet

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
        """The initial model."""
        return StepResult(copy_arrays(self.context.initial_arrays))
