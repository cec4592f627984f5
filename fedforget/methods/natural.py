"""Natural: no unlearning step; the targets are dropped and FedAvg goes on without them."""

from __future__ import annotations

from collections.abc import Sequence

from fedforget.arrays import Arrays
from fedforget.methods.base import (
    TRAIN_ACTION,
    ClientUpdate,
    FederatedMethod,
    RoundPlan,
    StepResult,
    StepState,
    UnlearningStep,
    fedavg,
)


class Natural(FederatedMethod):
    """Continue FedAvg with the remaining clients only; the targets' influence fades."""

    name = "natural"
    table = "natural"
    reference = "the baseline of the FU literature (e.g. Liu et al., FedEraser, IWQoS 2021)"
    summary = "no step: continue FedAvg without the targets"
    forgets_by_update = False  # the targets are left out; the model may not change at all

    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        """An ordinary round of the remaining clients."""
        return RoundPlan(
            global_arrays,
            {client_id: TRAIN_ACTION for client_id in remaining},
            epochs=self.context.local_epochs,
        )

    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """FedAvg of the remaining clients: no update of the targets is applied."""
        remaining = [u for u in updates if u.client_id not in step.targets]
        return StepResult(fedavg(global_arrays, remaining) if remaining else global_arrays)
