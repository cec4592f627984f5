"""A cell's metrics beyond the headline four: the registry's, against the cell's references.

Every cell of an experiment is evaluated by :func:`cell_metrics` with the same
selection (:data:`CELL_METRICS`, those that apply to the task and scenario):
the five SVC-MIA feature sets, KL and JS divergence to the retrained models on
the test and forget sets (the mean over the references), SalUn's Average Gap
(to the references' mean values), relearn time, offline U-LiRA (with at
least two references) and, for class unlearning, MIA-NN. All on test-time
inputs (no augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from fedforget.arrays import Arrays
from fedforget.config import FederationConfig
from fedforget.data import load_federated_data
from fedforget.metrics import MetricContext, MetricOptions, Splits, evaluate_metrics
from fedforget.metrics.registry import applicable_metrics
from fedforget.scenarios import forget_set
from fedforget.task import model_with
from fedforget.training import resolve_device

CELL_METRICS = (
    "svc_mia_correctness",
    "svc_mia_confidence",
    "svc_mia_entropy",
    "svc_mia_m_entropy",
    "svc_mia_prob",
    "mia_nn",
    "ulira_auc",
    "kl_test",
    "kl_forget",
    "js_test",
    "js_forget",
    "avg_gap",
    "relearn_steps",
)


def cell_metrics(
    config: FederationConfig,
    model: nn.Module | Arrays,
    references: Sequence[Arrays],
    original: Arrays,
) -> dict[str, Any]:
    """The registry metrics of :data:`CELL_METRICS` that apply, for one model of a cell.

    ``references`` are the retrained models the model is compared with (a
    reference's own row: the other references).
    """
    federated = load_federated_data(config)
    splits = Splits.from_forget_set(federated.data, forget_set(config, federated))
    unlearned = model if isinstance(model, nn.Module) else model_with(config, model)
    context = MetricContext(
        unlearned=unlearned,
        retrained=tuple(model_with(config, r) for r in references),
        original=model_with(config, original),
        options=MetricOptions(seed=config.seed),
        device=str(resolve_device(config.device)),
    )
    chosen = [m for m in CELL_METRICS if m in applicable_metrics(context, splits)]
    return evaluate_metrics(context, splits, chosen)
