"""PUF: negated pseudo-gradient updates (Mora et al., arXiv 2504.05822), two registry names.

``puf-special`` and ``puf-regular`` are the two variants of the paper, built
on one pure function, :func:`puf_update` (arrays in, arrays out).

Notation (docs: ``puf-reference.md``): ``w`` is the global model the
pseudo-gradients refer to, ``Delta_k = w_k - w`` the pseudo-gradient of client
``k`` with ``n_k`` training examples, ``U`` the clients to forget and ``S`` the
remaining clients that trained in the unlearning round.

* PUF-Special (a dedicated round, only the targets' updates)::

      w' = w - eta * sum_{u in U} (n_u / sum_{v in U} n_v) * Delta_u      (eta = 2)

* PUF-Regular (folded into an ordinary FedAvg round with the remaining clients)::

      w' = w + sum_{k in S} (n_k / N) Delta_k - eta * sum_{u in U} (n_u / N) Delta_u
      N  = sum_{k in S} n_k + sum_{u in U} n_u                           (eta = 20)

Which arrays change:

* floating-point parameters follow the formulas above;
* integer arrays (``num_batches_tracked``) are never touched;
* statistics (floating-point buffers such as BatchNorm ``running_mean`` and
  ``running_var``, named in ``statistic_keys``) are never negated: negating a
  running variance can make it negative. PUF-Special keeps ``w``'s statistics;
  PUF-Regular sets them to the remaining clients' example-weighted average (what
  FedAvg of ``S`` alone would give), or keeps ``w``'s if no client remains.

Computation is in float64; results are cast back to each array's dtype.

Checked against the paper's code (``alessiomora/puf_unlearning``,
``main_puf.py``). Deviations, and why:

* ``puf.source`` defaults to ``stored``: the target's latest update from its
  last regular round, so that the target may be offline (the platform's
  addition); the paper's code recomputes it in the unlearning round
  (``source = "fresh"``, which the CIFAR and ProstateMRI configurations set);
* running statistics are not negated (the TF code negated and scaled
  BatchNorm moving statistics; the paper's ResNet-18 uses GroupNorm, which
  has none).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from fedforget.arrays import Arrays, is_float_array
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
from fedforget.methods.space import LogUniform, SearchSpace
from fedforget.state.store import PseudoGradientStore, StoredEntryError, StoredPseudoGradient

UNLEARN_MODES = ("special", "regular")
PSEUDO_GRADIENT_SOURCES = ("stored", "fresh")
ETA_MAX = 100.0
"""Default of ``puf.eta-max``, the largest eta a run or a request may use: five times the
paper's PUF-Regular eta (20). A larger eta can blow the model up (eta = 1e308 makes it
Inf); the spine never applies a non-finite result, but a finite one far from the model
is just as useless. Raise it in the run's configuration only."""
ETA_LIMIT = 1e308
"""The declared bound of the etas: only finite. A request's eta is bounded by ``puf.eta-max``
(the run's, default :data:`ETA_MAX`); the cost of a step does not grow with eta, and a
non-finite result is never applied."""


@dataclass(frozen=True)
class Contribution:
    """One client's pseudo-gradient and the number of examples behind it."""

    pseudo_gradient: Mapping[str, NDArray[np.generic]]
    num_examples: int


def puf_update(
    global_arrays: Mapping[str, NDArray[np.generic]],
    targets: Mapping[str, Contribution],
    *,
    mode: str,
    eta: float,
    remaining: Mapping[str, Contribution] | None = None,
    statistic_keys: Collection[str] = (),
) -> Arrays:
    """Return the global model after forgetting ``targets`` with PUF.

    Parameters
    ----------
    global_arrays : Mapping[str, NDArray]
        The global model ``w`` (state-dict names to arrays) that the
        pseudo-gradients were computed against.
    targets : Mapping[str, Contribution]
        Client id to pseudo-gradient and example count of every client to
        forget (one or several, requested together). Must not be empty.
    mode : str
        ``"special"`` (only the targets' negated updates) or ``"regular"``
        (folded into a FedAvg round of ``remaining``).
    eta : float
        Scale of the negated pseudo-gradients (paper: 2.0 special, 20.0 regular).
    remaining : Mapping[str, Contribution] | None (default: None)
        Regular mode only: the pseudo-gradients of the remaining clients that
        trained in the unlearning round. Must be empty or None in special mode.
    statistic_keys : Collection[str] (default: ())
        Names of floating-point arrays that are running statistics, not
        parameters (BatchNorm ``running_mean``/``running_var``).

    Returns
    -------
    dict[str, NDArray]
        The new global model, same keys, shapes and dtypes as ``global_arrays``.

    Raises
    ------
    ValueError
        On an unknown mode, ``eta <= 0``, no targets, a client both in targets
        and remaining, non-positive example counts, remaining clients in special
        mode, or pseudo-gradients whose keys or shapes differ from the model's.

    """
    remaining = dict(remaining or {})
    _check_arguments(global_arrays, targets, remaining, mode, eta)
    statistics = set(statistic_keys)
    target_weights, remaining_weights = _weights(targets, remaining, mode, eta)
    updated: Arrays = {}
    # A huge eta may overflow: the spine refuses a non-finite result, so no warning here
    with np.errstate(over="ignore", invalid="ignore"):
        for name, value in global_arrays.items():
            updated[name] = _updated_array(
                name, value, statistics, targets, remaining, target_weights, remaining_weights
            )
    return updated


def forgetting_changes_model(
    global_arrays: Mapping[str, NDArray[np.generic]],
    targets: Mapping[str, Contribution],
    *,
    mode: str,
    eta: float,
    remaining: Mapping[str, Contribution] | None = None,
    statistic_keys: Collection[str] = (),
) -> bool:
    """Whether the targets' negated part of :func:`puf_update` changes any parameter.

    The part ``-eta * sum (n_u / N) Delta_u`` is added to ``global_arrays``
    alone and the result compared in each array's dtype: False when it is too
    small to change a single value (an eta such as 1e-320, updates of zeros),
    i.e. the step would forget nothing. The arguments are :func:`puf_update`'s.
    """
    remaining = dict(remaining or {})
    _check_arguments(global_arrays, targets, remaining, mode, eta)
    statistics = set(statistic_keys)
    target_weights, _ = _weights(targets, remaining, mode, eta)
    with np.errstate(over="ignore", invalid="ignore"):
        for name, value in global_arrays.items():
            if not is_float_array(value) or name in statistics:
                continue
            step = np.zeros(value.shape, dtype=np.float64)
            for cid, weight in target_weights.items():
                step += weight * np.asarray(targets[cid].pseudo_gradient[name], np.float64)
            if np.any((np.asarray(value, np.float64) + step).astype(value.dtype) != value):
                return True
    return False


def _weights(
    targets: Mapping[str, Contribution],
    remaining: Mapping[str, Contribution],
    mode: str,
    eta: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """The weights of the targets' and the remaining clients' pseudo-gradients."""
    total = sum(c.num_examples for c in targets.values())
    if mode == "regular":
        total += sum(c.num_examples for c in remaining.values())
    target_weights = {cid: -eta * c.num_examples / total for cid, c in targets.items()}
    remaining_weights = {cid: c.num_examples / total for cid, c in remaining.items()}
    return target_weights, remaining_weights


def _updated_array(
    name: str,
    value: NDArray[np.generic],
    statistics: set[str],
    targets: Mapping[str, Contribution],
    remaining: Mapping[str, Contribution],
    target_weights: Mapping[str, float],
    remaining_weights: Mapping[str, float],
) -> NDArray[np.generic]:
    """One array of :func:`puf_update`'s result."""
    if not is_float_array(value):
        return value.copy()
    step = np.zeros(value.shape, dtype=np.float64)
    if name in statistics:
        # FedAvg of the remaining clients only; never negated.
        remaining_total = sum(c.num_examples for c in remaining.values())
        for contribution in remaining.values():
            weight = contribution.num_examples / remaining_total
            step += weight * np.asarray(contribution.pseudo_gradient[name], np.float64)
    else:
        for weights, contributions in (
            (target_weights, targets),
            (remaining_weights, remaining),
        ):
            for cid, weight in weights.items():
                step += weight * np.asarray(contributions[cid].pseudo_gradient[name], np.float64)
    return (np.asarray(value, np.float64) + step).astype(value.dtype)


def _check_arguments(
    global_arrays: Mapping[str, NDArray[np.generic]],
    targets: Mapping[str, Contribution],
    remaining: Mapping[str, Contribution],
    mode: str,
    eta: float,
) -> None:
    if mode not in UNLEARN_MODES:
        raise ValueError(f"mode must be one of {', '.join(UNLEARN_MODES)}, got {mode!r}")
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    if not targets:
        raise ValueError("no clients to forget: targets is empty")
    if mode == "special" and remaining:
        raise ValueError(
            "PUF-Special uses only the targets' updates; pass remaining clients "
            "only with mode='regular'"
        )
    overlap = set(targets) & set(remaining)
    if overlap:
        raise ValueError(f"clients {sorted(overlap)} are both targets and remaining")
    for cid, contribution in {**targets, **remaining}.items():
        if contribution.num_examples <= 0:
            raise ValueError(
                f"client {cid} reports {contribution.num_examples} examples; must be > 0"
            )
        for name, value in global_arrays.items():
            if not is_float_array(value):
                continue
            delta = contribution.pseudo_gradient.get(name)
            if delta is None:
                raise ValueError(f"pseudo-gradient of client {cid} lacks array {name!r}")
            if np.shape(delta) != value.shape:
                raise ValueError(
                    f"pseudo-gradient of client {cid} has shape {np.shape(delta)} for "
                    f"{name!r}; the model's is {value.shape}"
                )


class _Puf(FederatedMethod):
    """PUF's step; the variant is the class's ``mode``."""

    table = "puf"
    limits: ClassVar[Mapping[str, float]] = {
        "eta-special": ETA_LIMIT,
        "eta-regular": ETA_LIMIT,
        "eta-max": ETA_LIMIT,
    }
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "eta-special": 2.0,
        "eta-regular": 20.0,
        "eta-max": ETA_MAX,
        "source": "stored",
    }
    # The bound on eta is the operator's: a request's options may not raise it.
    run_only: ClassVar[frozenset[str]] = frozenset({"eta-max"})
    reference = (
        "Mora et al., IEEE Trans. Big Data, arXiv 2504.05822; checked against "
        "alessiomora/puf_unlearning"
    )
    deviations = (
        "by default the target's stored latest update (puf.source='stored', the target may "
        "be offline); the paper's code recomputes it (source='fresh')"
    )
    mode: ClassVar[str]

    def __init__(self, context: MethodContext, store: PseudoGradientStore | None = None) -> None:
        super().__init__(context)
        self.store: PseudoGradientStore = store or context.pseudo_gradient_store()

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Positive etas at most ``eta-max`` and a known pseudo-gradient source."""
        for key in ("eta-max", "eta-special", "eta-regular"):
            value = settings[key]
            if not (isinstance(value, int | float) and value > 0 and np.isfinite(value)):
                return f"puf.{key} must be a finite number > 0, got {value!r}"
        bound = float(settings["eta-max"])
        for key in ("eta-special", "eta-regular"):
            if float(settings[key]) > bound:
                return (
                    f"puf.{key} = {settings[key]!r} is above puf.eta-max = {bound:g}: use a "
                    f"smaller eta (the paper uses 2 for special, 20 for regular), or raise "
                    f"puf.eta-max in the run's configuration"
                )
        if settings["source"] not in PSEUDO_GRADIENT_SOURCES:
            return (
                f"puf.source must be one of {', '.join(PSEUDO_GRADIENT_SOURCES)}, "
                f"got {settings['source']!r}"
            )
        return ""

    def targets_must_be_online(self, settings: Mapping[str, ConfigValue]) -> bool:
        """Only a fresh pseudo-gradient needs the targets: a stored one is on the server."""
        return settings["source"] == "fresh"

    def observe(self, server_round: int, sent: Arrays, updates: Sequence[ClientUpdate]) -> None:
        """Keep each client's latest pseudo-gradient."""
        for update in updates:
            self.store.put(
                update.client_id,
                StoredPseudoGradient(update.delta, update.num_examples, server_round),
            )

    def refusal(self, targets: Sequence[str], settings: Mapping[str, ConfigValue]) -> str:
        """A readable stored pseudo-gradient must exist for every target."""
        if settings["source"] != "stored":
            return ""
        for client_id in targets:
            try:
                entry = self.store.latest(client_id)
            except StoredEntryError as error:
                return str(error)
            if entry is None:
                return (
                    f"client {client_id} has no stored pseudo-gradient yet: it has not "
                    f"completed a training round; use puf.source='fresh' or wait"
                )
        return ""

    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        """One round: Special trains nobody (stored) or the targets (fresh); Regular all."""
        trainers = list(remaining) if self.mode == "regular" else []
        if step.settings["source"] == "fresh":
            trainers += list(step.targets)
        return RoundPlan(
            global_arrays,
            {client_id: TRAIN_ACTION for client_id in trainers},
            epochs=self.context.local_epochs if trainers else 0.0,
        )

    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """:func:`puf_update` of the round's model, the targets' and the remaining updates."""
        by_client = {u.client_id: u for u in updates}
        contributions: dict[str, Contribution] = {}
        for client_id in step.targets:
            if step.settings["source"] == "fresh":
                if client_id in by_client:
                    update = by_client[client_id]
                    contributions[client_id] = Contribution(update.delta, update.num_examples)
            else:
                try:
                    entry = self.store.latest(client_id)
                except StoredEntryError as error:
                    raise StepFailed(str(error)) from error
                if entry is not None:
                    contributions[client_id] = Contribution(
                        entry.pseudo_gradient, entry.num_examples
                    )
        missing = sorted(set(step.targets) - set(contributions))
        if missing:
            raise StepFailed(
                f"client(s) {', '.join(missing)} returned no valid update in unlearning round "
                f"{step.first_round}; nothing was forgotten: resubmit, or use puf.source='stored'"
            )
        remaining = [u for u in updates if u.client_id not in step.targets]
        if self.mode == "regular":
            self.observe(step.first_round, global_arrays, remaining)
        eta = float(step.settings[f"eta-{self.mode}"])
        arguments: dict[str, Any] = {
            "mode": self.mode,
            "eta": eta,
            "remaining": {u.client_id: Contribution(u.delta, u.num_examples) for u in remaining}
            if self.mode == "regular"
            else None,
            "statistic_keys": self.context.statistic_keys,
        }
        if not forgetting_changes_model(global_arrays, contributions, **arguments):
            raise StepFailed(
                f"the negated update of client(s) {', '.join(step.targets)} (x eta-{self.mode} "
                f"= {eta:g}) is too small to change the model: nothing would be forgotten; "
                f"use a larger eta (the paper uses 2 for special, 20 for regular)"
            )
        return StepResult(puf_update(global_arrays, contributions, **arguments))

    def forget(self, client_ids: Sequence[str]) -> None:
        """Erase the targets' stored pseudo-gradients."""
        for client_id in client_ids:
            self.store.erase(client_id)

    def stored_bytes(self) -> int:
        """The latest pseudo-gradient of every client: clients x model size."""
        return self.store.nbytes()

    def stored_clients(self) -> list[str]:
        """Clients with a stored pseudo-gradient."""
        return self.store.client_ids()

    def state_dict(self) -> dict[str, Any]:
        """The store's state: its arrays (memory store) or its index (disk store)."""
        return {"store": self.store.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the store."""
        self.store.load_state_dict(state.get("store", {}))

    def state_saved(self) -> None:
        """Let the store delete the files the saved index no longer names."""
        self.store.state_saved()


class PufSpecial(_Puf):
    """PUF-Special: one dedicated round, ``w - eta * weighted mean of the targets' updates``."""

    name = "puf-special"
    mode = "special"
    needs = Needs(history="the latest update of each client (puf.source='stored')")
    summary = "negate the targets' latest pseudo-gradients (x eta=2) in a dedicated round"
    space: ClassVar[SearchSpace] = {"eta-special": LogUniform(0.25, 20.0)}


class PufRegular(_Puf):
    """PUF-Regular: the negated targets' updates folded into a FedAvg round of the others."""

    name = "puf-regular"
    mode = "regular"
    needs = Needs(history="the latest update of each client (puf.source='stored')")
    summary = "fold the targets' negated pseudo-gradients (x eta=20) into a FedAvg round"
    space: ClassVar[SearchSpace] = {"eta-regular": LogUniform(2.0, 100.0)}
