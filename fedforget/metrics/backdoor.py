"""Backdoor verification: whether the model still obeys the forgotten clients' trigger.

``backdoor_asr`` (attack success rate) = the share of triggered test images
whose true label is not the target class that the model assigns to the target
class (:mod:`fedforget.data.backdoor` makes the trigger). The original model,
trained with the poisoned clients, obeys the trigger; the retrained model never
saw it and stays near chance. A method that forgot the clients has an ASR near
the retrained model's; one that only hid them keeps a high ASR.
"""

from __future__ import annotations

import numpy as np
import torch

from fedforget.metrics.base import MetricContext, MetricInfo, Splits

BACKDOOR_ASR = MetricInfo(
    "backdoor_asr",
    "attack success rate: share of triggered test images (true label not the target class) "
    "classified as the target class",
    "attack success rate",
    "the retrained model's value (near chance: it never saw the trigger)",
    "retrain",
    tasks=("classification",),
    scenarios=("backdoor",),
    headline=True,
)


def backdoor_asr(context: MetricContext, splits: Splits) -> float:
    """The unlearned model's attack success rate on the splits' triggered test images."""
    if splits.backdoor_x is None or splits.backdoor_target is None:
        raise ValueError("backdoor_asr needs the backdoor scenario's triggered test images")
    target = torch.full((len(splits.backdoor_x),), splits.backdoor_target, dtype=torch.int64)
    out = context.cache.classification(
        context.unlearned, splits.backdoor_x, target, splits.num_classes, context.device
    )
    return float(np.mean(out.correct)) if len(out.correct) else float("nan")
