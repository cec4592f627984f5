"""Retrain: a fresh model trained on the retain set only (registry name ``retrain``).

The gold standard every unlearning method is measured against: by
construction the forget set never influenced it. Computes

    w = argmin_w  (1/|D_r|) sum_{(x, y) in D_r} loss(f_w(x), y)

by ``epochs`` passes of mini-batch SGD from ``data.new_model()`` (a fresh
initialisation of the federation's architecture), with the run's
training-time augmentation when it enables one. The original model is not
read at all. Cost: ``epochs`` over the retain set, none over the forget set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import nn

from fedforget.methods.base import ConfigValue
from fedforget.methods.centralised.base import (
    CentralisedMethod,
    CentralisedOutcome,
    UnlearningData,
)
from fedforget.methods.centralised.common import hand_back, range_problem, require_nonempty
from fedforget.training import train


class Retrain(CentralisedMethod):
    """Train ``data.new_model()`` on the retain set; the original weights are ignored."""

    name = "retrain"
    limits: ClassVar[Mapping[str, float]] = {
        "epochs": 1000,
        "lr": 1e6,
        "batch-size": 65536,
        "weight-decay": 10.0,
    }
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "epochs": 20,
        "lr": 0.05,
        "batch-size": 32,
        "weight-decay": 0.0,
    }
    """Plain SGD, as the federation's clients train (``fedforget.training.train``)."""
    tasks = ("classification", "segmentation")
    reference = (
        "the exact-unlearning baseline (retraining from scratch without the forget set), "
        "e.g. Bourtoule et al., Machine Unlearning, IEEE S&P 2021, arXiv 1912.03817"
    )
    summary = "a fresh model trained on the retain set only (the gold standard)"

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """Positive lr, epochs and batch size >= 1, weight decay >= 0."""
        return range_problem(
            cls.table,
            settings,
            positive=("lr",),
            non_negative=("weight-decay",),
            at_least_one=("epochs", "batch-size"),
        )

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """Train a fresh model on the retain set under ``data.seed``."""
        del original  # by construction: nothing of the original model is used
        require_nonempty(data, retain=True)
        model = data.new_model()
        epochs = int(settings["epochs"])
        train(
            model,
            data.retain_x,
            data.retain_y,
            epochs=epochs,
            batch_size=int(settings["batch-size"]),
            lr=float(settings["lr"]),
            seed=data.seed,
            task=data.task,
            weight_decay=float(settings["weight-decay"]),
            augmentation=data.augmentation,
            device=data.device,
        )
        return CentralisedOutcome(hand_back(model), forget_epochs=0.0, retain_epochs=float(epochs))
