"""SalUn's Average Gap: one number for how far a model is from retraining.

``AvgGap = mean(|UA - UA_r|, |RA - RA_r|, |TA - TA_r|, |MIA-eff - MIA-eff_r|)``

with ``UA = 1 - forget accuracy``, ``RA`` / ``TA`` retain / test accuracy and
``MIA-eff = 1 - svc_mia_confidence`` (the fraction of forget examples predicted
NON-member), ``_r`` the retrained model's values (their mean over the retrained
references when there are several seeds). Since ``|(1-a) - (1-b)| = |a - b|``,
the gaps equal those of forget accuracy and of ``svc_mia_confidence``. Ideal 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from fedforget.metrics.accuracy import model_mean
from fedforget.metrics.base import MetricContext, MetricInfo, Splits
from fedforget.metrics.mia import model_svc_mia

AVERAGE_GAP_METRICS = ("ua", "ra", "ta", "mia_efficacy")


def average_gap(
    values: Mapping[str, float],
    reference: Mapping[str, float],
    names: Sequence[str] = AVERAGE_GAP_METRICS,
) -> float:
    """``mean_k |values[k] - reference[k]|`` over ``names``."""
    missing = [n for n in names if n not in values or n not in reference]
    if missing:
        raise ValueError(f"Average Gap needs {', '.join(missing)} in both value sets")
    return float(np.mean([abs(values[n] - reference[n]) for n in names]))


def salun_values(context: MetricContext, splits: Splits, model: nn.Module) -> dict[str, float]:
    """A model's UA, RA, TA and MIA-efficacy (SalUn's four Average Gap terms)."""
    return {
        "ua": 1.0 - model_mean(context, splits, model, "forget", "correct"),
        "ra": model_mean(context, splits, model, "retain", "correct"),
        "ta": model_mean(context, splits, model, "test", "correct"),
        "mia_efficacy": 1.0 - model_svc_mia(context, splits, "confidence", model),
    }


AVG_GAP = MetricInfo(
    "avg_gap",
    "SalUn's Average Gap: mean |UA, RA, TA, MIA-efficacy - retrained|",
    "gap",
    "0 (the retrained model's values)",
    "lower",
    ideal_value=0.0,
    tasks=("classification",),
    requires=("retrained",),
)


def avg_gap(context: MetricContext, splits: Splits) -> float:
    """Average Gap of the unlearned model to the retrained model(s) (mean of their values)."""
    references = [salun_values(context, splits, r) for r in context.retrained]
    reference = {n: float(np.mean([r[n] for r in references])) for n in AVERAGE_GAP_METRICS}
    return average_gap(salun_values(context, splits, context.unlearned), reference)
