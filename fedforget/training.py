"""The training and evaluation loops, shared by clients and server.

One training loop (:func:`train`) serves both task types; what differs is the
loss (:func:`loss_function`) and what evaluation measures:

* ``classification``: cross-entropy; accuracy.
* ``segmentation``: MONAI ``DiceCELoss`` (CE and soft Dice, halves, over the
  batch, as the PUF paper's ProstateMRI code); Dice of the arg-max prediction
  per image, averaged over the classes with background (the papers' number,
  MONAI ``DiceMetric(include_background=True)``) and foreground only.

Models train on ``device`` and are handed back on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from fedforget.data.augment import Augmentation

EVAL_BATCH_SIZE = 1024
SEGMENTATION_EVAL_BATCH_SIZE = 32
TASK_TYPES = ("classification", "segmentation")

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the GPU when one is visible, else the CPU; otherwise ``name`` itself."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def loss_function(task: str) -> LossFunction:
    """The training loss of a task type (logits, targets) -> scalar."""
    if task == "classification":
        return F.cross_entropy
    if task == "segmentation":
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(
            to_onehot_y=True, softmax=True, batch=True, lambda_dice=0.5, lambda_ce=0.5
        )

        def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
            return dice_ce(logits, masks.unsqueeze(1))

        return segmentation_loss
    raise ValueError(f"unknown task type {task!r}: use one of {', '.join(TASK_TYPES)}")


def make_optimizer(
    name: str, parameters: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """A client optimiser, new every round (no state carried across rounds).

    ``sgd`` is plain SGD (no momentum), the paper's CIFAR client optimiser;
    without momentum its weight decay ``w -= lr * wd * w`` is the same in the
    coupled and in the lr-scaled decoupled form. ``adamw`` decouples weight
    decay from Adam (the paper's ViT); ``adam`` adds it to the gradient (the
    paper's UNet, Adam with L2 1e-4).
    """
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: use sgd, adam or adamw")


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    task: str = "classification",
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    augmentation: Augmentation | None = None,
    device: torch.device | str = "cpu",
    max_steps: int | None = None,
) -> float:
    """Train in place; return the mean loss over all mini-batches.

    Mini-batches are reshuffled every epoch by a generator seeded with
    ``seed``; augmentation draws from a second generator seeded with
    ``seed + 1``, so a run is reproducible and switching augmentation on does
    not change the batch order. Defaults: plain SGD and cross-entropy (the
    paper's client optimiser). ``max_steps`` stops after that many
    mini-batches: the first ones of the ``epochs``-epoch schedule.
    """
    device = torch.device(device)
    model.to(device)
    model.train()
    criterion = loss_function(task)
    optim = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator().manual_seed(seed + 1) if augmentation else None
    total, count, steps = 0.0, 0, 0
    for _ in range(epochs):
        if max_steps is not None and steps >= max_steps:
            break
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            if max_steps is not None and steps >= max_steps:
                break
            steps += 1
            batch = order[start : start + batch_size]
            inputs, targets = x[batch], y[batch]
            if augmentation is not None and augment_generator is not None:
                inputs, targets = augmentation(inputs, targets, augment_generator)
            inputs, targets = inputs.to(device), targets.to(device)
            optim.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optim.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
    model.to("cpu")
    return total / max(count, 1)


@torch.no_grad()
def per_example_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str = "cpu"
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Cross-entropy and correctness of every example (model in eval mode)."""
    device = torch.device(device)
    model.to(device)
    model.eval()
    losses, correct = [], []
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        logits = model(x[start : start + EVAL_BATCH_SIZE].to(device))
        target = y[start : start + EVAL_BATCH_SIZE].to(device)
        losses.append(F.cross_entropy(logits, target, reduction="none").double().cpu())
        correct.append((logits.argmax(dim=1) == target).cpu())
    model.to("cpu")
    if not losses:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return torch.cat(losses).numpy(), torch.cat(correct).numpy()


@torch.no_grad()
def per_example_segmentation(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str = "cpu"
) -> dict[str, NDArray[np.float64]]:
    """Per image: ``loss`` ((CE + soft Dice loss) / 2), ``dice`` (with background), ``dice_fg``.

    Dice compares the arg-max prediction with the mask, per class; an image
    whose mask and prediction both lack a class scores 1 for it.
    """
    from monai.losses import DiceLoss
    from monai.metrics import compute_dice

    device = torch.device(device)
    model.to(device)
    model.eval()
    soft_dice = DiceLoss(to_onehot_y=True, softmax=True, reduction="none")
    out: dict[str, list[torch.Tensor]] = {"loss": [], "dice": [], "dice_fg": []}
    for start in range(0, len(x), SEGMENTATION_EVAL_BATCH_SIZE):
        logits = model(x[start : start + SEGMENTATION_EVAL_BATCH_SIZE].to(device))
        masks = y[start : start + SEGMENTATION_EVAL_BATCH_SIZE].to(device)
        classes = logits.shape[1]
        ce = F.cross_entropy(logits, masks, reduction="none").mean(dim=(1, 2))
        dice_loss = soft_dice(logits, masks.unsqueeze(1)).flatten(1).mean(dim=1)
        prediction = F.one_hot(logits.argmax(dim=1), classes).permute(0, 3, 1, 2)
        truth = F.one_hot(masks, classes).permute(0, 3, 1, 2)
        dice = compute_dice(prediction, truth, include_background=True, ignore_empty=False)
        out["loss"].append(((ce + dice_loss) / 2).double().cpu())
        out["dice"].append(dice.mean(dim=1).double().cpu())
        out["dice_fg"].append(dice[:, 1:].mean(dim=1).double().cpu())
    model.to("cpu")
    return {k: torch.cat(v).numpy() if v else np.zeros(0) for k, v in out.items()}


def per_example_metrics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str = "classification",
    device: torch.device | str = "cpu",
) -> dict[str, NDArray[np.float64]]:
    """Per-example ``loss`` and scores: ``correct`` (classification) or ``dice``, ``dice_fg``."""
    if task == "segmentation":
        return per_example_segmentation(model, x, y, device)
    losses, correct = per_example_loss(model, x, y, device)
    return {"loss": losses, "correct": correct.astype(np.float64)}


def evaluate_task(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str = "classification",
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Dataset means: ``loss`` and ``accuracy``, or ``loss``, ``dice`` and ``dice_fg``."""
    values = per_example_metrics(model, x, y, task, device)
    names = {"correct": "accuracy"}
    return {names.get(k, k): float(v.mean()) if len(v) else float("nan") for k, v in values.items()}
