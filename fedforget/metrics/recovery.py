"""Recovery after the request and relearn time: how long the effects last.

* Recovery rounds (oracle rule): the first round ``t > request_round`` whose
  test score (accuracy, or Dice with background) is ``>=`` the retrained
  model's, counted as ``t - request_round`` (the request takes effect in round
  ``request_round + 1``), like ``fedforget compare``'s ``recovery_rounds``.
  Not reached within the history: the rounds it has after the request (capped).
  Ideal: lower.
* Fixed budget: the test score ``B`` rounds after the request.
* Relearn time: plain SGD steps (fixed lr and batch, batches drawn under
  ``seed``) fine-tuning a copy of the unlearned model on the forget data until
  its forget score is back to the original model's, capped at ``max_steps``
  (``max_steps`` means "not within the cap"). Few steps: the knowledge was
  hidden rather than removed. Ideal: the retrained model's value.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedforget.metrics.accuracy import model_score
from fedforget.metrics.base import MetricContext, MetricInfo, Splits
from fedforget.training import eval_batch_size, loss_function, per_example_metrics

_UNREACHABLE_MARGIN = 1e-9
"""How far below the target a forget score's upper bound must be to stop evaluating it."""


# ------------------------------------------------------------------ recovery
def recovery_rounds(
    history: Sequence[tuple[int, float]], request_round: int, target: float
) -> int | None:
    """Rounds after ``request_round`` until the score is ``>= target``; None if never."""
    for server_round, score in sorted(history):
        if server_round > request_round and score >= target:
            return server_round - request_round
    return None


def score_after_budget(
    history: Sequence[tuple[int, float]], request_round: int, budget: int
) -> float:
    """The score of round ``request_round + budget``."""
    scores = dict(history)
    round_wanted = request_round + budget
    if round_wanted not in scores:
        last = max(scores) if scores else None
        raise ValueError(
            f"no score for round {round_wanted} (request at {request_round} + budget {budget}); "
            f"the history ends at round {last}: run at least {budget} rounds after the request"
        )
    return float(scores[round_wanted])


RECOVERY_ROUNDS = MetricInfo(
    "recovery_rounds",
    "rounds after the request until the test score reaches the retrained model's "
    "(capped at the rounds run)",
    "rounds",
    "as few as possible (after them the test score matches retraining)",
    "lower",
    requires=("history", "retrained"),
    shown=False,  # the tables show the run's own recovery rounds in a column of their own
)
SCORE_AFTER_BUDGET = MetricInfo(
    "score_after_budget",
    "test score (accuracy or Dice) a fixed budget of rounds after the request",
    "score",
    "the retrained model's test score or more",
    "higher",
    requires=("budget",),
)


def _history(context: MetricContext) -> tuple[int, tuple[tuple[int, float], ...], int | None]:
    if context.history is None:
        raise ValueError("this metric needs the run's history: pass history=RecoveryHistory(...)")
    h = context.history
    return h.request_round, h.scores, h.budget


def recovery_rounds_metric(context: MetricContext, splits: Splits) -> float:
    """Oracle recovery rounds to the mean retrained test score, capped at the history."""
    request_round, scores, _ = _history(context)
    target = float(np.mean([model_score(context, splits, r, "test") for r in context.retrained]))
    rounds = recovery_rounds(scores, request_round, target)
    if rounds is None:
        after = [r for r, _ in scores if r > request_round]
        rounds = max(after) - request_round if after else 0
    return float(rounds)


def score_after_budget_metric(context: MetricContext, splits: Splits) -> float:
    """The test score ``budget`` rounds after the request."""
    del splits
    request_round, scores, budget = _history(context)
    if budget is None:
        raise ValueError("score_after_budget needs RecoveryHistory.budget")
    return score_after_budget(scores, request_round, budget)


# ------------------------------------------------------------------- relearn
@dataclass(frozen=True)
class RelearnTime:
    """SGD steps until the forget score came back (``steps == max_steps`` if it did not)."""

    steps: int
    recovered: bool
    final_score: float


def _forget_score(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    device: torch.device | str,
    target: float | None = None,
) -> float | None:
    """``model``'s mean score on ``(x, y)``, or None as soon as it cannot reach ``target``.

    The examples run one evaluation batch (:func:`~fedforget.training.eval_batch_size`)
    at a time, the batches :func:`~fedforget.training.per_example_metrics` runs
    over the whole set, so a score computed to the end is the same number. After
    each batch, when even a perfect score (1) on every example left could not lift
    the mean to ``target`` (with a margin far above rounding), the rest is skipped:
    the outcome, below ``target``, is known. Most relearning steps of a model that
    does not recover stop after a batch or two.
    """
    key = "dice" if task == "segmentation" else "correct"
    size = eval_batch_size(task, torch.device(device))
    parts, total = [], 0.0
    for start in range(0, len(x), size):
        values = per_example_metrics(
            model, x[start : start + size], y[start : start + size], task, device
        )[key]
        parts.append(values)
        total += float(values.sum())
        left = len(x) - start - len(values)
        if target is not None and (total + left) / len(x) < target - _UNREACHABLE_MARGIN:
            return None
    return float(np.mean(np.concatenate(parts)))


def relearn_time(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target_score: float,
    *,
    task: str = "classification",
    lr: float = 0.01,
    batch_size: int = 32,
    max_steps: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> RelearnTime:
    """Fine-tune a copy of ``model`` on ``(x, y)`` until its score is ``>= target_score``.

    One step = one plain-SGD mini-batch update (training loss of the task);
    mini-batches run through reshuffles of the data drawn under ``seed``. The
    score (accuracy or Dice with background, test-time inputs) is checked
    before the first step and after every step (an evaluation stops early once
    the target is out of reach: see :func:`_forget_score`); ``model`` is not changed.
    """
    if len(x) == 0:
        raise ValueError("relearn time needs a non-empty forget set")
    learner = copy.deepcopy(model)
    score = _forget_score(learner, x, y, task, device)
    assert score is not None  # no target: evaluated to the end
    if score >= target_score:
        return RelearnTime(0, True, score)
    criterion = loss_function(task)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(learner.parameters(), lr=lr)
    steps = 0
    while steps < max_steps:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            learner.to(device)
            learner.train()
            optimiser.zero_grad()
            loss = criterion(learner(x[batch].to(device)), y[batch].to(device))
            loss.backward()
            optimiser.step()
            steps += 1
            last = steps >= max_steps  # the final score is reported: evaluated to the end
            reached = _forget_score(learner, x, y, task, device, None if last else target_score)
            if reached is not None:
                score = reached
                if score >= target_score:
                    return RelearnTime(steps, True, score)
            if last:
                break
    return RelearnTime(max_steps, False, score)


RELEARN_STEPS = MetricInfo(
    "relearn_steps",
    "SGD steps of fine-tuning on the forget data until its score returns to the "
    "original model's (capped)",
    "steps",
    "the retrained model's value (fewer: the knowledge was only hidden)",
    "retrain",
    requires=("original",),
)


def relearn_steps(context: MetricContext, splits: Splits) -> float:
    """Relearn time of the unlearned model, to the original model's forget score."""
    options = context.options
    target = model_score(context, splits, context.require_original(), "forget")
    x, y = splits.part("forget")
    result = relearn_time(
        context.unlearned,
        x,
        y,
        target,
        task=splits.task,
        lr=options.relearn_lr,
        batch_size=options.relearn_batch_size,
        max_steps=options.relearn_max_steps,
        seed=options.seed,
        device=context.device,
    )
    return float(result.steps)
