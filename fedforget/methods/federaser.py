"""FedEraser: replay the kept history with the remaining clients, calibrated.

Liu et al., "FedEraser: Enabling Efficient Client-Level Data Removal from
Federated Learning Models", IWQoS 2021; checked against the authors' code
(its ``unlearning`` function, which the PUF authors' port keeps as a
comment) and the PUF authors' port (``alessiomora/puf_unlearning``,
``federaser_utility.py``: ``delta_t=2``, ``Ecali=0.5``). Docs:
``puf-reference.md``, section "Baselines (federated)".

History (kept by :meth:`FedEraser.observe` in ordinary rounds): in every
retained round ``t`` (``t = 1, 1 + interval, 1 + 2 interval, ...``; default
``interval`` 2, every 2nd round) the global model ``w^t`` the server sent and
each client's update ``U_k^t = w_k^t - w^t`` with its example count. Storage
grows with the rounds: that is FedEraser's cost.

Step, for the retained rounds ``t_1 < ... < t_m``::

    w~ = w^{t_1} + sum_k (n_k / sum n) U_k^{t_1}          (the stored updates, reused)
    for j = 2..m, one unlearning round each: every remaining client k that has
    U_k^{t_j} trains from w~ for half its local epochs:   Û_k = w~_k - w~
    Ũ_k = |U_k^{t_j}| * Û_k / |Û_k|                      (:func:`calibrate`)
    w~ <- w~ + sum_k (n_k / sum n) Ũ_k

and the last ``w~`` is the new global model: ``m - 1`` rounds (one, asking
nobody, when only one round was kept). The first kept round started from
the initial model, as the replay does, so its stored updates are what
calibration would recompute: they are reused as they are (the original and
the port do the same). "Half the local epochs" is
``calibration-epochs-fraction`` (0.5) of the ``local-epochs`` schedule's
mini-batches, rounded down to whole mini-batches as the port takes
``int(0.5 x batches)`` of one epoch (:func:`fedforget.task.local_steps`;
the run config key ``local-epochs-fraction`` carries it to the clients). The
norms are taken per layer (each floating-point array separately, as in the
original) or over the whole model (``per-layer = false``, as in the port).
The targets' updates are never used; a retained round in which no remaining
client trained carries ``w~`` over unchanged.

Deviations, and why:

* each client's update is calibrated against its own stored update, as in
  the paper's formulation, and the calibrated updates are averaged with
  FedAvg's example weights (the original code calibrates the clients' mean
  update);
* the kept rounds are 1, 1 + interval, ..., each update with the model it
  started from (the original code keeps the client models of rounds
  interval, 2 interval, ... and pairs them with global models one round
  apart; the port keeps round 1 and every interval-th round);
* calibration trains at the learning rate of the round it runs in (the port:
  ``lr x decay^j`` for the ``j``-th kept round); only its direction is used;
* the original rounds fractional calibration epochs up to whole epochs
  (``ceil``); the port's rounding down to mini-batches is followed, since for
  one local epoch (every CIFAR configuration) the ceiling is a full epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedforget.arrays import Arrays, arrays_nbytes, copy_arrays, is_float_array, norm, weighted_sum
from fedforget.methods.base import (
    TRAIN_ACTION,
    ClientUpdate,
    ConfigValue,
    FederatedMethod,
    MethodContext,
    Needs,
    RoundPlan,
    StepFailed,
    StepResult,
    StepState,
    UnlearningStep,
)
from fedforget.methods.space import SearchSpace, Uniform
from fedforget.protocol import natural_order
from fedforget.state.store import StoredPseudoGradient


def calibrate(stored: Arrays, new: Arrays, per_layer: bool) -> Arrays:
    """``new``'s direction with ``stored``'s norm: FedEraser's calibrated update.

    Parameters
    ----------
    stored : Arrays
        The client's update kept from the original training round (its norm
        is the step length).
    new : Arrays
        The client's update in the unlearning round (its direction is kept).
    per_layer : bool
        Rescale each floating-point array to the norm of the same array of
        ``stored`` (the original); otherwise rescale the whole update to the
        norm of the whole stored update.

    Returns
    -------
    dict[str, NDArray]
        The floating-point arrays of ``new``, rescaled, in their dtypes. An
        array (or, whole-model, an update) of norm 0 has no direction: it
        stays zero.

    Raises
    ------
    ValueError
        If ``stored`` lacks a floating-point array of ``new`` or its shape differs.

    """
    names = [name for name, value in new.items() if is_float_array(value)]
    for name in names:
        if name not in stored:
            raise ValueError(f"the stored update lacks array {name!r} of the new update")
        if np.shape(stored[name]) != np.shape(new[name]):
            raise ValueError(
                f"the stored update has shape {np.shape(stored[name])} for {name!r}; "
                f"the new update's is {np.shape(new[name])}"
            )
    if per_layer:
        scales = {name: _scale(norm(stored, (name,)), norm(new, (name,))) for name in names}
    else:
        scale = _scale(norm(stored, names), norm(new, names))
        scales = dict.fromkeys(names, scale)
    return {
        name: (np.asarray(new[name], np.float64) * scales[name]).astype(new[name].dtype)
        for name in names
    }


def _scale(stored_norm: float, new_norm: float) -> float:
    # a zero update has no direction to follow: leave it zero rather than divide by 0
    return stored_norm / new_norm if new_norm > 0 else 0.0


@dataclass
class RetainedRound:
    """What FedEraser keeps of one retained round: the model sent and each client's update."""

    server_round: int
    sent: Arrays
    updates: dict[str, StoredPseudoGradient] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes held by the model and the updates."""
        return arrays_nbytes(self.sent) + sum(u.nbytes for u in self.updates.values())


@dataclass(frozen=True)
class Calibration:
    """One calibrated update of a step (for inspection): its norms before and after."""

    server_round: int  # the retained round whose stored update gave the norm
    client_id: str
    stored_norm: float
    applied_norm: float


@dataclass
class ReplayState(StepState):
    """A FedEraser step: the kept rounds it replays, and its calibrations so far."""

    schedule: tuple[RetainedRound, ...] = ()
    """The history as it was when the step began."""
    calibrations: list[Calibration] = field(default_factory=list)


class FedEraser(FederatedMethod):
    """Replay the retained rounds with the remaining clients, each update rescaled.

    Parameters
    ----------
    context : MethodContext
        The federation's model and recipe.
    interval : int | None (default: None)
        Keep every ``interval``-th round (rounds 1, 1 + interval, ...; the
        default 2 keeps every 2nd round, as the PUF authors' port); None
        takes the run's ``federaser.interval``. The history is kept
        before any request arrives, so the interval is fixed when the method
        is built: a step whose ``federaser.interval`` differs is refused.

    """

    name = "federaser"
    table = "federaser"
    limits: ClassVar[Mapping[str, float]] = {"interval": 1000, "calibration-epochs-fraction": 1.0}
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "interval": 2,
        "calibration-epochs-fraction": 0.5,
        "per-layer": True,
    }
    space: ClassVar[SearchSpace] = {"calibration-epochs-fraction": Uniform(0.1, 1.0)}
    needs = Needs(
        history=(
            "every client update of every federaser.interval-th round, and the global "
            "model they started from"
        ),
    )
    reference = (
        "Liu et al., FedEraser: Enabling Efficient Client-Level Data Removal from "
        "Federated Learning Models, IWQoS 2021; checked against the PUF authors' port "
        "(alessiomora/puf_unlearning)"
    )
    summary = (
        "replay every 2nd round with the remaining clients at half the local epochs, "
        "each update rescaled to the stored one's norm (the first kept round reused)"
    )
    deviations = (
        "each client's update is calibrated against its own stored update (the original "
        "code calibrates their mean); calibration runs at the current round's lr"
    )

    def __init__(self, context: MethodContext, interval: int | None = None) -> None:
        super().__init__(context)
        self.interval = int(self.run_settings["interval"]) if interval is None else interval
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        self.history: list[RetainedRound] = []
        self.calibrations: list[Calibration] = []
        """The calibrated updates of the latest step, in the order applied."""

    # ------------------------------------------------------------- settings
    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """A positive interval and a fraction of the local epochs in (0, 1]."""
        interval = settings["interval"]
        if not (isinstance(interval, int) and interval >= 1):
            return f"federaser.interval must be an integer >= 1, got {interval!r}"
        fraction = settings["calibration-epochs-fraction"]
        if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
            return (
                f"federaser.calibration-epochs-fraction must be in (0, 1] (a fraction of "
                f"local-epochs), got {fraction!r}"
            )
        return ""

    # --------------------------------------------------------- ordinary rounds
    def observe(self, server_round: int, sent: Arrays, updates: Sequence[ClientUpdate]) -> None:
        """Keep the round's model and every update if the round is a retained one."""
        if (server_round - 1) % self.interval:
            return
        self.history.append(
            RetainedRound(
                server_round,
                copy_arrays(sent),
                {
                    u.client_id: StoredPseudoGradient(u.delta, u.num_examples, server_round)
                    for u in updates
                },
            )
        )

    # -------------------------------------------------------------- the step
    def refusal(self, targets: Sequence[str], settings: Mapping[str, ConfigValue]) -> str:
        """A history to replay, kept at the step's interval."""
        if settings["interval"] != self.interval:
            return (
                f"federaser.interval={settings['interval']} differs from the interval the "
                f"history was kept with ({self.interval}): the history is kept from round 1, "
                f"so the interval cannot change with a request"
            )
        if not self.history:
            return (
                "federaser has kept no round yet: no ordinary round has completed; "
                "retry after the first round"
            )
        return ""

    def begin(self, step: UnlearningStep, global_arrays: Arrays) -> ReplayState:
        """The step replays the history as it is now; its calibrations start afresh."""
        del step, global_arrays
        state = ReplayState(schedule=tuple(self.history))
        self.calibrations = state.calibrations  # the latest step's, kept until the next
        return state

    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        """Round ``index``: the remaining clients calibrate kept round ``index + 2`` (1-based).

        Round 0 first rebuilds ``w~`` from the first kept round's stored
        updates (:meth:`replay_start`); the clients then train from ``w~``.
        """
        assert isinstance(state, ReplayState)
        index, schedule = state.index, state.schedule
        if not schedule:
            return RoundPlan(global_arrays)  # apply says why
        start = self.replay_start(step, schedule[0]) if index == 0 else global_arrays
        if index + 1 >= len(schedule):
            return RoundPlan(start)  # one kept round: its stored updates are the whole step
        retained = schedule[index + 1]
        clients = [c for c in remaining if c in retained.updates and c not in step.targets]
        fraction = float(step.settings["calibration-epochs-fraction"])
        return RoundPlan(
            start,
            dict.fromkeys(clients, TRAIN_ACTION),
            epochs=fraction * self.context.local_epochs if clients else 0.0,
            config={"local-epochs-fraction": fraction},
        )

    def replay_start(self, step: UnlearningStep, first: RetainedRound) -> Arrays:
        """``w^{t_1}`` moved by the FedAvg of the remaining clients' stored updates of ``t_1``.

        ``first`` is the step's first kept round.
        """
        kept = [(u.num_examples, u) for c, u in first.updates.items() if c not in step.targets]
        total = sum(count for count, _ in kept)
        if not total:
            return copy_arrays(first.sent)
        return weighted_sum(first.sent, [(n / total, u.pseudo_gradient) for n, u in kept])

    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """The calibrated model moved by the example-weighted mean of the calibrated updates."""
        assert isinstance(state, ReplayState)
        index, schedule = state.index, state.schedule
        if not schedule:
            raise StepFailed(
                "federaser has no kept round to replay; nothing was forgotten: keep its "
                "history (method='federaser' or methods) and retry after a round"
            )
        if index + 1 >= len(schedule):
            return StepResult(copy_arrays(plan.arrays))
        retained = schedule[index + 1]
        per_layer = bool(step.settings["per-layer"])
        calibrated: list[tuple[int, Arrays]] = []
        for update in updates:
            stored = retained.updates.get(update.client_id)
            if stored is None or update.client_id in step.targets:
                continue  # only clients the plan asked reach here; kept for safety
            rescaled = calibrate(stored.pseudo_gradient, update.delta, per_layer)
            state.calibrations.append(
                Calibration(
                    retained.server_round,
                    update.client_id,
                    norm(stored.pseudo_gradient),
                    norm(rescaled),
                )
            )
            calibrated.append((update.num_examples, rescaled))
        total = sum(count for count, _ in calibrated)
        new = (
            weighted_sum(plan.arrays, [(count / total, u) for count, u in calibrated])
            if calibrated
            else copy_arrays(plan.arrays)
        )
        return StepResult(new, done=index + 2 >= len(schedule))

    # ------------------------------------------------------------- storage
    def forget(self, client_ids: Sequence[str]) -> None:
        """Erase the clients' updates from every retained round."""
        for retained in self.history:
            for client_id in client_ids:
                retained.updates.pop(client_id, None)

    def stored_bytes(self) -> int:
        """Every retained round's model and updates: grows with the rounds."""
        return sum(retained.nbytes for retained in self.history)

    def stored_clients(self) -> list[str]:
        """Clients with an update in some retained round."""
        clients = {c for retained in self.history for c in retained.updates}
        return sorted(clients, key=natural_order)

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The history: each retained round's model and updates (arrays), and the interval."""
        return {
            "interval": self.interval,
            "history": [
                {
                    "server_round": retained.server_round,
                    "sent": retained.sent,
                    "updates": {
                        client_id: {
                            "pseudo_gradient": update.pseudo_gradient,
                            "num_examples": update.num_examples,
                            "server_round": update.server_round,
                        }
                        for client_id, update in retained.updates.items()
                    },
                }
                for retained in self.history
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the history (kept at the same interval)."""
        if not state:
            self.history = []
            return
        if int(state["interval"]) != self.interval:
            raise ValueError(
                f"the checkpoint's federaser history was kept every {state['interval']} rounds, "
                f"this run keeps it every {self.interval}: resume with the same federaser.interval"
            )
        self.history = [
            RetainedRound(
                int(saved["server_round"]),
                dict(saved["sent"]),
                {
                    client_id: StoredPseudoGradient(
                        dict(update["pseudo_gradient"]),
                        int(update["num_examples"]),
                        int(update["server_round"]),
                    )
                    for client_id, update in saved["updates"].items()
                },
            )
            for saved in state["history"]
        ]
