"""Utility and forgetting scores: accuracy or Dice on the test, forget and retain sets.

Classification: accuracy = mean of ``[argmax_c f(x)_c = y]``. Segmentation:
per-image Dice of the arg-max mask averaged over classes with background (the
papers' number, ``*_dice``) and over foreground classes only (``*_dice_fg``),
then averaged over images (:func:`fedforget.training.per_example_segmentation`).
All on test-time inputs. The retrained model's value is the reference; test and
retain scores are better higher, the forget score is better the closer it is to
the retrained model's (lower than the original's when there was something to
forget, but not below the retrained model's).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from fedforget.metrics.base import MetricContext, MetricInfo, Part, Splits

_CLS = ("classification",)
_SEG = ("segmentation",)
_RETRAINED = "the retrained model's value"


def mean_score(context: MetricContext, splits: Splits, part: Part, key: str) -> float:
    """Mean of a per-example value (``correct``, ``dice``, ``dice_fg``, ``loss``) on a part."""
    return model_mean(context, splits, context.unlearned, part, key)


def model_mean(
    context: MetricContext, splits: Splits, model: nn.Module, part: Part, key: str
) -> float:
    """Mean of a per-example value of any ``model`` on a part (NaN for an empty part)."""
    values = context.per_example(model, splits, part)[key]
    return float(np.mean(values)) if len(values) else float("nan")


def score_key(splits: Splits) -> str:
    """The per-example score of the task: ``correct`` or ``dice`` (with background)."""
    return "dice" if splits.task == "segmentation" else "correct"


def model_score(context: MetricContext, splits: Splits, model: nn.Module, part: Part) -> float:
    """``model``'s accuracy, or Dice with background, on a part."""
    return model_mean(context, splits, model, part, score_key(splits))


TEST_ACC = MetricInfo(
    "test_acc",
    "accuracy on the held-out test set",
    "accuracy",
    _RETRAINED,
    "higher",
    tasks=_CLS,
    headline=True,
)
FORGET_ACC = MetricInfo(
    "forget_acc",
    "accuracy on the forget set (training data to forget)",
    "accuracy",
    _RETRAINED,
    "retrain",
    tasks=_CLS,
    headline=True,
)
RETAIN_ACC = MetricInfo(
    "retain_acc",
    "accuracy on the retain set (the other participants' training data)",
    "accuracy",
    _RETRAINED,
    "higher",
    tasks=_CLS,
    headline=True,
)
TEST_LOSS = MetricInfo(
    "test_loss",
    "mean test loss (cross-entropy; (CE + soft Dice loss) / 2 for segmentation)",
    "loss",
    _RETRAINED,
    "lower",
    shown=False,
)
TEST_DICE = MetricInfo(
    "test_dice",
    "test Dice with background",
    "dice",
    _RETRAINED,
    "higher",
    tasks=_SEG,
    headline=True,
)
FORGET_DICE = MetricInfo(
    "forget_dice",
    "forget-set Dice with background",
    "dice",
    _RETRAINED,
    "retrain",
    tasks=_SEG,
    headline=True,
)
RETAIN_DICE = MetricInfo(
    "retain_dice",
    "retain-set Dice with background",
    "dice",
    _RETRAINED,
    "higher",
    tasks=_SEG,
    headline=True,
)
TEST_DICE_FG = MetricInfo(
    "test_dice_fg",
    "test Dice of the foreground classes",
    "dice",
    _RETRAINED,
    "higher",
    tasks=_SEG,
    headline=True,
)
FORGET_DICE_FG = MetricInfo(
    "forget_dice_fg",
    "forget-set Dice of the foreground classes",
    "dice",
    _RETRAINED,
    "retrain",
    tasks=_SEG,
    headline=True,
)
RETAIN_DICE_FG = MetricInfo(
    "retain_dice_fg",
    "retain-set Dice of the foreground classes",
    "dice",
    _RETRAINED,
    "higher",
    tasks=_SEG,
    headline=True,
)


def test_acc(context: MetricContext, splits: Splits) -> float:
    """Test accuracy of the unlearned model."""
    return mean_score(context, splits, "test", "correct")


def forget_acc(context: MetricContext, splits: Splits) -> float:
    """Forget-set accuracy of the unlearned model."""
    return mean_score(context, splits, "forget", "correct")


def retain_acc(context: MetricContext, splits: Splits) -> float:
    """Retain-set accuracy of the unlearned model."""
    return mean_score(context, splits, "retain", "correct")


def test_loss(context: MetricContext, splits: Splits) -> float:
    """Mean test loss of the unlearned model."""
    return mean_score(context, splits, "test", "loss")


def test_dice(context: MetricContext, splits: Splits) -> float:
    """Test Dice (with background) of the unlearned model."""
    return mean_score(context, splits, "test", "dice")


def forget_dice(context: MetricContext, splits: Splits) -> float:
    """Forget-set Dice (with background) of the unlearned model."""
    return mean_score(context, splits, "forget", "dice")


def retain_dice(context: MetricContext, splits: Splits) -> float:
    """Retain-set Dice (with background) of the unlearned model."""
    return mean_score(context, splits, "retain", "dice")


def test_dice_fg(context: MetricContext, splits: Splits) -> float:
    """Test Dice (foreground) of the unlearned model."""
    return mean_score(context, splits, "test", "dice_fg")


def forget_dice_fg(context: MetricContext, splits: Splits) -> float:
    """Forget-set Dice (foreground) of the unlearned model."""
    return mean_score(context, splits, "forget", "dice_fg")


def retain_dice_fg(context: MetricContext, splits: Splits) -> float:
    """Retain-set Dice (foreground) of the unlearned model."""
    return mean_score(context, splits, "retain", "dice_fg")
