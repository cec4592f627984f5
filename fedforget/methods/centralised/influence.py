"""Influence unlearning with a WoodFisher inverse Hessian (``iu``).

Izzo et al., "Approximate Data Deletion from Machine Learning Models"
(AISTATS 2021, arXiv 2002.10077) remove data with one Newton step; Jia et
al., "Model Sparsity Can Simplify Machine Unlearning" (NeurIPS 2023, arXiv
2304.04934) run it as the "IU" baseline with the inverse Hessian
approximated by WoodFisher (Singh & Alistarh, NeurIPS 2020, arXiv 2004.14340).

The update. The original ``w`` (approximately) minimises the mean loss over
forget + retain data; the retrained model minimises the mean retain loss
``L_R(w) = (1/n) sum_{i in R} l_i(w)`` (``n`` retain examples). One Newton
step on ``L_R`` from a minimiser of the full objective, where ``sum_{i in R}
grad l_i(w) = -sum_{f in F} grad l_f(w)``, is the removal step

    w_new = w + alpha * (1/n) * H^{-1} * sum_{f in F} grad l_f(w),

with ``H`` the Hessian of ``L_R`` at ``w`` and ``alpha`` a scale (1 is the
Newton step; :func:`influence_update` returns the step for ``alpha = 1``).
For a quadratic loss the step lands exactly on the retrained solution.

``H`` is either

* ``woodfisher`` (default): the damped empirical Fisher of ``m`` retain
  examples drawn under ``data.seed``, ``F = (1/m) sum_k g_k g_k^T + damping * I``
  with ``g_k`` the per-example loss gradients, inverted by WoodFisher's
  recursive Sherman-Morrison updates (:func:`woodfisher_inverse_product`);
* ``exact``: the Hessian of ``L_R`` over the whole retain set plus
  ``damping * I``, by automatic differentiation, for models of at most
  :data:`EXACT_HESSIAN_MAX_PARAMETERS` parameters.

With ``hessian = exact`` and ``damping = 0`` the step is exact for a
quadratic loss (least squares): it lands on the retrained solution.

On a network that fits its training data, per-example gradients are small,
the empirical Fisher is nearly 0 and ``damping`` sets the step's size
(``damping`` large: ``w + alpha / (n damping) * sum_F grad l_f``, a
gradient-ascent step on the forget loss). The defaults (``damping`` 0.05,
``alpha`` 1) were chosen on the embedded digits CNN: forgetting class 3
takes its forget accuracy from 1.00 to 0; a random 10% barely moves (the
retrained model scores those examples as the original does).

Gradients are taken in eval mode (no dropout; batch-norm running
statistics), over the parameters that require gradients.
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
from fedforget.methods.centralised.common import hand_back, range_problem, require_nonempty
from fedforget.methods.space import LogUniform, SearchSpace
from fedforget.training import EVAL_BATCH_SIZE, LossFunction, loss_function

HESSIANS = ("woodfisher", "exact")
EXACT_HESSIAN_MAX_PARAMETERS = 5_000
"""The exact Hessian is ``P x P``: beyond this many parameters use ``woodfisher``."""
WOODFISHER_MAX_GRADIENT_VALUES = 1 << 28
"""WoodFisher keeps ``samples x parameters`` gradient values (1 GiB of float32 at most)."""


def woodfisher_inverse_product(
    gradients: torch.Tensor, vector: torch.Tensor, damping: float
) -> torch.Tensor:
    """``(damping * I + (1/m) G^T G)^{-1} vector`` by WoodFisher's recursion.

    ``gradients`` ``G`` is ``(m, P)``, one per-example gradient a row;
    ``vector`` is ``(P,)``. WoodFisher starts from ``H_0^{-1} = I / damping``
    and adds one outer product at a time (Sherman-Morrison):

        u_k = H_{k-1}^{-1} g_k,    d_k = m + g_k^T u_k,
        H_k^{-1} = H_{k-1}^{-1} - u_k u_k^T / d_k,

    so ``H_m^{-1} v = v / damping - sum_k u_k (u_k^T v) / d_k``. Every ``u_k``
    lies in the span of ``g_1..g_k``: the recursion runs on their
    coefficients ``u_k = sum_i C[k, i] g_i`` using only the Gram matrix ``G
    G^T`` (``m x m``, in float64), so it never forms a ``P x P`` matrix and
    costs one ``G G^T`` product plus ``O(m^3)``. The result has ``vector``'s dtype.
    """
    if damping <= 0:
        raise ValueError(f"WoodFisher needs damping > 0, got {damping!r}")
    samples = gradients.shape[0]
    gram = (gradients @ gradients.T).double()
    projected = (gradients @ vector).double()
    coefficients = torch.zeros(samples, samples, dtype=torch.float64, device=gradients.device)
    denominators = torch.zeros(samples, dtype=torch.float64, device=gradients.device)
    for k in range(samples):
        # u_j . g_k for j < k, then u_k = g_k / damping - sum_j u_j (u_j . g_k) / d_j
        dots = coefficients[:k] @ gram[:, k]
        coefficients[k] = -(dots / denominators[:k]) @ coefficients[:k]
        coefficients[k, k] += 1.0 / damping
        denominators[k] = samples + coefficients[k] @ gram[:, k]
    weights = coefficients.T @ ((coefficients @ projected) / denominators)
    return vector / damping - gradients.T @ weights.to(gradients.dtype)


def _parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _flat_gradient(loss: torch.Tensor, parameters: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, parameters)])


def summed_gradient(
    model: nn.Module, loss: LossFunction, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """``sum_i grad l_i(w)`` over ``(x, y)`` as one flat vector (``loss`` is a batch mean)."""
    parameters = _parameters(model)
    total = torch.zeros(sum(p.numel() for p in parameters), dtype=parameters[0].dtype)
    total = total.to(device)
    for begin in range(0, len(x), EVAL_BATCH_SIZE):
        inputs = x[begin : begin + EVAL_BATCH_SIZE].to(device)
        targets = y[begin : begin + EVAL_BATCH_SIZE].to(device)
        total += _flat_gradient(loss(model(inputs), targets) * len(inputs), parameters)
    return total


def per_example_gradients(
    model: nn.Module, loss: LossFunction, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """``(len(x), P)``: the loss gradient of each example, one backward pass each."""
    parameters = _parameters(model)
    rows = []
    for i in range(len(x)):
        inputs, targets = x[i : i + 1].to(device), y[i : i + 1].to(device)
        rows.append(_flat_gradient(loss(model(inputs), targets), parameters))
    return torch.stack(rows)


def exact_hessian(
    model: nn.Module, loss: LossFunction, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The ``P x P`` Hessian of the mean loss over ``(x, y)`` (small models only)."""
    parameters = _parameters(model)
    count = sum(p.numel() for p in parameters)
    if count > EXACT_HESSIAN_MAX_PARAMETERS:
        raise ValueError(
            f"the exact Hessian of a {count}-parameter model is too large "
            f"(limit {EXACT_HESSIAN_MAX_PARAMETERS}): set centralised.iu.hessian to woodfisher"
        )
    hessian = torch.zeros(count, count, dtype=parameters[0].dtype, device=device)
    for begin in range(0, len(x), EVAL_BATCH_SIZE):
        inputs = x[begin : begin + EVAL_BATCH_SIZE].to(device)
        targets = y[begin : begin + EVAL_BATCH_SIZE].to(device)
        batch_loss = loss(model(inputs), targets) * len(inputs)
        grads = torch.autograd.grad(batch_loss, parameters, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        for row in range(count):
            second = torch.autograd.grad(flat[row], parameters, retain_graph=True)
            hessian[row] += torch.cat([g.reshape(-1) for g in second])
    return hessian / len(x)


def influence_update(
    model: nn.Module,
    loss: LossFunction,
    forget: tuple[torch.Tensor, torch.Tensor],
    retain: tuple[torch.Tensor, torch.Tensor],
    *,
    hessian: str = "woodfisher",
    damping: float = 0.05,
    samples: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The removal Newton step ``(1/n) H^{-1} sum_{f in F} grad l_f(w)`` as a flat vector.

    ``model`` is evaluated in eval mode where it is placed on ``device``;
    ``loss`` is the batch-mean training loss; ``forget`` / ``retain`` are
    ``(x, y)``. ``hessian`` is ``woodfisher`` (damped empirical Fisher of
    ``samples`` retain examples drawn under ``seed``; all of them when the
    retain set is smaller) or ``exact`` (Hessian of the mean retain loss
    plus ``damping * I``). The vector follows ``model``'s parameter order.
    """
    if hessian not in HESSIANS:
        raise ValueError(f"unknown Hessian {hessian!r}: use one of {', '.join(HESSIANS)}")
    device = torch.device(device)
    model.to(device).eval()
    retain_x, retain_y = retain
    forget_gradient = summed_gradient(model, loss, *forget, device)
    if hessian == "exact":
        matrix = exact_hessian(model, loss, retain_x, retain_y, device)
        matrix += damping * torch.eye(len(matrix), dtype=matrix.dtype, device=device)
        return torch.linalg.solve(matrix, forget_gradient) / len(retain_x)
    count = min(samples, len(retain_x))
    values = count * forget_gradient.numel()
    if values > WOODFISHER_MAX_GRADIENT_VALUES:
        raise ValueError(
            f"iu keeps samples x parameters = {count} x {forget_gradient.numel()} gradient "
            f"values, over the limit of {WOODFISHER_MAX_GRADIENT_VALUES}: "
            "lower centralised.iu.samples"
        )
    chosen = torch.randperm(len(retain_x), generator=torch.Generator().manual_seed(seed))[:count]
    gradients = per_example_gradients(model, loss, retain_x[chosen], retain_y[chosen], device)
    return woodfisher_inverse_product(gradients, forget_gradient, damping) / len(retain_x)


@torch.no_grad()
def add_flat(model: nn.Module, step: torch.Tensor) -> None:
    """Add a flat vector (in the order of the parameters that require gradients) to them."""
    offset = 0
    for parameter in _parameters(model):
        size = parameter.numel()
        parameter += step[offset : offset + size].view_as(parameter).to(parameter.dtype)
        offset += size


class InfluenceUnlearning(CentralisedMethod):
    """One scaled Newton step that removes the forget set's influence (WoodFisher Hessian)."""

    name = "iu"
    limits: ClassVar[Mapping[str, float]] = {"alpha": 1e6, "damping": 1e6, "samples": 100000}
    defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "alpha": 1.0,
        "hessian": "woodfisher",
        "damping": 0.05,
        "samples": 256,
    }
    space: ClassVar[SearchSpace] = {
        "alpha": LogUniform(0.01, 10.0),
        "damping": LogUniform(1e-3, 1.0),
    }
    reference = (
        "Izzo et al., Approximate Data Deletion from Machine Learning Models, AISTATS 2021, "
        "arXiv 2002.10077; WoodFisher: Singh & Alistarh, NeurIPS 2020, arXiv 2004.14340; "
        "as the IU baseline of Jia et al., NeurIPS 2023, arXiv 2304.04934"
    )
    summary = (
        "w + alpha (1/n) H^-1 sum of forget-set gradients, H the retain set's damped "
        "empirical Fisher inverted by WoodFisher (or the exact Hessian)"
    )

    @classmethod
    def check_settings(cls, settings: Mapping[str, ConfigValue]) -> str:
        """``alpha`` > 0, ``samples`` >= 1, ``hessian`` known, ``damping`` > 0 (>= 0 if exact)."""
        if settings["hessian"] not in HESSIANS:
            return (
                f"{cls.table}.hessian must be one of {', '.join(HESSIANS)}, "
                f"got {settings['hessian']!r}"
            )
        problem = range_problem(cls.table, settings, positive=("alpha",), at_least_one=("samples",))
        if problem or settings["hessian"] == "woodfisher":
            return problem or range_problem(cls.table, settings, positive=("damping",))
        return range_problem(cls.table, settings, non_negative=("damping",))

    def unlearn(
        self, original: nn.Module, data: UnlearningData, settings: Mapping[str, ConfigValue]
    ) -> CentralisedOutcome:
        """Add ``alpha`` times the removal Newton step to ``original``'s parameters."""
        problem = self.check_settings(settings)
        if problem:
            raise ValueError(problem)
        require_nonempty(data, forget=True, retain=True)
        hessian = str(settings["hessian"])
        step = influence_update(
            original,
            loss_function(data.task),
            (data.forget_x, data.forget_y),
            (data.retain_x, data.retain_y),
            hessian=hessian,
            damping=float(settings["damping"]),
            samples=int(settings["samples"]),
            seed=data.seed,
            device=data.device,
        )
        add_flat(original, float(settings["alpha"]) * step)
        # the exact Hessian reads the whole retain set; WoodFisher its sampled examples
        used = len(data.retain_x) if hessian == "exact" else int(settings["samples"])
        retain_epochs = min(used, len(data.retain_x)) / len(data.retain_x)
        return CentralisedOutcome(
            hand_back(original), forget_epochs=1.0, retain_epochs=retain_epochs
        )
