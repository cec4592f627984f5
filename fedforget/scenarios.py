"""Forget scenarios: which training examples a request asks to forget.

* ``client``: a whole client's data (the federated request; the forget set of
  every federated method, so federated and centralised rows compare on it).
* ``random``: a random ``forget-fraction`` of the training examples of the
  clients that take part, drawn under the run's data seed (``data-seed``, or ``seed`` when unset).
* ``class``: every training example of class ``forget-class``.
* ``backdoor``: the targets' data, as in ``client``, where a share of it
  carries a trigger patch and the target class as label
  (:mod:`fedforget.data.backdoor`); the attack success rate on triggered test
  images tells whether a model still obeys the trigger.

A :class:`ForgetSet` holds indices into the training split; the retain set is
every other training example of a client that takes part. The retrained
reference of the ``random`` and ``class`` scenarios is the federation trained
with the forget set dropped from every client's data (``drop-forget-set``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedforget.config import CLIENT_SCENARIOS, ConfigError, FederationConfig
from fedforget.data.backdoor import Trigger, poisoned_indices, trigger_for
from fedforget.data.datasets import FederatedData, load_federated_data

RANDOM_FORGET_SEED_OFFSET = 7_919
"""Added to the data seed for the random forget set, so it does not reuse the partition's draws."""


@dataclass(frozen=True)
class ForgetSet:
    """The examples to forget and to retain, as indices into the training split."""

    scenario: str
    forget_index: NDArray[np.int64]
    retain_index: NDArray[np.int64]
    targets: tuple[str, ...] = ()
    forget_class: int | None = None
    trigger: Trigger | None = None
    """The backdoor scenario's trigger (None in the others)."""
    poisoned: int = 0
    """How many forget examples carry the trigger (backdoor scenario)."""

    @property
    def description(self) -> str:
        """The scenario in words, for tables and refusals."""
        size = f"{len(self.forget_index)} examples"
        if self.scenario == "client":
            return f"client(s) {', '.join(self.targets)} ({size})"
        if self.scenario == "backdoor" and self.trigger is not None:
            side = self.trigger.size
            return (
                f"client(s) {', '.join(self.targets)} ({size}, {self.poisoned} with a "
                f"{side}x{side} trigger relabelled {self.trigger.target_class})"
            )
        if self.scenario == "class":
            return f"class {self.forget_class} ({size})"
        return f"a random {size}"


def _participant_indices(federated: FederatedData, excluded: tuple[str, ...]) -> NDArray[np.int64]:
    clients = [c for c in federated.client_ids() if c not in set(excluded)]
    return np.sort(federated.client_indices(clients))


def forget_set(config: FederationConfig, federated: FederatedData) -> ForgetSet:
    """The forget / retain split a config's ``forget-scenario`` describes."""
    if config.forget_scenario in CLIENT_SCENARIOS:
        forget = np.sort(federated.client_indices(config.targets))
        retain_clients = set(config.targets) | set(config.excluded)
        retain = _participant_indices(federated, tuple(retain_clients))
        if config.forget_scenario == "backdoor":
            return ForgetSet(
                "backdoor",
                forget,
                retain,
                targets=config.targets,
                trigger=trigger_for(config, federated),
                poisoned=len(poisoned_indices(config, federated)),
            )
        return ForgetSet("client", forget, retain, targets=config.targets)
    pool = _participant_indices(federated, config.excluded)
    if config.forget_scenario == "class":
        if federated.data.task != "classification":
            raise ValueError(
                f"forget-scenario='class' needs a classification dataset; {config.dataset!r} is "
                "a segmentation task: use forget-scenario='client' or 'random'"
            )
        labels = federated.data.train_y.numpy()[pool]
        if not (labels == config.forget_class).any():
            present = ", ".join(str(c) for c in np.unique(labels))
            raise ValueError(
                f"forget-class={config.forget_class} has no training examples; classes present: "
                f"{present}"
            )
        mask = labels == config.forget_class
        return ForgetSet("class", pool[mask], pool[~mask], forget_class=config.forget_class)
    rng = np.random.default_rng(config.split_seed + RANDOM_FORGET_SEED_OFFSET)
    size = max(1, round(config.forget_fraction * len(pool)))
    chosen = np.zeros(len(pool), dtype=bool)
    chosen[rng.choice(len(pool), size=size, replace=False)] = True
    return ForgetSet("random", pool[chosen], pool[~chosen])


def check_forget_set(config: FederationConfig) -> ForgetSet:
    """The config's forget set, built before any training so that bad input fails first.

    Raises
    ------
    ConfigError
        For a forget set the data cannot give (a class without examples, a
        trigger that does not fit the images, a target class outside the labels).

    """
    try:
        return forget_set(config, load_federated_data(config))
    except ValueError as error:
        raise ConfigError(str(error)) from error


def drop_forget_set(
    config: FederationConfig, federated: FederatedData, indices: NDArray[np.int64]
) -> NDArray[np.int64]:
    """A client's training ``indices`` without the run's forget set (``drop-forget-set``)."""
    if not config.drop_forget_set:
        return indices
    forget = forget_set(config, federated).forget_index
    return indices[~np.isin(indices, forget)]
