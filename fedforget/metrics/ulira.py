"""U-LiRA: a per-example likelihood-ratio test that tells unlearning from retraining.

Hayes et al. 2024, "Inexact Unlearning Needs More Careful Evaluations to Avoid a
False Sense of Privacy".

For a forget set and a method under test, shadow pair ``k`` (``k = 1..K``) is
``OUT_k``, retrained without the forget set, and ``U_k``, trained with it and
then unlearned by the method (different seeds per pair). Each model scores each
forget example ``i`` by its logit-scaled confidence

    ``phi = log(p_y / (1 - p_y)) = z_y - log sum_{j != y} exp(z_j)``.

Per example, Gaussians are fit to the OUT scores ``N(mu_out_i, s_out_i)`` and
to the unlearned scores ``N(mu_u_i, s_u_i)`` over the K pairs. A held-out
evaluation model ``g`` is called "unlearned" on example ``i`` when
``log N(phi_g,i; mu_u_i, s_u_i) > log N(phi_g,i; mu_out_i, s_out_i)``, "out"
when smaller; a tie counts as half right. The attack accuracy weighs the
unlearned and the OUT evaluation models equally:

    ``acc = 1/2 mean[correct on unlearned models] + 1/2 mean[correct on OUT models]``.

Ideal 0.5 (the unlearned model is indistinguishable from retraining); 1 means
every example betrays the method. With few pairs, per-example variances are
noisy: ``variance="global"`` pools one variance per distribution over the
examples (LiRA's fixed variance).

``ulira_auc`` is the offline form the experiment runner computes: it needs no
unlearned shadow models, only the K retrained references of the cell (same
data, other training seeds), which saw neither the forget set nor the test
set. Per example ``i`` of both sets, a Gaussian ``N(mu_i, s)`` is fit to the
references' scores (``s`` pooled over the examples, LiRA's fixed variance, as
K is small). The model under test scores each example by
``t_i = (phi_i - mu_i) / s``: how much more confident it is than a retrained
model would be. ``ulira_auc`` is the ROC AUC of ``t`` separating the forget
examples (positives) from the held-out test examples: 0.5 when the model treats
the forget set as retrained models do, 1 when it still recognises every forget
example. A reference evaluated this way is fit on the other references, so the
references' own values (the retraining noise of this metric) need K >= 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fedforget.metrics.base import MetricContext, MetricInfo, Part, Splits
from fedforget.metrics.outputs import class_outputs

DEFAULT_SHADOW_PAIRS = 4
"""K for the runner: small enough for the CPU budget on the embedded data."""
MIN_STD = 1e-3
"""Floor on a fitted standard deviation (a score that never varies is not a point mass)."""
Variance = Literal["per-example", "global"]


def logit_confidence(logits: NDArray[np.float64], labels: NDArray[np.int64]) -> NDArray[np.float64]:
    """``log(p_y / (1 - p_y))`` of each row, computed stably from the logits."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    rows = torch.arange(len(y))
    own = z[rows, y]
    others = z.clone()
    others[rows, y] = -torch.inf
    return (own - torch.logsumexp(others, dim=1)).numpy()


def ulira_scores(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    device: torch.device | str = "cpu",
) -> NDArray[np.float64]:
    """The ``(len(models), n)`` logit-scaled confidences of ``models`` on ``(x, y)``."""
    rows = []
    for model in models:
        out = class_outputs(model, x, y, num_classes, device)
        rows.append(logit_confidence(out.logits, out.labels))
    return np.stack(rows) if rows else np.zeros((0, len(x)))


@dataclass(frozen=True)
class UliraFit:
    """Per-example Gaussians of the OUT and of the unlearned scores (arrays of length n)."""

    mean_out: NDArray[np.float64]
    std_out: NDArray[np.float64]
    mean_unlearned: NDArray[np.float64]
    std_unlearned: NDArray[np.float64]

    def log_ratio(self, scores: NDArray[np.float64]) -> NDArray[np.float64]:
        """``log N(s; unlearned) - log N(s; out)`` for scores of shape ``(M, n)``."""
        return _log_normal(scores, self.mean_unlearned, self.std_unlearned) - _log_normal(
            scores, self.mean_out, self.std_out
        )


def _log_normal(
    x: NDArray[np.float64], mean: NDArray[np.float64], std: NDArray[np.float64]
) -> NDArray[np.float64]:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def _std(scores: NDArray[np.float64], variance: Variance, min_std: float) -> NDArray[np.float64]:
    per_example = scores.var(axis=0, ddof=1)
    if variance == "global":
        per_example = np.full_like(per_example, per_example.mean())
    elif variance != "per-example":
        raise ValueError(f"unknown U-LiRA variance {variance!r}: use 'per-example' or 'global'")
    return np.maximum(np.sqrt(per_example), min_std)


def fit_ulira(
    out_scores: NDArray[np.float64],
    unlearned_scores: NDArray[np.float64],
    *,
    variance: Variance = "per-example",
    min_std: float = MIN_STD,
) -> UliraFit:
    """Fit the per-example Gaussians to ``(K, n)`` OUT and unlearned shadow scores (K >= 2)."""
    out = np.asarray(out_scores, dtype=np.float64)
    unlearned = np.asarray(unlearned_scores, dtype=np.float64)
    if out.ndim != 2 or out.shape != unlearned.shape or out.shape[0] < 2:
        raise ValueError(
            f"U-LiRA needs OUT and unlearned scores of one shape (K, n) with K >= 2 shadow "
            f"pairs; got {out.shape} and {unlearned.shape}"
        )
    return UliraFit(
        mean_out=out.mean(axis=0),
        std_out=_std(out, variance, min_std),
        mean_unlearned=unlearned.mean(axis=0),
        std_unlearned=_std(unlearned, variance, min_std),
    )


def ulira_accuracy(
    out_scores: NDArray[np.float64],
    unlearned_scores: NDArray[np.float64],
    eval_out_scores: NDArray[np.float64],
    eval_unlearned_scores: NDArray[np.float64],
    *,
    variance: Variance = "per-example",
    min_std: float = MIN_STD,
) -> float:
    """U-LiRA attack accuracy on held-out evaluation models (ideal 0.5).

    Parameters
    ----------
    out_scores, unlearned_scores : NDArray, shape (K, n)
        Shadow pairs' scores (:func:`logit_confidence`) of the n forget examples.
    eval_out_scores : NDArray, shape (M_out, n)
        Scores under held-out models retrained without the examples.
    eval_unlearned_scores : NDArray, shape (M_u, n)
        Scores under held-out models that were unlearned by the method.
    variance, min_std
        See :func:`fit_ulira`.

    """
    fit = fit_ulira(out_scores, unlearned_scores, variance=variance, min_std=min_std)
    said_unlearned = _decisions(fit.log_ratio(np.atleast_2d(eval_unlearned_scores)))
    said_out = 1.0 - _decisions(fit.log_ratio(np.atleast_2d(eval_out_scores)))
    return float(0.5 * said_unlearned.mean() + 0.5 * said_out.mean())


def ulira_offline_auc(
    reference_forget: NDArray[np.float64],
    reference_held_out: NDArray[np.float64],
    model_forget: NDArray[np.float64],
    model_held_out: NDArray[np.float64],
    *,
    variance: Variance = "global",
    min_std: float = MIN_STD,
) -> float:
    """Offline U-LiRA: ROC AUC of the model's standardised scores, forget vs held-out.

    Parameters
    ----------
    reference_forget, reference_held_out : NDArray, shapes (K, n_f) and (K, n_h)
        Scores (:func:`logit_confidence`) of K >= 2 retrained references on the
        forget and on the held-out examples.
    model_forget, model_held_out : NDArray, shapes (n_f,) and (n_h,)
        The scores of the model under test on the same examples.
    variance : str (default: ``"global"``)
        ``"global"``: one standard deviation pooled over the examples;
        ``"per-example"``: one per example.
    min_std : float (default: 1e-3)
        Floor on a fitted standard deviation.

    """
    from sklearn.metrics import roc_auc_score

    references = np.concatenate(
        [np.asarray(reference_forget, np.float64), np.asarray(reference_held_out, np.float64)],
        axis=1,
    )
    if references.ndim != 2 or references.shape[0] < 2:
        raise ValueError(
            f"offline U-LiRA needs references >= 2 (retrained models on the same data); got "
            f"scores of shape {references.shape}"
        )
    model = np.concatenate([np.ravel(model_forget), np.ravel(model_held_out)])
    if model.shape[0] != references.shape[1]:
        raise ValueError(
            f"the model's scores cover {model.shape[0]} examples, the references' "
            f"{references.shape[1]}: score the same forget and held-out examples"
        )
    n_forget = np.asarray(reference_forget).shape[1]
    if n_forget == 0 or n_forget == len(model):
        raise ValueError("offline U-LiRA needs forget and held-out examples, at least one each")
    standardised = (model - references.mean(axis=0)) / _std(references, variance, min_std)
    is_forget = np.arange(len(model)) < n_forget
    return float(roc_auc_score(is_forget, standardised))


def _decisions(log_ratio: NDArray[np.float64]) -> NDArray[np.float64]:
    """1 where the test says "unlearned", 0 where "out", 0.5 on a tie."""
    return np.where(log_ratio > 0, 1.0, np.where(log_ratio < 0, 0.0, 0.5))


def ulira_cross_validated(
    out_scores: NDArray[np.float64],
    unlearned_scores: NDArray[np.float64],
    *,
    variance: Variance = "per-example",
    min_std: float = MIN_STD,
) -> float:
    """Leave-one-pair-out U-LiRA accuracy over K >= 3 pairs (each pair held out once)."""
    out = np.asarray(out_scores, dtype=np.float64)
    unlearned = np.asarray(unlearned_scores, dtype=np.float64)
    pairs = out.shape[0]
    if pairs < 3:
        raise ValueError(f"leave-one-out U-LiRA needs K >= 3 shadow pairs, got {pairs}")
    accuracies = []
    for k in range(pairs):
        rest = np.arange(pairs) != k
        accuracies.append(
            ulira_accuracy(
                out[rest],
                unlearned[rest],
                out[k : k + 1],
                unlearned[k : k + 1],
                variance=variance,
                min_std=min_std,
            )
        )
    return float(np.mean(accuracies))


ULIRA_ACC = MetricInfo(
    "ulira_acc",
    "U-LiRA attack accuracy: a per-example likelihood-ratio test fit on K shadow "
    "(retrained, unlearned) pairs tells the unlearned model from the retrained one(s)",
    "attack accuracy",
    "0.5 (the retrained model's value: indistinguishable)",
    "retrain",
    ideal_value=0.5,
    tasks=("classification",),
    requires=("shadows", "retrained"),
)


def ulira_acc(context: MetricContext, splits: Splits) -> float:
    """U-LiRA on the forget set: fit on the context's shadows, evaluated on its models.

    The evaluation models are the context's unlearned model (truly "unlearned")
    and its retrained models (truly "out").
    """
    shadows = context.shadows
    if shadows is None:
        raise ValueError("U-LiRA needs shadow pairs: pass shadows=ShadowModels(...)")

    def scores(models: Sequence[nn.Module]) -> NDArray[np.float64]:
        rows = []
        for model in models:
            out = context.class_outputs(model, splits, "forget")
            rows.append(logit_confidence(out.logits, out.labels))
        return np.stack(rows)

    return ulira_accuracy(
        scores(shadows.out),
        scores(shadows.unlearned),
        scores(context.retrained),
        scores([context.unlearned]),
        variance=context.options.ulira_variance,
    )


ULIRA_AUC = MetricInfo(
    "ulira_auc",
    "offline U-LiRA: ROC AUC of the model's confidence standardised by per-example Gaussians "
    "of K retrained references, forget examples against held-out test examples",
    "attack AUC",
    "0.5 (the retrained models' value: the forget set looks held-out)",
    "retrain",
    ideal_value=0.5,
    tasks=("classification",),
    requires=("references",),
)


def ulira_auc(context: MetricContext, splits: Splits) -> float:
    """Offline U-LiRA of the unlearned model against the context's retrained references."""

    def scores(model: nn.Module, part: Part) -> NDArray[np.float64]:
        out = context.class_outputs(model, splits, part)
        return logit_confidence(out.logits, out.labels)

    return ulira_offline_auc(
        np.stack([scores(r, "forget") for r in context.retrained]),
        np.stack([scores(r, "test") for r in context.retrained]),
        scores(context.unlearned, "forget"),
        scores(context.unlearned, "test"),
    )
