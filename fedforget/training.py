"""The training and evaluation loops, shared by clients and server.

One training loop (:func:`train`) serves both task types; what differs is the
loss (:func:`loss_function`) and what evaluation measures:

* ``classification``: cross-entropy; accuracy.
* ``segmentation``: MONAI ``DiceCELoss`` (CE and soft Dice, halves, over the
  batch, as the PUF paper's ProstateMRI code); Dice of the arg-max prediction
  per image, averaged over the classes with background (the papers' number,
  MONAI ``DiceMetric(include_background=True)``) and foreground only.

Models train on ``device`` and are handed back on the CPU. On the CPU a
training call is the plain loop. On a CUDA device the same recipe runs at the
device's speed: the data lives on the device (:func:`resident`), the
augmentation runs there with a generator on the device, the forward pass and
loss run under bf16 autocast where the device supports it
(``mixed-precision``), convolutional models use the channels-last layout, the
loss is summed on the device (no synchronisation per step) and evaluation
takes large batches.

The optimisers are torch.optim's functional updates (:class:`ClientOptimizer`),
not ``torch.optim.Optimizer`` objects: constructing one imports
``torch._dynamo`` (with sympy), which costs a fresh ClientApp process more than
a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from fedforget.data.augment import Augmentation

EVAL_BATCH_SIZE = 1024
SEGMENTATION_EVAL_BATCH_SIZE = 32
ACCELERATOR_EVAL_BATCH_SIZE = 4096
"""Evaluation batch of classification on a CUDA device (no gradients: memory is activations)."""
ACCELERATOR_SEGMENTATION_EVAL_BATCH_SIZE = 128
RESIDENT_TENSORS = 4
"""Tensors :func:`resident` keeps on an accelerator per process (a dataset's images and labels)."""
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


class ClientOptimizer:
    """SGD (with optional momentum), Adam or AdamW, updating parameters in place.

    Each :meth:`step` calls the functional update that ``torch.optim.SGD``,
    ``Adam`` and ``AdamW`` call in their own ``step`` (``torch.optim.sgd.sgd``,
    ``torch.optim.adam.adam``, ``torch.optim.adamw.adamw``) with the same
    arguments and state, so the result is bit for bit torch.optim's, without
    constructing a ``torch.optim.Optimizer``: that constructor imports
    ``torch._dynamo`` (``add_param_group`` is wrapped in
    ``torch._disable_dynamo``), over a second in a fresh process. As
    torch.optim does, parameters without a gradient are left alone.
    """

    def __init__(
        self,
        name: str,
        parameters: Iterable[nn.Parameter],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
    ) -> None:
        if name not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {name!r}: use sgd, adam or adamw")
        if momentum and name != "sgd":
            raise ValueError(f"momentum is an SGD setting; {name} has its own betas")
        self.name = name
        self.parameters = list(parameters)
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.betas = (0.9, 0.999)  # torch.optim.Adam's and AdamW's defaults
        self.eps = 1e-8
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        """Drop every gradient (``torch.optim``'s default ``set_to_none=True``)."""
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        indices = [i for i, p in enumerate(self.parameters) if p.grad is not None]
        params = [self.parameters[i] for i in indices]
        grads = [p.grad for p in params]
        if self.name == "sgd":
            self._sgd(indices, params, grads)  # type: ignore[arg-type]
        else:
            self._adam(indices, params, grads)  # type: ignore[arg-type]

    def _sgd(
        self, indices: list[int], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        from torch.optim.sgd import sgd

        buffers: list[torch.Tensor | None] = [
            self.state.get(i, {}).get("momentum_buffer") for i in indices
        ]
        sgd(
            params,
            grads,
            buffers,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )
        if self.momentum:
            for i, buffer in zip(indices, buffers, strict=True):
                if buffer is not None:
                    self.state.setdefault(i, {})["momentum_buffer"] = buffer

    def _adam(
        self, indices: list[int], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        from torch.optim.adam import adam

        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        for i, p in zip(indices, params, strict=True):
            if i not in self.state:  # as Adam._init_group: the step count on the CPU
                self.state[i] = {
                    "step": torch.tensor(0.0, dtype=scalar),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        states = [self.state[i] for i in indices]
        adam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            amsgrad=False,
            has_complex=any(torch.is_complex(p) for p in params),
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
            decoupled_weight_decay=self.name == "adamw",
        )


def make_optimizer(
    name: str,
    parameters: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> ClientOptimizer:
    """A client optimiser, new every round (no state carried across rounds).

    ``sgd`` is plain SGD (no momentum unless ``momentum``), the paper's CIFAR
    client optimiser; without momentum its weight decay ``w -= lr * wd * w``
    is the same in the coupled and in the lr-scaled decoupled form. ``adamw``
    decouples weight decay from Adam (the paper's ViT); ``adam`` adds it to
    the gradient (the paper's UNet, Adam with L2 1e-4). The arithmetic is
    torch.optim's (:class:`ClientOptimizer`).
    """
    return ClientOptimizer(name, parameters, lr, weight_decay, momentum)


def accelerated(device: torch.device) -> bool:
    """Whether ``device`` takes the fast path (a CUDA device); the CPU runs the plain loop."""
    return device.type == "cuda"


def autocast(device: torch.device, mixed_precision: bool) -> AbstractContextManager[object]:
    """bf16 autocast on a CUDA device that supports bf16 (if ``mixed_precision``); else nothing."""
    if mixed_precision and accelerated(device) and torch.cuda.is_bf16_supported():
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


_resident: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def resident(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``, copied there once per process and kept.

    On the CPU this is ``tensor`` itself. On an accelerator the copy is kept
    (the last :data:`RESIDENT_TENSORS` tensors, keyed by the source tensor,
    which is kept alive with it), so a process that serves many clients and
    rounds of one data set copies it to the device once; index the copy with
    an index on the device.
    """
    device = torch.device(device)
    if not accelerated(device):
        return tensor.to(device)
    key = (id(tensor), str(device))
    if key not in _resident:
        while len(_resident) >= RESIDENT_TENSORS:
            del _resident[next(iter(_resident))]
        _resident[key] = (tensor, tensor.to(device))
    return _resident[key][1]


def channels_last(model: nn.Module, x: torch.Tensor, device: torch.device) -> bool:
    """Whether to run ``model`` on images ``x`` in the channels-last layout (CUDA, 4-D input)."""
    return accelerated(device) and x.dim() == 4 and any(p.dim() == 4 for p in model.parameters())


@contextmanager
def placed(model: nn.Module, device: torch.device, layout: bool) -> Iterator[nn.Module]:
    """``model`` on ``device`` (channels-last if ``layout``) in the block, on the CPU after it."""
    model.to(device)
    if layout:
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if layout:
            model.to(memory_format=torch.contiguous_format)
        model.to("cpu")


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
    mixed_precision: bool = True,
    max_steps: int | None = None,
) -> float:
    """Train in place; return the mean loss over all mini-batches.

    Mini-batches are reshuffled every epoch by a generator seeded with
    ``seed``; augmentation draws from a second generator seeded with
    ``seed + 1`` (on the device: a CUDA device draws on its own generator),
    so a run is reproducible and switching augmentation on does not change
    the batch order. Defaults: plain SGD and cross-entropy (the paper's
    client optimiser). ``mixed_precision``: bf16 autocast on a CUDA device
    that supports it (ignored on the CPU). ``max_steps`` stops after that
    many mini-batches: the first ones of the ``epochs``-epoch schedule.
    """
    device = torch.device(device)
    layout = channels_last(model, x, device)
    x, y = x.to(device), y.to(device)
    criterion = loss_function(task)
    generator = torch.Generator().manual_seed(seed)
    augment_generator = (
        torch.Generator(device=device if accelerated(device) else "cpu").manual_seed(seed + 1)
        if augmentation
        else None
    )
    total = torch.zeros((), dtype=torch.float64, device=device)
    count, steps = 0, 0
    with placed(model, device, layout):
        model.train()
        optim = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
        for _ in range(epochs):
            if max_steps is not None and steps >= max_steps:
                break
            order = torch.randperm(len(x), generator=generator).to(device)
            for start in range(0, len(x), batch_size):
                if max_steps is not None and steps >= max_steps:
                    break
                steps += 1
                batch = order[start : start + batch_size]
                inputs, targets = x[batch], y[batch]
                if augmentation is not None and augment_generator is not None:
                    inputs, targets = augmentation(inputs, targets, augment_generator)
                if layout:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                optim.zero_grad()
                with autocast(device, mixed_precision):
                    loss = criterion(model(inputs), targets)
                loss.backward()
                optim.step()
                # summed in float64 on the device: the same sum as Python floats, without a
                # synchronisation per step on an accelerator
                total += loss.detach().double() * len(batch)
                count += len(batch)
    return float(total) / max(count, 1)


def eval_batch_size(task: str, device: torch.device) -> int:
    """Examples per evaluation batch: larger on an accelerator."""
    if task == "segmentation":
        fast = accelerated(device)
        return ACCELERATOR_SEGMENTATION_EVAL_BATCH_SIZE if fast else SEGMENTATION_EVAL_BATCH_SIZE
    return ACCELERATOR_EVAL_BATCH_SIZE if accelerated(device) else EVAL_BATCH_SIZE


@torch.no_grad()
def eval_batches(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``model``'s outputs and the targets, batch by batch (eval mode, on ``device``).

    Batches are :func:`eval_batch_size` examples; images run channels-last where
    :func:`channels_last` says so. The model is back on the CPU once the batches
    are all taken.
    """
    layout = channels_last(model, x, device)
    size = eval_batch_size(task, device)
    with placed(model, device, layout):
        model.eval()
        for start in range(0, len(x), size):
            inputs = x[start : start + size].to(device)
            if layout:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yield model(inputs), y[start : start + size].to(device)


@torch.no_grad()
def per_example_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str = "cpu"
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Cross-entropy and correctness of every example (model in eval mode)."""
    losses, correct = [], []
    for logits, target in eval_batches(model, x, y, "classification", torch.device(device)):
        losses.append(F.cross_entropy(logits, target, reduction="none").double().cpu())
        correct.append((logits.argmax(dim=1) == target).cpu())
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

    soft_dice = DiceLoss(to_onehot_y=True, softmax=True, reduction="none")
    out: dict[str, list[torch.Tensor]] = {"loss": [], "dice": [], "dice_fg": []}
    for logits, masks in eval_batches(model, x, y, "segmentation", torch.device(device)):
        classes = logits.shape[1]
        ce = F.cross_entropy(logits, masks, reduction="none").mean(dim=(1, 2))
        dice_loss = soft_dice(logits, masks.unsqueeze(1)).flatten(1).mean(dim=1)
        prediction = F.one_hot(logits.argmax(dim=1), classes).permute(0, 3, 1, 2)
        truth = F.one_hot(masks, classes).permute(0, 3, 1, 2)
        dice = compute_dice(prediction, truth, include_background=True, ignore_empty=False)
        out["loss"].append(((ce + dice_loss) / 2).double().cpu())
        out["dice"].append(dice.mean(dim=1).double().cpu())
        out["dice_fg"].append(dice[:, 1:].mean(dim=1).double().cpu())
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
