"""Compatibility: the names ``fedforget.comparison`` exported before the protocol moved.

``fedforget run`` and ``fedforget compare`` now run the experiment protocol
(:mod:`fedforget.experiment.protocol`); this module re-exports what code
outside the package imported from here. New code imports from the
``fedforget.experiment`` modules named below.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fedforget.arrays import Arrays
from fedforget.config import FederationConfig
from fedforget.experiment import centralised as _centralised
from fedforget.experiment.centralised import unlearning_data
from fedforget.experiment.commands import (
    check_references,
    resolve_centralised,
    resolve_methods,
    run_comparison,
    run_main_job,
)
from fedforget.experiment.evaluation import Evaluator, test_score
from fedforget.experiment.phases import (
    CELLS_DIR,
    Original,
    cell_config,
    fork,
    original_config,
    run_cell,
    store_copy,
    train_original,
    train_phase,
    train_references,
)
from fedforget.experiment.protocol import RECOVERY_STOPS
from fedforget.experiment.records import Cell, PhaseRecord
from fedforget.experiment.references import (
    CACHE_ENV,
    REFERENCE_SEED_STRIDE,
    cache_dir,
    load_reference,
    load_references,
    reference_config,
    reference_key,
    reference_variant,
    save_reference,
    save_references,
)
from fedforget.methods.centralised import UnlearningData


def centralised_cell(
    config: FederationConfig, original: Arrays, name: str, data: UnlearningData
) -> tuple[dict[str, Any], nn.Module | None]:
    """One centralised method unlearning ``data``'s forget set from ``original``: row, model.

    Evaluated without retrained references (use
    :func:`fedforget.experiment.centralised.centralised_cell` with an
    :class:`~fedforget.experiment.evaluation.Evaluator` to compare with them).
    """
    return _centralised.centralised_cell(Evaluator(config, [], original), original, name, data)


__all__ = [
    "CACHE_ENV",
    "CELLS_DIR",
    "RECOVERY_STOPS",
    "REFERENCE_SEED_STRIDE",
    "Cell",
    "Original",
    "PhaseRecord",
    "cache_dir",
    "cell_config",
    "centralised_cell",
    "check_references",
    "fork",
    "load_reference",
    "load_references",
    "original_config",
    "reference_config",
    "reference_key",
    "reference_variant",
    "resolve_centralised",
    "resolve_methods",
    "run_cell",
    "run_comparison",
    "run_main_job",
    "save_reference",
    "save_references",
    "store_copy",
    "test_score",
    "train_original",
    "train_phase",
    "train_references",
    "unlearning_data",
]
