"""MIA-NN for class unlearning: the forgotten class's neighbours, as the original ranked them.

Does the model still spread a forget-class input over the other classes as the
original model did?

After forgetting class ``c``, a retrained model sends the forget-class inputs to
the classes that look like ``c``, in proportions set by the data; a model that
merely suppresses ``p_c`` keeps the original model's proportions over the other
classes, and the leak hides from loss- or confidence-based MIAs (Ebrahimpour-
Boroojeny et al., "On the Necessity of Output Distribution Reweighting for
Effective Class Unlearning", the TRW paper). Our operational definition:

1. Neighbours ``N``: the ``k`` classes other than ``c`` with the highest mean
   probability under the ORIGINAL model on the forget set.
2. Feature of a model on forget example ``x``: ``log q_j(x)`` for ``j`` in
   ``N``, with ``q_j = p_j / (1 - p_c)`` the distribution over the remaining
   classes (so suppressing ``p_c`` alone does not change it).
3. The forget set is split in two halves under ``seed``. On the first, a
   logistic regression (standardised features) learns to tell the original
   model's features (label 1, "original") from the retrained model's (label 0).
4. The score is the fraction of the SECOND half whose features under the
   evaluated model are classified "original".

Ideal: the retrained model's value (the attack's false-positive rate on held-out
examples, near 0 when the two models differ); an unlearned model that only
hides class ``c`` scores near 1.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from torch import nn

from fedforget.metrics.base import MetricContext, MetricInfo, Splits

DEFAULT_NEIGHBOURS = 3
_LOG_FLOOR = 1e-12


def nearest_classes(
    original_forget_probs: NDArray[np.float64], forget_class: int, k: int = DEFAULT_NEIGHBOURS
) -> tuple[int, ...]:
    """The ``k`` classes other than ``forget_class`` with the highest mean original probability.

    Ties go to the lower class index; ``k`` is capped at ``C - 1``.
    """
    mean = np.asarray(original_forget_probs, dtype=np.float64).mean(axis=0)
    mean[forget_class] = -np.inf
    order = np.argsort(-mean, kind="stable")
    return tuple(int(c) for c in order[: min(k, len(mean) - 1)])


def neighbour_features(
    probs: NDArray[np.float64], forget_class: int, neighbours: tuple[int, ...]
) -> NDArray[np.float64]:
    """``log(p_j / (1 - p_c))`` for each neighbour ``j``: shape ``(n, len(neighbours))``."""
    remaining = np.maximum(1.0 - probs[:, forget_class], _LOG_FLOOR)
    q = probs[:, list(neighbours)] / remaining[:, None]
    return np.log(np.maximum(q, _LOG_FLOOR))


def mia_nn_score(
    original_probs: NDArray[np.float64],
    retrained_probs: NDArray[np.float64],
    evaluated_probs: NDArray[np.float64],
    forget_class: int,
    *,
    neighbours: int = DEFAULT_NEIGHBOURS,
    seed: int = 0,
) -> float:
    """Fraction of the held-out forget half classified "original" under ``evaluated_probs``.

    All three arrays are ``(n, C)`` probabilities of the same ``n`` forget
    examples, in the same order (see the module docstring for the steps).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(original_probs)
    if n < 2 or len(retrained_probs) != n or len(evaluated_probs) != n:
        raise ValueError(
            f"MIA-NN needs >= 2 forget examples scored by all three models; got "
            f"{n} / {len(retrained_probs)} / {len(evaluated_probs)}"
        )
    classes = nearest_classes(original_probs, forget_class, neighbours)
    order = np.random.default_rng(seed).permutation(n)
    fit, held_out = order[: n // 2], order[n // 2 :]
    x = np.concatenate(
        [
            neighbour_features(original_probs[fit], forget_class, classes),
            neighbour_features(retrained_probs[fit], forget_class, classes),
        ]
    )
    y = np.concatenate([np.ones(len(fit)), np.zeros(len(fit))])
    attack = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    attack.fit(x, y)
    evaluated = neighbour_features(evaluated_probs[held_out], forget_class, classes)
    return float(np.mean(attack.predict(evaluated) == 1))


MIA_NN = MetricInfo(
    "mia_nn",
    "MIA-NN: held-out forget examples whose probabilities over the forgotten class's "
    "nearest classes a classifier (original vs retrained) calls 'original'",
    "fraction classified original",
    "the retrained model's value",
    "retrain",
    tasks=("classification",),
    scenarios=("class",),
    requires=("original", "retrained"),
)


def mia_nn(context: MetricContext, splits: Splits) -> float:
    """MIA-NN of the unlearned model; the attack is fit on the original and ``retrained[0]``."""
    if splits.forget_class is None:
        raise ValueError("MIA-NN needs a class-unlearning Splits (forget_class set)")

    def probs(model: nn.Module) -> NDArray[np.float64]:
        return context.class_outputs(model, splits, "forget").probs

    return mia_nn_score(
        probs(context.require_original()),
        probs(context.retrained[0]),
        probs(context.unlearned),
        splits.forget_class,
        neighbours=context.options.mia_nn_neighbours,
        seed=context.options.seed,
    )
