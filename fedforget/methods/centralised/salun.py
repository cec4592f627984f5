"""SalUn: random labels restricted to the weights most salient for the forget loss (``salun``).

1. Saliency: the gradient of the forget loss at the original weights ``w_0``,

       g = grad_w L_f(w_0),   L_f(w) = (1/|D_f|) sum_{(x, y) in D_f} CE(f_w(x), y)

   (eval mode, so no normalisation statistic moves; SalUn's code sums
   per-batch means, the same up to scale for equal batches, and takes the
   gradient of ``-L_f``, the same magnitude).
2. Mask: ``m_i = 1`` for the ``mask-fraction`` of all weights with the largest
   ``|g_i|``, 0 elsewhere. The threshold is *global*, one ranking over every
   parameter tensor together, as SalUn's ``generate_mask.py``; ties at the
   threshold are broken by ``torch.topk``.
3. RL (:mod:`~fedforget.methods.centralised.random_labels`) on the forget set
   with random wrong labels plus the retain set, where only masked weights
   move: ``w <- w - lr * (m * step)`` (element-wise). The unmasked weights stay bit-identical
   to ``w_0``: their gradients are zeroed before every step, and because
   momentum and weight decay could still move them, they are copied back
   from ``w_0`` after every step. (SalUn's code only masks gradients, so its
   weight decay does shrink the unmasked weights.)

Buffers (BatchNorm running statistics) are not weights and update as in RL.

Fan et al., SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation, ICLR 2024,
arXiv 2310.12508. Cost: one pass over the forget set for the mask, then
``epochs`` over both sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from fedforget.methods.base import ConfigValue
from fedforget.methods.centralised.base import (
    CentralisedMethod,
    CentralisedOutcome,
    UnlearningData,
)
from fedforget.methods.centralised.common import (
    hand_back,
    range_problem,
    require_nonempty,
    sgd,
    start,
)
from fedforget.methods.centralised.finetune import (
    FINE_TUNING_DEFAULTS,
    FINE_TUNING_LIMITS,
    fine_tuning_problem,
)
from fedforget.methods.centralised.random_labels import train_on_random_labels
from fedforget.methods.space import IntRange, LogUniform, SearchSpace, Uniform
from fedforget.training import EVAL_BATCH_SIZE, loss_function


def forget_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str
) -> list[torch.Tensor]:
    """``grad_w`` of the mean loss over ``(x, y)``, one tensor per parameter (eval mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    criterion = loss_function(task)
    for begin in range(0, len(x), EVAL_BATCH_SIZE):
        inputs = x[begin : begin + EVAL_BATCH_SIZE].to(device)
        targets = y[begin : begin + EVAL_BATCH_SIZE].to(device)
        (criterion(model(inputs), targets) * (len(inputs) / len(x))).backward()
    gradients = [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for p in model.parameters()
    ]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return gradients


def saliency_mask(gradients: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """Boolean masks selecting the ``fraction`` of all entries with the largest ``|gradient|``.

    One global ranking over every tensor together; exactly
    ``round(fraction x total)`` entries are selected.
    """
    flat = torch.cat([g.detach().abs().flatten().float() for g in gradients])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    count = round(fraction * flat.numel())
    if count:
        chosen[torch.topk(flat, count, sorted=False).indices] = True
    return [
        part.view_as(g)
        for part, g in zip(chosen.split([g.numel() for g in gradients]), gradients, strict=True)
    ]


class SalUn(CentralisedMethod):
    """RL where only the top ``mask-fraction`` of weights by forget-gradient magnitude move."""

    name = "salun"
    limits: ClassVar[Mapping[str, float]] = {**FINE_TUNING_LIMITS, "mask-fraction": 1.0}
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        **FINE_TUNING_DEFAULTS,
        "epochs": 3,
        "mask-fraction": 0.5,
        "augment": False,
    }
    """``mask-fraction`` 0.5: the paper's default sparsity (half the weights may change)."""
    space: ClassVar[SearchSpace] = {
        "lr": LogUniform(1e-3, 0.1),
        "epochs": IntRange(1, 10),
        "mask-fraction": Uniform(0.1, 0.9),
    }
    reference = (
        "Fan et al., SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency "
        "in Both Image Classification and Generation, ICLR 2024, arXiv 2310.12508"
    )
    summary = "random-label unlearning on the top-saliency weights only; the rest stay fixed"

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """The fine-tuning ranges, and mask-fraction in (0, 1]."""
        return fine_tuning_problem(cls.table, settings) or range_problem(
            cls.table, settings, unit_open=("mask-fraction",)
        )

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """Mask from the forget gradient, then RL steps that only change masked weights."""
        require_nonempty(data, forget=True)
        model = start(original, data)
        parameters = list(model.parameters())
        masks = saliency_mask(
            forget_gradient(model, data.forget_x, data.forget_y, data.task),
            float(settings["mask-fraction"]),
        )
        frozen = [p.detach().clone() for p in parameters]
        # zeroed gradients keep the unmasked weights out of the step and the momentum ...
        hooks = [
            parameter.register_hook(lambda grad, mask=mask: grad * mask)
            for parameter, mask in zip(parameters, masks, strict=True)
            if parameter.requires_grad
        ]

        def restore_unmasked() -> None:
            # ... and copying them back undoes what weight decay still does to them
            with torch.no_grad():
                for parameter, mask, value in zip(parameters, masks, frozen, strict=True):
                    parameter.copy_(torch.where(mask, parameter, value))

        try:
            spent = train_on_random_labels(
                model,
                data,
                settings,
                optimiser=sgd(parameters, settings),
                after_step=restore_unmasked,
            )
        finally:
            for hook in hooks:
                hook.remove()
        return CentralisedOutcome(hand_back(model), forget_epochs=spent + 1.0, retain_epochs=spent)
