"""Unlearning metrics: a registry of functions of (models, splits) -> value.

Every metric is a function ``(MetricContext, Splits) -> float`` registered in
:data:`METRICS` with a :class:`MetricInfo` (what it measures, its kind, its
ideal: the retrained model's value, and its direction). Evaluate a selection::

    from fedforget.metrics import MetricContext, Splits, evaluate_metrics, metric_info

    splits = Splits.from_forget_set(data, forget)
    context = MetricContext(unlearned=model, retrained=(reference,), original=original)
    values = evaluate_metrics(context, splits)          # every metric that applies
    metric_info("svc_mia_confidence").kind               # "fraction predicted member"

Modules: ``accuracy`` (test / forget / retain accuracy, Dice), ``mia`` (Yeom,
SVC-MIA), ``mia_nn`` (class unlearning), ``ulira`` (U-LiRA), ``backdoor``
(the attack success rate of the backdoor scenario), ``divergence``
(KL / JS to retrain and the retrain-vs-retrain floor), ``gap`` (SalUn's Average
Gap), ``recovery`` (recovery rounds, fixed budget, relearn time), ``headline``
(the four-number evaluation of ``fedforget compare``).
"""

from fedforget.metrics.base import (
    MIN_REFERENCES,
    PARTS,
    SCENARIOS,
    Metric,
    MetricContext,
    MetricInfo,
    MetricOptions,
    RecoveryHistory,
    ShadowModels,
    Splits,
)
from fedforget.metrics.divergence import (
    divergence_floor,
    js_divergence,
    kl_divergence,
    model_divergence_floor,
)
from fedforget.metrics.gap import AVERAGE_GAP_METRICS, average_gap
from fedforget.metrics.headline import (
    METRIC_NAMES,
    SCENARIO_METRIC_NAMES,
    SEGMENTATION_METRIC_NAMES,
    SegmentationUnlearningMetrics,
    UnlearningMetrics,
    evaluate_forget_set,
    evaluate_unlearning,
    headline_metrics,
    metric_names,
    scenario_metrics,
)
from fedforget.metrics.mia import (
    SVC_FEATURES,
    entropy,
    modified_entropy,
    svc_features,
    svc_mia,
    yeom_mia,
)
from fedforget.metrics.mia_nn import mia_nn_score, nearest_classes, neighbour_features
from fedforget.metrics.recovery import (
    RelearnTime,
    recovery_rounds,
    relearn_time,
    score_after_budget,
)
from fedforget.metrics.registry import (
    METRICS,
    applicable_metrics,
    evaluate_metrics,
    metric_info,
    metrics_metadata,
    register,
    table_metrics,
    unregister,
)
from fedforget.metrics.ulira import (
    DEFAULT_SHADOW_PAIRS,
    UliraFit,
    fit_ulira,
    logit_confidence,
    ulira_accuracy,
    ulira_cross_validated,
    ulira_offline_auc,
    ulira_scores,
)

__all__ = [
    "AVERAGE_GAP_METRICS",
    "DEFAULT_SHADOW_PAIRS",
    "METRICS",
    "METRIC_NAMES",
    "MIN_REFERENCES",
    "PARTS",
    "SCENARIOS",
    "SCENARIO_METRIC_NAMES",
    "SEGMENTATION_METRIC_NAMES",
    "SVC_FEATURES",
    "Metric",
    "MetricContext",
    "MetricInfo",
    "MetricOptions",
    "RecoveryHistory",
    "RelearnTime",
    "SegmentationUnlearningMetrics",
    "ShadowModels",
    "Splits",
    "UliraFit",
    "UnlearningMetrics",
    "applicable_metrics",
    "average_gap",
    "divergence_floor",
    "entropy",
    "evaluate_forget_set",
    "evaluate_metrics",
    "evaluate_unlearning",
    "fit_ulira",
    "headline_metrics",
    "js_divergence",
    "kl_divergence",
    "logit_confidence",
    "metric_info",
    "metric_names",
    "metrics_metadata",
    "mia_nn_score",
    "model_divergence_floor",
    "modified_entropy",
    "nearest_classes",
    "neighbour_features",
    "recovery_rounds",
    "register",
    "relearn_time",
    "scenario_metrics",
    "score_after_budget",
    "svc_features",
    "svc_mia",
    "table_metrics",
    "ulira_accuracy",
    "ulira_cross_validated",
    "ulira_offline_auc",
    "ulira_scores",
    "unregister",
    "yeom_mia",
]
