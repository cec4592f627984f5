"""Model outputs on a set of examples, computed once per (model, examples).

Every metric reads a model through these: classification gives logits,
softmax probabilities, per-example cross-entropy and correctness (the same
numbers as :func:`fedforget.training.per_example_loss`); segmentation gives
:func:`fedforget.training.per_example_metrics` (loss, Dice with and without
background). Inputs are used as given: test-time tensors, no augmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from fedforget.training import EVAL_BATCH_SIZE, per_example_metrics


@dataclass(frozen=True)
class ClassOutputs:
    """A classifier's outputs on ``n`` examples (float64 arrays, labels int64)."""

    logits: NDArray[np.float64]
    """``(n, C)`` raw outputs."""
    probs: NDArray[np.float64]
    """``(n, C)`` softmax probabilities."""
    labels: NDArray[np.int64]
    """``(n,)`` true classes."""
    loss: NDArray[np.float64]
    """``(n,)`` cross-entropy ``-log p_y``."""
    correct: NDArray[np.float64]
    """``(n,)`` 1.0 where the arg-max class is the label."""


@torch.no_grad()
def class_outputs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    device: torch.device | str = "cpu",
) -> ClassOutputs:
    """Run ``model`` (eval mode) over ``x`` in batches; hand it back on the CPU."""
    device = torch.device(device)
    model.to(device)
    model.eval()
    logits, losses, correct = [], [], []
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        batch_logits = model(x[start : start + EVAL_BATCH_SIZE].to(device))
        target = y[start : start + EVAL_BATCH_SIZE].to(device)
        losses.append(F.cross_entropy(batch_logits, target, reduction="none").double().cpu())
        correct.append((batch_logits.argmax(dim=1) == target).double().cpu())
        logits.append(batch_logits.double().cpu())
    model.to("cpu")
    if not logits:
        empty = np.zeros((0, num_classes))
        return ClassOutputs(empty, empty, np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    all_logits = torch.cat(logits)
    return ClassOutputs(
        logits=all_logits.numpy(),
        probs=torch.softmax(all_logits, dim=1).numpy(),
        labels=y.cpu().numpy().astype(np.int64),
        loss=torch.cat(losses).numpy(),
        correct=torch.cat(correct).numpy(),
    )


@dataclass
class OutputCache:
    """Outputs keyed by (model, input tensor) object identity.

    Each entry keeps its model and tensor alive, so an identity cannot be
    reused by another object while the cache lives. A model changed in place
    after it was evaluated needs a new cache (a new ``MetricContext``). One
    cache may serve several contexts that share models (the
    :class:`~fedforget.experiment.evaluation.Evaluator`'s references, whose
    outputs are then computed once for all its rows); :meth:`release` drops a
    model that is done with.
    """

    _classification: dict[tuple[int, int], tuple[object, object, ClassOutputs]] = field(
        default_factory=dict
    )
    _segmentation: dict[tuple[int, int], tuple[object, object, dict[str, NDArray]]] = field(
        default_factory=dict
    )

    _values: dict[tuple[str, int, int], tuple[object, object, float]] = field(default_factory=dict)

    def value(
        self, name: str, model: nn.Module, data: object, compute: Callable[[], float]
    ) -> float:
        """A derived number of ``model`` on ``data`` (e.g. an SVC-MIA score), computed once."""
        key = (name, id(model), id(data))
        if key not in self._values:
            self._values[key] = (model, data, compute())
        return self._values[key][2]

    def classification(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        device: torch.device | str = "cpu",
    ) -> ClassOutputs:
        """:func:`class_outputs`, computed once."""
        key = (id(model), id(x))
        if key not in self._classification:
            self._classification[key] = (model, x, class_outputs(model, x, y, num_classes, device))
        return self._classification[key][2]

    def segmentation(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str
    ) -> dict[str, NDArray]:
        """Per-image ``loss``, ``dice`` and ``dice_fg``, computed once."""
        key = (id(model), id(x))
        if key not in self._segmentation:
            values = per_example_metrics(model, x, y, "segmentation", device)
            self._segmentation[key] = (model, x, values)
        return self._segmentation[key][2]

    def models(self) -> list[nn.Module]:
        """The models whose outputs or derived numbers it holds (each once)."""
        held = [
            entry[0]
            for entries in (self._classification, self._segmentation, self._values)
            for entry in entries.values()
        ]
        return list({id(m): m for m in held if isinstance(m, nn.Module)}.values())

    def release(self, model: nn.Module) -> None:
        """Drop every entry of ``model`` (its outputs and derived numbers)."""
        for entries in (self._classification, self._segmentation):
            for key in [k for k in entries if k[0] == id(model)]:
                del entries[key]
        for value_key in [k for k in self._values if k[1] == id(model)]:
            del self._values[value_key]
