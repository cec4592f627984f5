"""What a centralised unlearning method is: one model, the forget / retain split known.

Centralised methods are the machine-unlearning literature's baselines. They
start from the federation's original global model, see the forget and retain
examples directly (as if the server held every client's data) and return an
unlearned model. ``fedforget compare`` evaluates them on the same forget set
and metrics as the federated methods, as rows of ``"kind": "centralised"``.

A method is one subclass per file and one line in
:data:`fedforget.methods.centralised.CENTRALISED_METHODS`. It declares its
settings (the run-config table ``centralised.<name>``), the scenarios it
serves (``client``, ``random``, ``class``, ``backdoor``; others are refused with the
reason)
and implements :meth:`CentralisedMethod.unlearn`, which reports its cost as
epochs over forget and retain data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fedforget.data.augment import Augmentation
from fedforget.methods.base import ConfigValue, method_settings

ALL_SCENARIOS = frozenset({"client", "random", "class", "backdoor"})
TABLE_PREFIX = "centralised."


@dataclass(frozen=True)
class UnlearningData:
    """The examples a centralised method sees, at training-time representation.

    Attributes
    ----------
    forget_x, forget_y, retain_x, retain_y : torch.Tensor
        The forget and retain training examples (inputs normalised as the
        federation trained on them; no augmentation applied).
    task : str
        ``"classification"`` or ``"segmentation"``.
    num_classes : int
        Output classes of the model.
    scenario : str
        ``"client"``, ``"random"``, ``"class"`` or ``"backdoor"``.
    forget_class : int | None
        The class to forget (``class`` scenario only).
    new_model : Callable[[], nn.Module]
        A freshly initialised model of the federation's architecture (retraining).
    augmentation : Augmentation | None
        The dataset's training-time augmentation when the run enables it.
    seed : int
        Seed for every random choice the method makes.
    device : str
        Where to compute; models are handed back on the CPU.

    """

    forget_x: torch.Tensor
    forget_y: torch.Tensor
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    task: str
    num_classes: int
    scenario: str
    forget_class: int | None
    new_model: Callable[[], nn.Module]
    augmentation: Augmentation | None = None
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class CentralisedOutcome:
    """An unlearned model and what it cost, in epochs over each split (fractions allowed)."""

    model: nn.Module
    forget_epochs: float
    retain_epochs: float


class CentralisedMethod(ABC):
    """A centralised unlearning method: one subclass per file, one registry line.

    Class attributes: ``name`` (registry name), ``defaults`` (its settings, the
    run-config table ``centralised.<name>``), ``limits`` (the upper bound of each
    numeric setting), ``space`` (what ``fedforget tune`` may vary), ``scenarios`` it serves,
    ``tasks`` it applies to, ``reference`` (the paper) and ``summary``.
    """

    name: ClassVar[str]
    table: ClassVar[str]
    """Set from ``name``: ``centralised.<name>``."""
    defaults: ClassVar[Mapping[str, ConfigValue]] = {}
    limits: ClassVar[Mapping[str, float]] = {}
    """The upper bound of each numeric setting (:func:`fedforget.methods.base.limit_problem`)."""
    space: ClassVar[Mapping[str, Any]] = {}
    """What ``fedforget tune`` may vary (:mod:`fedforget.methods.space`; empty: nothing)."""
    scenarios: ClassVar[frozenset[str]] = ALL_SCENARIOS
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    reference: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    scenarios_why: ClassVar[str] = ""
    """Why the method serves only ``scenarios`` (appended to a scenario refusal)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            cls.table = f"{TABLE_PREFIX}{cls.name}"

    @classmethod
    def settings(cls, given: Mapping[str, ConfigValue]) -> dict[str, ConfigValue]:
        """``given`` over the defaults, type-checked (raises ``ValueError`` naming the key)."""
        return method_settings(cls, given)

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Why ``settings`` are invalid for this method ('' if they are valid)."""
        del settings
        return ""

    @classmethod
    def refusal(cls, scenario: str, task: str) -> str:
        """Why this method cannot serve ``scenario`` on a ``task`` ('' if it can)."""
        if task not in cls.tasks:
            return f"{cls.name} applies to {', '.join(cls.tasks)} tasks, not {task}"
        if scenario not in cls.scenarios:
            why = f": {cls.scenarios_why}" if cls.scenarios_why else ""
            return (
                f"{cls.name} serves the {', '.join(sorted(cls.scenarios))} scenario(s), "
                f"not {scenario}{why}"
            )
        return ""

    @abstractmethod
    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """Unlearn the forget set from ``original`` (a copy the method may change in place)."""
