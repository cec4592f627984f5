"""Loops and helpers the centralised methods share.

* :class:`BatchCycle`: seeded, reshuffled-every-pass mini-batches over
  ``(x, y)`` that counts the examples drawn (the method's cost in epochs).
* :func:`run_epochs`: the one epoch loop. It walks a set in mini-batches,
  asks a per-batch loss closure for the loss, steps the optimiser, runs an
  optional ``after_step`` hook (e.g. restoring frozen weights) and stops early
  when an optional ``stop`` rule fires. Returns the epochs actually spent.
* :func:`accuracy` / :func:`mean_loss`: evaluation that leaves the model on
  its device and in its mode (the loop calls it between steps).
* :func:`sgd`: the optimiser the methods use, from their ``lr``, ``momentum``
  and ``weight-decay`` settings.
* :func:`augmentation_for`: the ``augment`` option (TrivialAugmentWide, crop,
  flip; :mod:`fedforget.methods.centralised.augment`).
* :func:`range_problem`: the common checks of settings, with messages that
  name the key and the allowed range.
* :func:`start` / :func:`hand_back`: the model on ``data.device`` in train
  mode, and back on the CPU in eval mode.

Randomness: the batch order draws from a generator seeded with ``data.seed``
and augmentation from one seeded with ``data.seed + 1``
(:func:`generators`), as :func:`fedforget.training.train` does, so switching
augmentation on does not change the batch order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from fedforget.data.augment import Augmentation
from fedforget.methods.base import ConfigValue
from fedforget.methods.centralised.base import UnlearningData
from fedforget.training import EVAL_BATCH_SIZE, loss_function

BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(model, inputs, targets) -> loss`` of one mini-batch (on the device); the loop minimises it."""


def generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """The batch-order generator (``seed``) and the augmentation generator (``seed + 1``)."""
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


def start(original: nn.Module, data: UnlearningData) -> nn.Module:
    """``original`` (changed in place, as the interface allows) on ``data.device``, train mode."""
    model = original.to(torch.device(data.device))
    model.train()
    return model


def hand_back(model: nn.Module) -> nn.Module:
    """The model on the CPU in eval mode, as methods return it."""
    model.to("cpu")
    model.eval()
    return model


class BatchCycle:
    """Mini-batches of ``(x, y)``, reshuffled on every pass, as long as they are asked for.

    A pass draws a fresh permutation from ``generator``; the last batch of a
    pass may be smaller. :attr:`epochs` is the number of examples drawn so
    far over ``len(x)`` (fractions allowed).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        *,
        device: torch.device | str = "cpu",
        augmentation: Augmentation | None = None,
        augment_generator: torch.Generator | None = None,
    ) -> None:
        if len(x) == 0:
            raise ValueError("cannot draw mini-batches from an empty set")
        if augmentation is not None and augment_generator is None:
            raise ValueError("augmentation needs its own generator (augment_generator)")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.generator = generator
        self.device = torch.device(device)
        self.augmentation = augmentation
        self.augment_generator = augment_generator
        self.drawn = 0
        self._pending: list[torch.Tensor] = []

    @property
    def epochs(self) -> float:
        """Examples drawn so far, in passes over the set."""
        return self.drawn / len(self.x)

    def next_indices(self) -> torch.Tensor:
        """Indices of the next mini-batch (a new permutation when a pass ends)."""
        if not self._pending:
            order = torch.randperm(len(self.x), generator=self.generator)
            self._pending = list(order.split(self.batch_size))
        indices = self._pending.pop(0)
        self.drawn += len(indices)
        return indices

    def pass_remaining(self) -> int:
        """Mini-batches left in the current pass (0 at a pass boundary)."""
        return len(self._pending)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(inputs, targets)``, augmented if asked, on the device."""
        indices = self.next_indices()
        inputs, targets = self.x[indices], self.y[indices]
        if self.augmentation is not None and self.augment_generator is not None:
            inputs, targets = self.augmentation(inputs, targets, self.augment_generator)
        return inputs.to(self.device), targets.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self


def run_epochs(
    model: nn.Module,
    batches: BatchCycle,
    batch_loss: BatchLoss,
    optimiser: torch.optim.Optimizer,
    *,
    epochs: float,
    after_step: Callable[[], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> float:
    """Minimise ``batch_loss`` over ``epochs`` passes of ``batches``; return the epochs spent.

    One step per mini-batch: zero the gradients, ``batch_loss(model, inputs,
    targets).backward()``, ``optimiser.step()``, then ``after_step()``. After
    each step ``stop()`` is asked; when it returns True the loop ends there
    and the epochs spent are a fraction (e.g. 1.5). ``stop`` is also asked
    once before the first step (a model that already meets the rule costs 0
    epochs). ``epochs`` may be fractional: the loop runs until at least that
    many passes' examples were drawn. A loss that is not finite raises
    ``FloatingPointError`` (lower the learning rate).
    """
    begin = batches.epochs
    if stop is not None and stop():
        return 0.0
    model.train()
    while batches.epochs - begin < epochs - 1e-12:
        inputs, targets = next(batches)
        optimiser.zero_grad(set_to_none=True)
        loss = batch_loss(model, inputs, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the unlearning loss became {loss.item()} after "
                f"{batches.epochs - begin:.2f} epoch(s): lower the learning rate"
            )
        loss.backward()
        optimiser.step()
        if after_step is not None:
            after_step()
        if stop is not None and stop():
            break
    return batches.epochs - begin


def task_loss(task: str = "classification") -> BatchLoss:
    """The task's training loss as a :data:`BatchLoss` (cross-entropy; Dice-CE for segmentation)."""
    criterion = loss_function(task)

    def batch_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return criterion(model(inputs), targets)

    return batch_loss


def _batches(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``model``'s outputs on ``x`` (and ``y``'s batch), eval mode, no gradients.

    The model stays on its device and gets its train / eval mode back once the
    batches are all taken.
    """
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start_at in range(0, len(x), EVAL_BATCH_SIZE):
                inputs = x[start_at : start_at + EVAL_BATCH_SIZE].to(device)
                targets = None if y is None else y[start_at : start_at + EVAL_BATCH_SIZE].to(device)
                yield model(inputs), targets
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Classification accuracy on ``(x, y)``, evaluated in eval mode where the model is.

    The model stays on its device and gets its train / eval mode back, so
    loops can call this between steps. NaN on an empty set.
    """
    if len(x) == 0:
        return float("nan")
    correct = sum(
        int((logits.argmax(dim=1) == target).sum()) for logits, target in _batches(model, x, y)
    )
    return correct / len(x)


def mean_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str = "classification"
) -> float:
    """The task's mean training loss on ``(x, y)``, eval mode, model left where it is."""
    if len(x) == 0:
        return float("nan")
    criterion = loss_function(task)
    total = 0.0
    for outputs, targets in _batches(model, x, y):
        total += float(criterion(outputs, targets)) * len(outputs)
    return total / len(x)


def require_finite_outputs(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ``FloatingPointError`` when the model's outputs on ``x`` are not all finite.

    A loss can stay finite on every step while the weights grow until the
    outputs overflow (an ascent with a large learning rate), so a method's
    model is checked once it is handed back; eval mode, model left where it is.
    """
    bad = sum(
        int((~torch.isfinite(outputs)).flatten(1).any(dim=1).sum())
        for outputs, _ in _batches(model, x)
    )
    if bad:
        largest = max((float(p.abs().max()) for p in model.parameters() if p.numel()), default=0.0)
        raise FloatingPointError(
            f"the unlearned model's outputs are not finite on {bad} of {len(x)} example(s) "
            f"(its largest weight is {largest:.3g}): lower the learning rate"
        )


def sgd(parameters: Iterable[nn.Parameter], settings: Mapping[str, ConfigValue]) -> torch.optim.SGD:
    """SGD with ``lr`` and, where the method has them, ``momentum`` and ``weight-decay``."""
    return torch.optim.SGD(
        parameters,
        lr=float(settings["lr"]),
        momentum=float(settings.get("momentum", 0.0)),
        weight_decay=float(settings.get("weight-decay", 0.0)),
    )


def augmentation_for(
    data: UnlearningData, settings: Mapping[str, ConfigValue]
) -> Augmentation | None:
    """TrivialAugmentWide + crop + flip when ``settings["augment"]`` is on, else None.

    The [0, 1] map uses the minimum and maximum over the forget and retain
    inputs, so every batch is mapped the same way.
    """
    if not bool(settings.get("augment", False)):
        return None
    if data.task != "classification":
        raise ValueError(
            f"augment (TrivialAugmentWide, crop, flip) is for classification images; "
            f"set it to false for a {data.task} task"
        )
    from fedforget.methods.centralised.augment import bounds_of, unlearning_augmentation

    return unlearning_augmentation(bounds_of(data.forget_x, data.retain_x))


def require_nonempty(data: UnlearningData, *, forget: bool = False, retain: bool = False) -> None:
    """Raise ``ValueError`` when a split the method needs holds no example."""
    if forget and len(data.forget_x) == 0:
        raise ValueError("the forget set is empty: there is nothing to unlearn")
    if retain and len(data.retain_x) == 0:
        raise ValueError(
            "the retain set is empty: this method trains on retained data; use ga instead"
        )


def range_problem(
    table: str,
    settings: Mapping[str, ConfigValue],
    *,
    positive: Iterable[str] = (),
    non_negative: Iterable[str] = (),
    at_least_one: Iterable[str] = (),
    unit_closed: Iterable[str] = (),
    unit_open: Iterable[str] = (),
    below_one: Iterable[str] = (),
) -> str:
    """The first setting out of its range, as a message naming ``table.key`` ('' if none).

    ``positive``: finite > 0; ``non_negative``: finite >= 0; ``at_least_one``:
    a whole number >= 1; ``unit_closed``: in [0, 1]; ``unit_open``: in (0, 1];
    ``below_one``: in [0, 1) (e.g. momentum).
    """
    rules: list[tuple[Iterable[str], Callable[[float], bool], str]] = [
        (positive, lambda v: v > 0, "a finite number > 0"),
        (non_negative, lambda v: v >= 0, "a finite number >= 0"),
        (at_least_one, lambda v: v >= 1, "a whole number >= 1"),
        (unit_closed, lambda v: 0 <= v <= 1, "in [0, 1]"),
        (unit_open, lambda v: 0 < v <= 1, "in (0, 1]"),
        (below_one, lambda v: 0 <= v < 1, "in [0, 1)"),
    ]
    for keys, holds, wanted in rules:
        for key in keys:
            value = settings[key]
            number = _number(value)
            if number is None or not math.isfinite(number) or not holds(number):
                return f"{table}.{key} must be {wanted}, got {value!r}"
    return ""


def _number(value: ConfigValue) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
