"""The centralised cells: each centralised method unlearning the forget set from the original.

A centralised method (:mod:`fedforget.methods.centralised`) sees the forget
and retain examples directly and needs no federation: its cells run after
the simulation, from the saved original model.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from fedforget.arrays import Arrays
from fedforget.config import FederationConfig
from fedforget.data.augment import get_augmentation
from fedforget.experiment.evaluation import Evaluator
from fedforget.methods.centralised import UnlearningData, centralised_class
from fedforget.methods.centralised.common import require_finite_outputs
from fedforget.scenarios import forget_set
from fedforget.task import model_with, new_model
from fedforget.training import resolve_device


def unlearning_data(config: FederationConfig) -> UnlearningData:
    """What a centralised method sees: the forget and retain examples of the scenario."""
    from fedforget.data import load_federated_data

    federated = load_federated_data(config)
    data = federated.data
    forget = forget_set(config, federated)
    forget_index = torch.from_numpy(forget.forget_index)
    retain_index = torch.from_numpy(forget.retain_index)
    return UnlearningData(
        forget_x=data.train_x[forget_index],
        forget_y=data.train_y[forget_index],
        retain_x=data.train_x[retain_index],
        retain_y=data.train_y[retain_index],
        task=data.task,
        num_classes=data.num_classes,
        scenario=forget.scenario,
        forget_class=forget.forget_class,
        new_model=lambda: new_model(config, federated),
        augmentation=get_augmentation(data.augmentation) if config.augment else None,
        seed=config.seed,
        device=str(resolve_device(config.device)),
    )


def centralised_cell(
    evaluator: Evaluator, original: Arrays, name: str, data: UnlearningData
) -> tuple[dict[str, Any], nn.Module | None]:
    """One centralised method unlearning ``data``'s forget set from ``original``: row, model.

    The model is None when the method refuses the scenario or diverges (a
    loss, or the unlearned model's outputs on the forget set, not finite):
    the row is ``refused`` with the reason, as a federated step that is not
    finite is, and the other cells go on.
    """
    config = evaluator.config
    cls = centralised_class(name)
    reason = cls.refusal(data.scenario, data.task)
    if reason:
        return evaluator.refused_row(name, reason, kind="centralised"), None
    settings = cls.settings(config.settings_of(cls.table))
    started = time.monotonic()
    try:
        outcome = cls().unlearn(model_with(config, original), data, settings)
        require_finite_outputs(
            outcome.model, data.forget_x if len(data.forget_x) else data.retain_x
        )
    except FloatingPointError as error:
        reason = f"diverged: {error} ({cls.table}.*)"
        return evaluator.refused_row(name, reason, kind="centralised"), None
    cost = {
        "forget_epochs": round(outcome.forget_epochs, 3),
        "retain_epochs": round(outcome.retain_epochs, 3),
        "wall_s": round(time.monotonic() - started, 2),
    }
    return evaluator.model_row(name, outcome.model, cost, kind="centralised"), outcome.model
