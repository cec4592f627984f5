"""The metric registry: one line per metric, and how to evaluate a selection.

Adding a metric = one function ``(MetricContext, Splits) -> float`` with its
:class:`~fedforget.metrics.base.MetricInfo`, and one line in ``METRICS`` (or,
from outside the package, one call of :func:`register`). Every output reads
the registry: the experiment rows carry what it computed, and the tables and
the report choose and order their columns by :func:`table_metrics` (headline
metrics first, in registry order, then the other shown ones by name).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import fedforget.metrics.accuracy as accuracy
import fedforget.metrics.backdoor as backdoor
import fedforget.metrics.divergence as divergence
import fedforget.metrics.gap as gap
import fedforget.metrics.mia as mia
import fedforget.metrics.mia_nn as mia_nn
import fedforget.metrics.recovery as recovery
import fedforget.metrics.ulira as ulira
from fedforget.metrics.base import Metric, MetricContext, MetricInfo, Splits

METRICS: dict[str, Metric] = {
    metric.info.name: metric
    for metric in (
        Metric(accuracy.TEST_ACC, accuracy.test_acc),
        Metric(accuracy.FORGET_ACC, accuracy.forget_acc),
        Metric(accuracy.RETAIN_ACC, accuracy.retain_acc),
        Metric(accuracy.TEST_DICE, accuracy.test_dice),
        Metric(accuracy.FORGET_DICE, accuracy.forget_dice),
        Metric(accuracy.RETAIN_DICE, accuracy.retain_dice),
        Metric(mia.MIA_YEOM, mia.mia_yeom),
        Metric(accuracy.TEST_DICE_FG, accuracy.test_dice_fg),
        Metric(accuracy.FORGET_DICE_FG, accuracy.forget_dice_fg),
        Metric(accuracy.RETAIN_DICE_FG, accuracy.retain_dice_fg),
        Metric(accuracy.TEST_LOSS, accuracy.test_loss),
        Metric(mia.SVC_MIA_CORRECTNESS, mia.svc_mia_correctness),
        Metric(mia.SVC_MIA_CONFIDENCE, mia.svc_mia_confidence),
        Metric(mia.SVC_MIA_ENTROPY, mia.svc_mia_entropy),
        Metric(mia.SVC_MIA_M_ENTROPY, mia.svc_mia_m_entropy),
        Metric(mia.SVC_MIA_PROB, mia.svc_mia_prob),
        Metric(mia_nn.MIA_NN, mia_nn.mia_nn),
        Metric(ulira.ULIRA_ACC, ulira.ulira_acc),
        Metric(ulira.ULIRA_AUC, ulira.ulira_auc),
        Metric(backdoor.BACKDOOR_ASR, backdoor.backdoor_asr),
        Metric(divergence.KL_TEST, divergence.kl_test),
        Metric(divergence.KL_FORGET, divergence.kl_forget),
        Metric(divergence.JS_TEST, divergence.js_test),
        Metric(divergence.JS_FORGET, divergence.js_forget),
        Metric(gap.AVG_GAP, gap.avg_gap),
        Metric(recovery.RECOVERY_ROUNDS, recovery.recovery_rounds_metric),
        Metric(recovery.SCORE_AFTER_BUDGET, recovery.score_after_budget_metric),
        Metric(recovery.RELEARN_STEPS, recovery.relearn_steps),
    )
}


def register(metric: Metric) -> None:
    """Add ``metric`` to the registry (from a plug-in or a test): every output then shows it.

    Raises
    ------
    ValueError
        When a metric of the same name is registered already.

    """
    name = metric.info.name
    if name in METRICS:
        raise ValueError(f"a metric named {name!r} is registered already: choose another name")
    METRICS[name] = metric


def unregister(name: str) -> None:
    """Remove a metric added by :func:`register` (unknown names are ignored)."""
    METRICS.pop(name, None)


def table_metrics(present: Iterable[str]) -> tuple[str, ...]:
    """The columns a table or report shows of the metrics ``present`` (in any order).

    Registered ``headline`` metrics first, in registry order, then the other
    registered metrics that are ``shown``, by name; names the registry does not
    know (costs, ``update_norm``) are left out.
    """
    names = set(present)
    headline = [n for n, m in METRICS.items() if n in names and m.info.headline]
    rest = sorted(
        n for n, m in METRICS.items() if n in names and m.info.shown and not m.info.headline
    )
    return (*headline, *rest)


def headline_metrics_of(present: Iterable[str]) -> tuple[str, ...]:
    """The registered ``headline`` metrics among ``present``, in registry order."""
    names = set(present)
    return tuple(n for n, m in METRICS.items() if n in names and m.info.headline)


def metric_info(name: str) -> MetricInfo:
    """The description of a registered metric (for tables and reports).

    Raises
    ------
    KeyError
        For an unknown name; the message lists the registered ones.

    """
    try:
        return METRICS[name].info
    except KeyError:
        raise KeyError(
            f"unknown metric {name!r}: registered metrics are {', '.join(METRICS)}"
        ) from None


def metrics_metadata(names: Sequence[str] | None = None) -> list[dict[str, object]]:
    """:meth:`MetricInfo.as_dict` of the named metrics (default: all), for a report's legend."""
    return [metric_info(n).as_dict() for n in (METRICS if names is None else names)]


def applicable_metrics(context: MetricContext, splits: Splits) -> list[str]:
    """Registered metrics that apply to the task and scenario and have what they need."""
    return [name for name, m in METRICS.items() if not m.info.missing(context, splits)]


def evaluate_metrics(
    context: MetricContext, splits: Splits, names: Sequence[str] | None = None
) -> dict[str, float]:
    """``{name: value}`` of the named metrics, or of every applicable one (``names=None``).

    Raises
    ------
    KeyError
        For an unknown name.
    ValueError
        For a named metric that does not apply; the message says what is missing.

    """
    chosen = applicable_metrics(context, splits) if names is None else list(names)
    values: dict[str, float] = {}
    for name in chosen:
        info = metric_info(name)
        reason = info.missing(context, splits)
        if reason:
            raise ValueError(f"cannot evaluate {reason}")
        values[name] = float(METRICS[name].compute(context, splits))
    return values
