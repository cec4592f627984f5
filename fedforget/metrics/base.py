"""The types every metric shares: what it is given and what it says about itself.

A metric is a function ``(MetricContext, Splits) -> float``:

* :class:`Splits`: the forget / retain / test examples (test-time tensors, no
  augmentation), the task and, for class unlearning, the forgotten class;
* :class:`MetricContext`: the models to compare (the unlearned one, the
  retrained reference(s), the original), optional shadow pairs for U-LiRA and
  the test-score history for recovery, the options, and a cache of model
  outputs so that several metrics on one model run it once per split.

:class:`MetricInfo` is the metric's description for tables: what it measures,
its kind, its ideal value and in which direction it is good.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fedforget.metrics.outputs import ClassOutputs, OutputCache

if TYPE_CHECKING:
    from fedforget.data.split import SplitDataset
    from fedforget.scenarios import ForgetSet

Part = Literal["forget", "retain", "test"]
PARTS: tuple[Part, ...] = ("forget", "retain", "test")
TASKS = ("classification", "segmentation")
SCENARIOS = ("client", "random", "class", "backdoor")
"""Forget scenarios (``fedforget.config.FORGET_SCENARIOS``)."""
SAMPLE_SCENARIOS = ("client", "random", "backdoor")
"""Scenarios that forget examples rather than a whole class."""

Requirement = Literal["retrained", "references", "original", "shadows", "history", "budget"]
"""What a metric needs in its :class:`MetricContext` beyond the unlearned model
(``references``: at least two retrained models on the same data)."""
MIN_REFERENCES = 2
"""Retrained models a spread (a noise floor, U-LiRA's Gaussians) needs at least."""

Direction = Literal["higher", "lower", "retrain"]
"""``higher`` / ``lower`` is better, or ``retrain``: the closer to the retrained model's value."""


@dataclass(frozen=True)
class Splits:
    """The examples a model is evaluated on, as test-time tensors.

    Parameters
    ----------
    forget_x, forget_y : torch.Tensor
        The examples to forget (the targets' whole training data, a random
        sample, or every training example of ``forget_class``).
    retain_x, retain_y : torch.Tensor
        The other training examples of the clients that take part.
    test_x, test_y : torch.Tensor
        The held-out test set.
    task : str (default: ``"classification"``)
        ``"classification"`` or ``"segmentation"``.
    num_classes : int (default: 10)
        Output classes of the model.
    scenario : str (default: ``"client"``)
        ``"client"``, ``"random"``, ``"class"`` or ``"backdoor"``.
    forget_class : int | None (default: None)
        The forgotten class; set exactly when ``scenario`` is ``"class"``.
    backdoor_x : torch.Tensor | None (default: None)
        The test images whose label is not the backdoor's target class, with
        the trigger; set exactly when ``scenario`` is ``"backdoor"``.
    backdoor_target : int | None (default: None)
        The class the trigger asks for (backdoor scenario).

    """

    forget_x: torch.Tensor
    forget_y: torch.Tensor
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    task: str = "classification"
    num_classes: int = 10
    scenario: str = "client"
    forget_class: int | None = None
    backdoor_x: torch.Tensor | None = None
    backdoor_target: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: use one of {', '.join(TASKS)}")
        if self.scenario not in SCENARIOS:
            raise ValueError(
                f"unknown forget scenario {self.scenario!r}: use one of {', '.join(SCENARIOS)}"
            )
        if (self.scenario == "class") != (self.forget_class is not None):
            raise ValueError(
                "forget_class is set exactly for scenario='class': pass both or neither"
            )
        backdoor = self.backdoor_x is not None and self.backdoor_target is not None
        if (self.scenario == "backdoor") != backdoor:
            raise ValueError(
                "backdoor_x and backdoor_target are set exactly for scenario='backdoor': "
                "pass the triggered test images and the target class"
            )

    def part(self, name: Part) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs and labels of ``"forget"``, ``"retain"`` or ``"test"``."""
        if name == "forget":
            return self.forget_x, self.forget_y
        if name == "retain":
            return self.retain_x, self.retain_y
        if name == "test":
            return self.test_x, self.test_y
        raise ValueError(f"unknown split part {name!r}: use one of {', '.join(PARTS)}")

    @classmethod
    def from_forget_set(cls, data: SplitDataset, forget: ForgetSet) -> Splits:
        """The splits of a scenario's :class:`~fedforget.scenarios.ForgetSet` of ``data``."""
        forget_index = torch.from_numpy(np.asarray(forget.forget_index, dtype=np.int64))
        retain_index = torch.from_numpy(np.asarray(forget.retain_index, dtype=np.int64))
        trigger = forget.trigger
        return cls(
            forget_x=data.train_x[forget_index],
            forget_y=data.train_y[forget_index],
            retain_x=data.train_x[retain_index],
            retain_y=data.train_y[retain_index],
            test_x=data.test_x,
            test_y=data.test_y,
            task=data.task,
            num_classes=data.num_classes,
            scenario=forget.scenario,
            forget_class=forget.forget_class,
            backdoor_x=None if trigger is None else trigger.attack_images(data.test_x, data.test_y),
            backdoor_target=None if trigger is None else trigger.target_class,
        )


@dataclass(frozen=True)
class ShadowModels:
    """U-LiRA's K shadow pairs for one forget set (pair k = ``out[k]``, ``unlearned[k]``).

    ``out[k]`` was trained without the forget set (retrained, seed k);
    ``unlearned[k]`` was trained with it and then unlearned by the method under
    test (seed k).
    """

    out: tuple[nn.Module, ...]
    unlearned: tuple[nn.Module, ...]

    def __post_init__(self) -> None:
        if len(self.out) != len(self.unlearned) or len(self.out) < 2:
            raise ValueError(
                f"U-LiRA needs K >= 2 shadow pairs (as many OUT as unlearned models); got "
                f"{len(self.out)} OUT and {len(self.unlearned)} unlearned"
            )


@dataclass(frozen=True)
class RecoveryHistory:
    """The test score (accuracy or Dice) of the unlearned run round by round.

    ``scores`` holds ``(round, score)`` pairs; the request took effect in round
    ``request_round + 1`` (``unlearn-at-round``). ``budget``: the fixed number
    of rounds after the request at which ``score_after_budget`` is read.
    """

    request_round: int
    scores: tuple[tuple[int, float], ...]
    budget: int | None = None


@dataclass(frozen=True)
class MetricOptions:
    """Settings of the metrics that have any (defaults in brackets).

    Parameters
    ----------
    seed : int (default: 0)
        Seeds the SVC-MIA subsampling, MIA-NN's split and relearning's batches.
    svc_max_per_class : int | None (default: 5000)
        At most this many members and as many non-members train each SVC (its
        cost grows with the square of the sample count); None: no cap.
    mia_nn_neighbours : int (default: 3)
        Nearest classes of the forgotten class whose probabilities MIA-NN uses.
    ulira_variance : str (default: ``"per-example"``)
        ``"per-example"`` Gaussians, or ``"global"``: one variance per
        distribution pooled over examples (LiRA's fixed variance, steadier for
        few shadow pairs).
    relearn_lr, relearn_batch_size, relearn_max_steps : float, int, int
        (default: 0.01, 32, 100) Plain SGD on the forget data for relearn time.

    """

    seed: int = 0
    svc_max_per_class: int | None = 5000
    mia_nn_neighbours: int = 3
    ulira_variance: Literal["per-example", "global"] = "per-example"
    relearn_lr: float = 0.01
    relearn_batch_size: int = 32
    relearn_max_steps: int = 100


@dataclass(frozen=True)
class MetricContext:
    """The models a metric compares, and what else some metrics need.

    Parameters
    ----------
    unlearned : nn.Module
        The model under evaluation (a method's result, or any model).
    retrained : tuple[nn.Module, ...] (default: ())
        Reference models retrained without the forget set (several seeds
        where available).
    original : nn.Module | None (default: None)
        The model trained with the forget set, before unlearning.
    shadows : ShadowModels | None (default: None)
        U-LiRA's shadow pairs.
    history : RecoveryHistory | None (default: None)
        The unlearned run's test scores by round.
    options : MetricOptions (default: MetricOptions())
    device : str (default: ``"cpu"``)
    cache : OutputCache (default: a new one)
        The models' outputs (and derived numbers such as SVC-MIA scores); pass
        one cache to several contexts that share models, on the same splits
        and with the same options, to compute those models' outputs once.

    """

    unlearned: nn.Module
    retrained: tuple[nn.Module, ...] = ()
    original: nn.Module | None = None
    shadows: ShadowModels | None = None
    history: RecoveryHistory | None = None
    options: MetricOptions = field(default_factory=MetricOptions)
    device: str = "cpu"
    cache: OutputCache = field(default_factory=OutputCache, repr=False, compare=False)

    def has(self, requirement: Requirement) -> bool:
        """Whether this context holds what ``requirement`` names."""
        if requirement == "retrained":
            return bool(self.retrained)
        if requirement == "references":
            return len(self.retrained) >= MIN_REFERENCES
        if requirement == "original":
            return self.original is not None
        if requirement == "shadows":
            return self.shadows is not None
        if requirement == "history":
            return self.history is not None
        if requirement == "budget":
            return self.history is not None and self.history.budget is not None
        raise ValueError(f"unknown metric requirement {requirement!r}")

    def require_original(self) -> nn.Module:
        """The original model, or an error saying how to supply it."""
        if self.original is None:
            raise ValueError("this metric needs the original model: pass original=...")
        return self.original

    def class_outputs(self, model: nn.Module, splits: Splits, part: Part) -> ClassOutputs:
        """``model``'s logits, probabilities, losses and correctness on a part (cached)."""
        x, y = splits.part(part)
        return self.cache.classification(model, x, y, splits.num_classes, self.device)

    def per_example(self, model: nn.Module, splits: Splits, part: Part) -> dict[str, NDArray]:
        """Per-example ``loss`` and ``correct`` or ``dice`` / ``dice_fg`` on a part (cached)."""
        x, y = splits.part(part)
        if splits.task == "segmentation":
            return self.cache.segmentation(model, x, y, self.device)
        out = self.class_outputs(model, splits, part)
        return {"loss": out.loss, "correct": out.correct}


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is, for tables and for choosing which metrics apply.

    Parameters
    ----------
    name : str
        The registry name and result column.
    description : str
        What it measures, in one sentence.
    kind : str
        ``"accuracy"``, ``"dice"``, ``"loss"``, ``"fraction predicted member"``,
        ``"fraction classified original"``, ``"attack accuracy"``, ``"attack AUC"``,
        ``"attack success rate"``,
        ``"divergence"``, ``"gap"``, ``"rounds"``, ``"score"`` or ``"steps"``.
    ideal : str
        The ideal value in words; for an unlearning metric, the retrained
        model's value.
    direction : Direction
        ``"higher"`` or ``"lower"`` is better, or ``"retrain"``: closer to
        the retrained model's value is better.
    ideal_value : float | None (default: None)
        The ideal as a number where it is one fixed number (U-LiRA 0.5, a gap 0).
    tasks : tuple[str, ...] (default: both tasks)
    scenarios : tuple[str, ...] (default: every forget scenario)
    requires : tuple[Requirement, ...] (default: ())
        Context entries needed beyond the unlearned model.
    headline : bool (default: False)
        A column of the terminal table of ``fedforget run`` / ``compare`` and
        one of the first columns of the experiment report (in registry order).
    shown : bool (default: True)
        Whether the tables and the report show it; False for a diagnostic the
        rows carry but no table needs (the test loss).

    """

    name: str
    description: str
    kind: str
    ideal: str
    direction: Direction
    ideal_value: float | None = None
    tasks: tuple[str, ...] = TASKS
    scenarios: tuple[str, ...] = SCENARIOS
    requires: tuple[Requirement, ...] = ()
    headline: bool = False
    shown: bool = True

    def as_dict(self) -> dict[str, object]:
        """The metadata as a plain dict (for JSON and tables)."""
        return asdict(self)

    def missing(self, context: MetricContext, splits: Splits) -> str:
        """Why the metric cannot run on ``context`` and ``splits``; ``""`` if it can."""
        if splits.task not in self.tasks:
            return f"{self.name} applies to {' / '.join(self.tasks)} tasks, not {splits.task}"
        if splits.scenario not in self.scenarios:
            return (
                f"{self.name} applies to the {' / '.join(self.scenarios)} forget scenario(s), "
                f"not {splits.scenario}"
            )
        if "references" in self.requires and not context.has("references"):
            return (
                f"{self.name} needs references >= {MIN_REFERENCES} (retrained models on the "
                f"same data), got {len(context.retrained)}"
            )
        absent = [r for r in self.requires if not context.has(r)]
        if absent:
            return f"{self.name} needs {', '.join(absent)} in the MetricContext"
        return ""


MetricFunction = Callable[[MetricContext, Splits], float]


@dataclass(frozen=True)
class Metric:
    """A registry entry: the metric's description and its function."""

    info: MetricInfo
    compute: MetricFunction
