"""How far the unlearned model's output distributions are from the retrained model's.

Per example ``x`` with retrained probabilities ``r = p_retrained(x)`` and
unlearned probabilities ``u = p_unlearned(x)`` (natural logarithms):

* ``KL(r || u) = sum_c r_c log(r_c / u_c)`` (``u_c`` floored at 1e-12, so
  a class the unlearned model rules out costs a large finite amount);
* ``JS(r, u) = 1/2 KL(r || m) + 1/2 KL(u || m)``, ``m = (r + u) / 2``, in
  ``[0, ln 2]`` (``ln 2`` for disjoint supports).

The metric is the mean over the examples of a set (test or forget), averaged
over the retrained references. Ideal: 0, but two retrainings with different
seeds already differ: :func:`divergence_floor` gives the retrain-vs-retrain
floor, the value a method cannot be expected to beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.special import xlogy
from torch import nn

from fedforget.metrics.base import MetricContext, MetricInfo, Part, Splits
from fedforget.metrics.outputs import class_outputs

Divergence = Literal["kl", "js"]
PROB_FLOOR = 1e-12


def kl_divergence(p: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.float64]:
    """``KL(p || q)`` of each row (nats); terms with ``p_c = 0`` are 0."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    q = np.atleast_2d(np.asarray(q, dtype=np.float64))
    return np.sum(xlogy(p, p) - xlogy(p, np.maximum(q, PROB_FLOOR)), axis=1)


def js_divergence(p: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Jensen-Shannon divergence of each row (nats, at most ``ln 2``)."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    q = np.atleast_2d(np.asarray(q, dtype=np.float64))
    m = (p + q) / 2
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


def mean_divergence(
    reference: NDArray[np.float64], other: NDArray[np.float64], kind: Divergence
) -> float:
    """Mean over rows of ``KL(reference || other)`` or ``JS(reference, other)``."""
    if kind == "kl":
        values = kl_divergence(reference, other)
    elif kind == "js":
        values = js_divergence(reference, other)
    else:
        raise ValueError(f"unknown divergence {kind!r}: use 'kl' or 'js'")
    return float(values.mean()) if len(values) else float("nan")


def divergence_floor(probs: Sequence[NDArray[np.float64]], kind: Divergence = "js") -> float:
    """Retrain-vs-retrain floor: mean divergence over ordered pairs ``i != j`` of references.

    ``probs`` holds each retrained model's ``(n, C)`` probabilities on the same
    examples (one model per seed, at least two).
    """
    if len(probs) < 2:
        raise ValueError("the retrain-vs-retrain floor needs >= 2 retrained models (seeds)")
    values = [
        mean_divergence(probs[i], probs[j], kind)
        for i in range(len(probs))
        for j in range(len(probs))
        if i != j
    ]
    return float(np.mean(values))


def model_divergence_floor(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    kind: Divergence = "js",
    device: torch.device | str = "cpu",
) -> float:
    """:func:`divergence_floor` of retrained ``models`` on ``(x, y)``."""
    return divergence_floor(
        [class_outputs(m, x, y, num_classes, device).probs for m in models], kind
    )


def to_retrained(context: MetricContext, splits: Splits, part: Part, kind: Divergence) -> float:
    """Mean divergence of the unlearned model from each retrained model on a part."""
    unlearned = context.class_outputs(context.unlearned, splits, part).probs
    return float(
        np.mean(
            [
                mean_divergence(context.class_outputs(r, splits, part).probs, unlearned, kind)
                for r in context.retrained
            ]
        )
    )


def _info(kind: Divergence, part: Part) -> MetricInfo:
    formula = "KL(retrained || unlearned)" if kind == "kl" else "JS(retrained, unlearned)"
    return MetricInfo(
        f"{kind}_{part}",
        f"mean {formula} of the output distributions on the {part} set",
        "divergence",
        "0; in practice the retrain-vs-retrain floor (divergence_floor)",
        "lower",
        ideal_value=0.0,
        tasks=("classification",),
        requires=("retrained",),
    )


KL_TEST = _info("kl", "test")
KL_FORGET = _info("kl", "forget")
JS_TEST = _info("js", "test")
JS_FORGET = _info("js", "forget")


def kl_test(context: MetricContext, splits: Splits) -> float:
    """KL divergence to the retrained model(s) on the test set."""
    return to_retrained(context, splits, "test", "kl")


def kl_forget(context: MetricContext, splits: Splits) -> float:
    """KL divergence to the retrained model(s) on the forget set."""
    return to_retrained(context, splits, "forget", "kl")


def js_test(context: MetricContext, splits: Splits) -> float:
    """JS divergence to the retrained model(s) on the test set."""
    return to_retrained(context, splits, "test", "js")


def js_forget(context: MetricContext, splits: Splits) -> float:
    """JS divergence to the retrained model(s) on the forget set."""
    return to_retrained(context, splits, "forget", "js")
