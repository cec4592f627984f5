"""The training and evaluation loop for classification, shared by clients and server."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

EVAL_BATCH_SIZE = 1024


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> float:
    """Train in place with plain SGD (the paper's client optimiser); return the mean loss.

    Mini-batches are reshuffled every epoch by a generator seeded with ``seed``,
    so a run is reproducible.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
    return total / max(count, 1)


@torch.no_grad()
def per_example_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Cross-entropy and correctness of every example (model in eval mode)."""
    model.eval()
    losses, correct = [], []
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        logits = model(x[start : start + EVAL_BATCH_SIZE])
        target = y[start : start + EVAL_BATCH_SIZE]
        losses.append(F.cross_entropy(logits, target, reduction="none").double())
        correct.append(logits.argmax(dim=1) == target)
    if not losses:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return torch.cat(losses).numpy(), torch.cat(correct).numpy()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) on ``(x, y)``."""
    losses, correct = per_example_loss(model, x, y)
    if len(losses) == 0:
        return float("nan"), float("nan")
    return float(losses.mean()), float(correct.mean())
