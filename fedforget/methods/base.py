"""What a federated unlearning method is: the interface the spine calls.

The spine (:mod:`fedforget.federated`) runs the rounds, knows the clients and
takes the requests; a method decides what one unlearning step does. A step
takes one or more rounds. In each, the spine asks the method for a
:class:`RoundPlan` (which model to send, to which clients, with which action),
sends it, validates the replies, and hands them to :meth:`FederatedMethod.apply`,
which returns the new global model and whether the step is done. After the
step the spine forgets the targets for good and recovers with the remaining
clients (plain FedAvg).

Between steps the methods that keep history observe the ordinary rounds
(:meth:`~FederatedMethod.observe`): PUF keeps each client's latest update
there, FedEraser its history. Client-side computation (PGA's ascent, FedQUIT's distillation, ...)
runs in the ClientApp as the Flower action named after the method
(``train.<name>``): :attr:`FederatedMethod.client_step` is that function.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fedforget.arrays import Arrays
from fedforget.constants import ConfigValue
from fedforget.state.store import InMemoryPseudoGradientStore, PseudoGradientStore

if TYPE_CHECKING:  # the server-side arithmetic needs no torch; client steps bring it
    import torch
    from torch import nn

TRAIN_ACTION = "train"
"""The ordinary local training every ClientApp runs."""


class StepFailed(Exception):
    """A step could not complete (e.g. a target sent no valid update); nothing is forgotten."""


@dataclass(frozen=True)
class Needs:
    """What a method needs from the federation; a request that cannot meet it is refused.

    Attributes
    ----------
    target_online : bool
        The targets must answer in the unlearning round (their data is used).
    history : str
        What the server must keep from ordinary rounds ("" for nothing), e.g.
        "the latest update of each client" or "every client update".
    client_step : str
        Extra computation on clients, in words ("" for none).
    tasks : tuple[str, ...]
        Task types the method applies to.
    concurrent : bool
        Whether one step may forget several clients at once.

    """

    target_online: bool = False
    history: str = ""
    client_step: str = ""
    tasks: tuple[str, ...] = ("classification", "segmentation")
    concurrent: bool = True


@dataclass(frozen=True)
class ClientUpdate:
    """A validated reply: the client's returned model and its update against what it got."""

    client_id: str
    arrays: Arrays
    delta: Arrays
    num_examples: int


@dataclass(frozen=True)
class UnlearningStep:
    """One step that forgets ``targets`` with ``method``, as the spine chose it."""

    requests: tuple[Any, ...]  # the UnlearningRequests served together
    method: str
    targets: tuple[str, ...]
    settings: Mapping[str, ConfigValue]
    first_round: int


@dataclass
class RoundPlan:
    """What one round of a step sends.

    ``clients`` maps each client id to its action: :data:`TRAIN_ACTION` or the
    method's own client step (its registry name). ``epochs`` is the local
    epochs each of them runs (for the cost record), ``config`` overrides run
    config keys in their messages and ``extra`` adds ArrayRecords (name to
    arrays) for a client step.
    """

    arrays: Arrays
    clients: dict[str, str] = field(default_factory=dict)
    epochs: float = 0.0
    config: dict[str, ConfigValue] = field(default_factory=dict)
    extra: dict[str, Arrays] = field(default_factory=dict)


@dataclass
class StepState:
    """What a method holds during one step, from its first round to its last.

    :meth:`FederatedMethod.begin` makes it when the step begins; the spine keeps
    it with the step, hands it to every :meth:`~FederatedMethod.plan` and
    :meth:`~FederatedMethod.apply` of the step, advances :attr:`index` after
    each round, and drops it when the step ends (done or abandoned). A method
    that holds more during a step (MoDe's degradation model, FedEraser's replay
    schedule) subclasses it, so that the method instance keeps only what lasts
    across steps.
    """

    index: int = 0
    """The step's round: 0, 1, ... (the spine advances it after each applied round)."""


@dataclass(frozen=True)
class StepResult:
    """The global model after a round of a step, and whether the step is complete."""

    arrays: Arrays
    done: bool = True


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the federation's model and recipe."""

    initial_arrays: Arrays
    statistic_keys: frozenset[str]
    first_conv_key: str
    head_keys: tuple[str, ...]
    task: str
    local_epochs: int
    seed: int
    random_arrays: Callable[[int], Arrays]
    """The model freshly initialised under another seed."""
    settings: Mapping[str, Mapping[str, ConfigValue]] = field(default_factory=dict)
    """The run config's values of each method table (what a method keeps may depend on them)."""
    pseudo_gradient_store: Callable[[], PseudoGradientStore] = InMemoryPseudoGradientStore
    """The store of a method that keeps each client's latest update (run config ``store``,
    ``store-dtype``): a new in-memory store per call, or the run's one disk store."""


@dataclass(frozen=True)
class ClientData:
    """A client's training data as a client step sees it."""

    x: torch.Tensor
    y: torch.Tensor
    task: str
    num_classes: int
    batch_size: int
    device: torch.device


class ClientStep(Protocol):
    """A method's computation on a client: changes ``model`` in place."""

    def __call__(
        self,
        model: nn.Module,
        data: ClientData,
        settings: Mapping[str, ConfigValue],
        extra: Mapping[str, dict[str, torch.Tensor]],
        seed: int,
    ) -> float:
        """Run the step; return its mean loss."""
        ...


class FederatedMethod(ABC):
    """A federated unlearning method: one subclass per file, one registry line.

    Class attributes declare the method: ``name`` (its registry name),
    ``table`` (its run-config table: ``<table>.<key>``), ``defaults`` (its
    settings), ``limits`` (the upper bound of each numeric setting), ``needs``,
    ``space`` (what ``fedforget tune`` may vary), ``reference`` (the paper,
    and the code the implementation was checked against), ``summary`` (one
    line) and ``deviations`` (one line: where the default behaviour differs
    from the published method and why; "" for none).
    """

    name: ClassVar[str]
    table: ClassVar[str]
    defaults: ClassVar[Mapping[str, ConfigValue]] = {}
    needs: ClassVar[Needs] = Needs()
    reference: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    deviations: ClassVar[str] = ""
    client_step: ClassVar[ClientStep | None] = None
    run_only: ClassVar[frozenset[str]] = frozenset()
    """Settings only the run's configuration may set (bounds on what requests ask for)."""
    limits: ClassVar[Mapping[str, float]] = {}
    """The upper bound of each numeric setting (see :func:`limit_problem`)."""
    space: ClassVar[Mapping[str, Any]] = {}
    """What ``fedforget tune`` may vary (:mod:`fedforget.methods.space`; empty: nothing)."""
    forgets_by_update: ClassVar[bool] = True
    """Whether the step's change of the model is what forgets: a step that leaves the model
    as it was is then refused (nothing was forgotten). False for a method that forgets by
    leaving the targets out (Natural)."""

    def __init__(self, context: MethodContext) -> None:
        self.context = context

    # ------------------------------------------------------------- settings
    @property
    def run_settings(self) -> dict[str, ConfigValue]:
        """The run config's settings of this method (defaults where the run sets none)."""
        return method_settings(type(self), self.context.settings.get(self.table, {}))

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Why ``settings`` are invalid for this method ('' if they are valid)."""
        del settings
        return ""

    # --------------------------------------------------------- ordinary rounds
    def observe(  # noqa: B027 (optional hook: most methods keep nothing)
        self, server_round: int, sent: Arrays, updates: Sequence[ClientUpdate]
    ) -> None:
        """See an ordinary round's validated updates (default: keep nothing)."""

    # -------------------------------------------------------------- the step
    def targets_must_be_online(self, settings: Mapping[str, ConfigValue]) -> bool:
        """Whether the targets must answer in the step (default: ``needs.target_online``)."""
        del settings
        return self.needs.target_online

    def refusal(self, targets: Sequence[str], settings: Mapping[str, ConfigValue]) -> str:
        """Why this method cannot forget ``targets`` now ('' if it can)."""
        del targets, settings
        return ""

    def begin(self, step: UnlearningStep, global_arrays: Arrays) -> StepState:
        """The state of ``step``, which begins now from ``global_arrays`` (default: its index).

        Called once per step, after :meth:`refusal` accepted it and before its
        first :meth:`plan`.
        """
        del step, global_arrays
        return StepState()

    @abstractmethod
    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        """Round ``state.index`` (0, 1, ...) of ``step``; ``remaining`` are the eligible clients."""

    @abstractmethod
    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """The global model after the round ``plan`` described, from its validated replies.

        ``state`` is the one :meth:`plan` got for this round.
        """

    def forget(self, client_ids: Sequence[str]) -> None:
        """Erase what the server keeps of ``client_ids`` (right to be forgotten)."""
        del client_ids

    def stored_bytes(self) -> int:
        """Bytes the method keeps on the server now."""
        return 0

    def stored_clients(self) -> list[str]:
        """Clients the method keeps something of."""
        return []

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What the method keeps between steps, for the checkpoint (default: nothing).

        JSON values (dict with str keys, list, str, int, float, bool, None) with
        numpy arrays at any leaf. Checkpoints are taken only between steps, so
        what a method holds during a step (its :class:`StepState`: MoDe's degradation
        model, FedEraser's replay position) is not part of it: a crash during a step repeats the
        step from the checkpoint taken before it. A method that keeps anything
        across rounds (:meth:`observe`) must override this and :meth:`load_state_dict`.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Return to the state :meth:`state_dict` described (a resumed run)."""
        if state:
            raise ValueError(
                f"{self.name} keeps no state, but the checkpoint holds some for it "
                f"({', '.join(sorted(state))}): resume with the fedforget that wrote it"
            )

    def state_saved(self) -> None:  # noqa: B027 (optional hook)
        """The checkpoint holding :meth:`state_dict` is durable (default: nothing to do).

        A method whose state lives partly in files deletes here what the saved
        state no longer names (PUF's disk store: a forgotten client's file).
        """


class TargetStepMethod(FederatedMethod):
    """A one-round step the targets compute with the method's client step.

    The plan sends the global model to the targets with the method's action
    (``settings["epochs"]`` local epochs for the cost record); the new global
    model is the example-weighted mean of what they return. FedQUIT is this as
    it stands; PGA changes what is sent, FedAU what is made of the replies.
    """

    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        """One round: the global model to the targets, who run the client step."""
        return RoundPlan(
            global_arrays,
            dict.fromkeys(step.targets, self.name),
            epochs=float(step.settings["epochs"]),
        )

    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        """The example-weighted mean of the targets' returned models."""
        return StepResult(fedavg(plan.arrays, target_updates(step, updates)))


def target_updates(step: UnlearningStep, updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
    """The targets' validated updates of a step round.

    Raises
    ------
    StepFailed
        Naming the targets that sent none: the step cannot forget them.

    """
    results = [u for u in updates if u.client_id in step.targets]
    missing = sorted(set(step.targets) - {u.client_id for u in results})
    if missing:
        raise StepFailed(
            f"client(s) {', '.join(missing)} returned no valid reply to the {step.method} step "
            f"that began in round {step.first_round}; nothing was forgotten: resubmit when they "
            f"are online"
        )
    return results


def weights_by_examples(updates: Sequence[ClientUpdate]) -> list[tuple[float, ClientUpdate]]:
    """Each update with its FedAvg weight ``n_k / sum n``."""
    total = sum(u.num_examples for u in updates)
    return [(u.num_examples / total, u) for u in updates]


def fedavg(sent: Arrays, updates: Sequence[ClientUpdate]) -> Arrays:
    """FedAvg of ``updates`` computed against ``sent`` (the model they trained from).

    Every floating-point array (parameters and running statistics) moves by the
    example-weighted mean update; integer arrays keep ``sent``'s values.
    """
    from fedforget.arrays import weighted_sum

    return weighted_sum(sent, [(w, u.delta) for w, u in weights_by_examples(updates)])


class Configurable(Protocol):
    """A method class with settings: federated or centralised."""

    name: ClassVar[str]
    table: ClassVar[str]
    defaults: ClassVar[Mapping[str, ConfigValue]]
    limits: ClassVar[Mapping[str, float]]

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Why ``settings`` are invalid for this method ('' if they are valid)."""
        ...


def is_number(value: object) -> bool:
    """True for an int or a float setting (a bool is neither)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def unbounded_settings(method: type[Configurable]) -> list[str]:
    """The numeric settings of ``method`` that declare no upper bound in ``limits``.

    Every built-in method bounds each of its numeric settings (a test holds
    them to it): an unbounded epoch count or round count lets one request
    occupy the federation for as long as it likes.
    """
    return sorted(k for k, v in method.defaults.items() if is_number(v) and k not in method.limits)


def limit_problem(method: type[Configurable], settings: Mapping[str, ConfigValue]) -> str:
    """The first setting above its bound in ``method.limits``, as a message ('' if none).

    The bounds hold for the run's configuration and for a request's options
    alike; the lower bounds and the relations between settings are the
    method's own :meth:`check_settings`.
    """
    for key, bound in method.limits.items():
        value = settings.get(key)
        if is_number(value) and not float(value) <= bound:  # type: ignore[arg-type]
            return (
                f"{method.table}.{key} must be at most {bound:g}, got {value!r}: each setting "
                f"of {method.name} is bounded so that one request cannot occupy the "
                "federation; use a smaller value"
            )
    return ""


def settings_problem(method: type[Configurable], settings: Mapping[str, ConfigValue]) -> str:
    """Why ``settings`` are invalid for ``method``: above a bound, or its own check ('' if none)."""
    return limit_problem(method, settings) or method.check_settings(settings)


def method_settings(
    method: type[Configurable], overrides: Mapping[str, ConfigValue]
) -> dict[str, ConfigValue]:
    """The method's defaults with ``overrides`` (keys of its table) applied and type-checked.

    Raises
    ------
    ValueError
        On a key the method does not have, or a value of another type; the
        message names the key and the valid ones.

    """
    settings = dict(method.defaults)
    for key, value in overrides.items():
        if key not in settings:
            valid = ", ".join(sorted(method.defaults)) or "none"
            raise ValueError(
                f"{method.table}.{key} is not a setting of {method.name}; its settings are: {valid}"
            )
        settings[key] = coerce_setting(f"{method.table}.{key}", value, settings[key])
    return settings


def request_settings(
    method: type[FederatedMethod],
    run: Mapping[str, ConfigValue],
    options: Mapping[str, ConfigValue],
) -> dict[str, ConfigValue]:
    """The settings a request runs with: the run's, with the request's options applied.

    Raises
    ------
    ValueError
        On an option the method does not have, of another type, one only the
        run may set (``run_only``), a setting above its bound (``limits``), or
        settings the method's check refuses.

    """
    fixed = sorted(set(options) & method.run_only)
    if fixed:
        raise ValueError(
            f"{method.table}.{fixed[0]} bounds what requests may ask for: only the run's "
            "configuration sets it (--run-config), a request cannot"
        )
    settings = method_settings(method, {**run, **options})
    problem = settings_problem(method, settings)
    if problem:
        raise ValueError(problem)
    return settings


def coerce_setting(key: str, value: object, default: ConfigValue) -> ConfigValue:
    """``value`` as the type of ``default``, or a ValueError naming ``key``."""
    expected = type(default)
    if expected is bool and isinstance(value, bool):
        return value
    if expected is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, str):
        return value
    raise ValueError(
        f"{key} must be of type {expected.__name__}, got {value!r} ({type(value).__name__})"
    )
