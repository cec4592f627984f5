"""Centralised baselines IU, SCRUB, TRW and the output filter, each on a small problem."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedforget.data.datasets import load_digits_split
from fedforget.methods.centralised import CENTRALISED_METHODS, UnlearningData, centralised_class
from fedforget.methods.centralised.common import accuracy
from fedforget.methods.centralised.influence import (
    InfluenceUnlearning,
    add_flat,
    influence_update,
    woodfisher_inverse_product,
)
from fedforget.methods.centralised.output_filter import OutputFilter, OutputFilterUnlearning
from fedforget.methods.centralised.scrub import SCRUB, distillation_divergence
from fedforget.methods.centralised.trw import (
    TiltedReweighting,
    class_similarity,
    tilted_targets,
)
from fedforget.training import per_example_metrics, train

FORGET_CLASS = 3
MINE = ("iu", "scrub", "trw", "output-filter")


# ---------------------------------------------------------------- fixtures
def mlp() -> nn.Module:
    """A small MLP for 8x8 digits (the methods do not care about the architecture)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def digits():
    """600 digits training examples and an MLP trained on all of them (~99% train accuracy)."""
    split = load_digits_split("", 0.2, 0)
    x, y = split.train_x[:600], split.train_y[:600]
    model = mlp()
    train(model, x, y, epochs=30, batch_size=64, lr=0.1, seed=0)
    return x, y, model.eval()


def split_data(digits, scenario: str = "class") -> UnlearningData:
    """Forget class 3 (``class``) or a random 10% (``random``) of the digits fixture."""
    x, y, _ = digits
    if scenario == "class":
        forget = y == FORGET_CLASS
    else:
        forget = torch.zeros(len(x), dtype=torch.bool)
        forget[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:60]] = True
    return UnlearningData(
        forget_x=x[forget],
        forget_y=y[forget],
        retain_x=x[~forget],
        retain_y=y[~forget],
        task="classification",
        num_classes=10,
        scenario=scenario,
        forget_class=FORGET_CLASS if scenario == "class" else None,
        new_model=mlp,
        seed=0,
    )


@torch.no_grad()
def teacher_student_kl(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    return float(distillation_divergence(student(x), teacher(x), temperature=1.0))


@torch.no_grad()
def forget_class_rate(model: nn.Module, x: torch.Tensor) -> float:
    return float((model(x).argmax(dim=1) == FORGET_CLASS).float().mean())


# --------------------------------------------------------------- registry
@pytest.mark.parametrize("name", MINE)
def test_registered_with_table_reference_and_valid_defaults(name):
    """Each method resolves by name, owns centralised.<name> and accepts its own defaults."""
    cls = centralised_class(name)
    assert name in CENTRALISED_METHODS
    assert cls.name == name and cls.table == f"centralised.{name}"
    assert cls.reference and cls.summary and cls.defaults
    assert cls.check_settings(cls.settings({})) == ""


@pytest.mark.parametrize(
    ("cls", "scenario", "because"),
    [
        (TiltedReweighting, "random", "TRW redistributes the probability of one forgotten class"),
        (TiltedReweighting, "client", "needs a whole class"),
        (OutputFilterUnlearning, "random", "cannot tell particular examples apart"),
        (OutputFilterUnlearning, "client", "removes a whole class"),
    ],
)
def test_class_only_methods_refuse_other_scenarios_with_the_reason(cls, scenario, because):
    """TRW and the output filter serve the class scenario only, and say why."""
    reason = cls.refusal(scenario, "classification")
    assert f"not {scenario}" in reason and because in reason
    assert cls.refusal("class", "classification") == ""
    assert "segmentation" in cls.refusal("class", "segmentation")


@pytest.mark.parametrize("cls", [TiltedReweighting, OutputFilterUnlearning])
def test_class_only_methods_raise_on_a_random_forget_set(cls, digits):
    """Asked anyway, unlearn raises with the refusal rather than doing something else."""
    with pytest.raises(ValueError, match="not random"):
        cls().unlearn(copy.deepcopy(digits[2]), split_data(digits, "random"), cls.settings({}))


@pytest.mark.parametrize(
    ("cls", "settings", "message"),
    [
        (
            InfluenceUnlearning,
            {"damping": 0.0},
            "centralised.iu.damping must be a finite number > 0",
        ),
        (InfluenceUnlearning, {"alpha": -1.0}, "centralised.iu.alpha must be a finite number > 0"),
        (InfluenceUnlearning, {"samples": 0}, "centralised.iu.samples must be a whole number >= 1"),
        (InfluenceUnlearning, {"hessian": "newton"}, "centralised.iu.hessian must be one of"),
        (SCRUB, {"max-steps": 5, "min-steps": 4}, "must not exceed centralised.scrub.min-steps"),
        (SCRUB, {"lr": 0.0}, "centralised.scrub.lr must be a finite number > 0"),
        (SCRUB, {"alpha": 0.0, "gamma": 0.0}, "min-steps would do nothing"),
        (SCRUB, {"momentum": 1.0}, "centralised.scrub.momentum must be in [0, 1)"),
        (TiltedReweighting, {"tilt": -1.0}, "centralised.trw.tilt must be a finite number >= 0"),
        (TiltedReweighting, {"epochs": 0}, "centralised.trw.epochs must be a whole number >= 1"),
        (
            OutputFilterUnlearning,
            {"redistribution": "softmax"},
            "centralised.output-filter.redistribution must be one of proportional, uniform",
        ),
    ],
)
def test_bad_settings_are_named(cls, settings, message, digits):
    """check_settings names the key and the range; unlearn refuses the same settings."""
    full = cls.settings(settings)
    assert message in cls.check_settings(full)
    with pytest.raises(ValueError, match=r"must|would do nothing"):
        cls().unlearn(copy.deepcopy(digits[2]), split_data(digits), full)


def test_exact_hessian_accepts_zero_damping():
    """Undamped is fine for the exact Hessian (a solve), not for WoodFisher (I / damping)."""
    assert (
        InfluenceUnlearning.check_settings(
            InfluenceUnlearning.settings({"hessian": "exact", "damping": 0.0})
        )
        == ""
    )


# ---------------------------------------------------------------------- IU
@pytest.mark.parametrize(("samples", "size"), [(12, 7), (5, 9)])
def test_woodfisher_is_the_inverse_of_the_damped_fisher(samples, size):
    """The recursion equals torch.linalg.inv(G^T G / m + damping I) @ v, for m < P and m > P."""
    generator = torch.Generator().manual_seed(samples)
    gradients = torch.randn(samples, size, generator=generator, dtype=torch.float64)
    vector = torch.randn(size, generator=generator, dtype=torch.float64)
    damping = 0.3
    fisher = gradients.T @ gradients / samples + damping * torch.eye(size, dtype=torch.float64)
    expected = torch.linalg.inv(fisher) @ vector
    torch.testing.assert_close(
        woodfisher_inverse_product(gradients, vector, damping), expected, rtol=1e-10, atol=1e-12
    )


def least_squares_problem():
    """Linear regression: 40 examples, 4 features; the last 8 examples are the forget set."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=generator, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) + 0.7
    y = y + 0.5 * torch.randn(40, generator=generator, dtype=torch.float64)
    return (x[8:], y[8:]), (x[:8], y[:8])


def fitted_linear(x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Linear, torch.Tensor]:
    """A float64 nn.Linear at the least-squares solution of (x, y), and that solution [w, b]."""
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
    model = nn.Linear(x.shape[1], 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(solution[:-1].unsqueeze(0))
        model.bias.copy_(solution[-1:])
    return model, solution


def half_squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((output.squeeze(1) - target) ** 2).mean()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_exact_newton_step_lands_on_the_retrained_least_squares_solution():
    """On a quadratic loss, w + (1/n) H^-1 sum of forget gradients IS the retrained model."""
    retain, forget = least_squares_problem()
    model, _ = fitted_linear(torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]]))
    _, retrained = fitted_linear(*retain)
    original = flat(model)

    step = influence_update(model, half_squared_error, forget, retain, hessian="exact", damping=0.0)
    add_flat(model, step)

    assert float((retrained - original).norm()) > 0.05  # removing the points matters
    torch.testing.assert_close(flat(model), retrained, rtol=0, atol=1e-10)


def test_woodfisher_step_is_the_damped_empirical_fisher_newton_step():
    """All retain examples sampled: (1/n) (G^T G / n + damping I)^-1 sum_F g, g from residuals."""
    retain, forget = least_squares_problem()
    model, solution = fitted_linear(
        torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])
    )

    def gradients(x, y):  # d/dw of (x.w + b - y)^2 / 2 = residual * [x, 1]
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        return (design @ solution - y).unsqueeze(1) * design

    n, damping = len(retain[0]), 0.05
    g_retain = gradients(*retain)
    fisher = g_retain.T @ g_retain / n + damping * torch.eye(5, dtype=torch.float64)
    expected = torch.linalg.solve(fisher, gradients(*forget).sum(0)) / n

    step = influence_update(
        model,
        half_squared_error,
        forget,
        retain,
        hessian="woodfisher",
        damping=damping,
        samples=10 * n,
    )
    torch.testing.assert_close(step, expected, rtol=1e-9, atol=1e-12)


def test_woodfisher_samples_are_drawn_under_the_seed():
    """A subset of the retain set: the same seed gives the same step, another seed another."""
    retain, forget = least_squares_problem()
    model, _ = fitted_linear(torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]]))

    def step(seed):
        return influence_update(
            model, half_squared_error, forget, retain, damping=0.05, samples=6, seed=seed
        )

    torch.testing.assert_close(step(1), step(1), rtol=0, atol=0)
    assert not torch.allclose(step(1), step(2))


def test_exact_hessian_refuses_a_large_model(digits):
    """A 6,010-parameter MLP is over the exact Hessian's limit: the error says what to do."""
    big = nn.Sequential(nn.Flatten(), nn.Linear(64, 80), nn.ReLU(), nn.Linear(80, 10))
    settings = InfluenceUnlearning.settings({"hessian": "exact"})
    with pytest.raises(ValueError, match=r"set centralised\.iu\.hessian to woodfisher"):
        InfluenceUnlearning().unlearn(big, split_data(digits), settings)


def test_iu_forgets_the_class_and_reports_its_cost(digits):
    """Defaults on the digits MLP: class 3 is no longer recognised, the others mostly are."""
    data = split_data(digits)
    original = copy.deepcopy(digits[2])
    outcome = InfluenceUnlearning().unlearn(original, data, InfluenceUnlearning.settings({}))

    assert accuracy(digits[2], data.forget_x, data.forget_y) > 0.95
    assert accuracy(outcome.model, data.forget_x, data.forget_y) < 0.2
    assert accuracy(outcome.model, data.retain_x, data.retain_y) > 0.85
    assert outcome.forget_epochs == 1.0
    assert outcome.retain_epochs == pytest.approx(256 / len(data.retain_x))
    assert next(outcome.model.parameters()).device.type == "cpu"


# ------------------------------------------------------------------- SCRUB
def test_scrub_student_leaves_the_teacher_on_forget_data_only(digits):
    """KL(teacher || student) grows large on the forgotten class and stays small on the rest.

    The MLP is smaller than the digits CNN the defaults are tuned for: lr 0.005 instead of 0.0005.
    """
    data = split_data(digits)
    teacher = digits[2]
    settings = SCRUB.settings({"lr": 0.005})
    outcome = SCRUB().unlearn(copy.deepcopy(teacher), data, settings)
    student = outcome.model

    forget_kl = teacher_student_kl(student, teacher, data.forget_x)
    retain_kl = teacher_student_kl(student, teacher, data.retain_x)
    assert forget_kl > 2.0  # it starts at 0: the student is the teacher's copy
    assert retain_kl < 0.5 and forget_kl > 20 * retain_kl
    assert accuracy(student, data.forget_x, data.forget_y) < 0.2
    assert accuracy(student, data.retain_x, data.retain_y) > 0.95
    assert (outcome.forget_epochs, outcome.retain_epochs) == (2.0, 4.0)


def test_scrub_is_reproducible_under_the_seed(digits):
    """The batch order comes from data.seed: two runs give bit-identical students."""
    data, settings = split_data(digits), SCRUB.settings({"lr": 0.005, "min-steps": 2})
    first = SCRUB().unlearn(copy.deepcopy(digits[2]), data, settings).model
    second = SCRUB().unlearn(copy.deepcopy(digits[2]), data, settings).model
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------- TRW
def test_tilted_targets_give_the_forgotten_class_nothing_and_sum_to_one():
    """q_c == 0 exactly, rows sum to 1, and q_i is proportional to p_i exp(t s_i) otherwise."""
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(50, 10, generator=generator)
    logits[:5, FORGET_CLASS] = 200.0  # p_c rounds to 1: the target must still be defined
    similarity = class_similarity(logits, FORGET_CLASS)
    tilt = 2.0

    targets = tilted_targets(logits, FORGET_CLASS, similarity, tilt)

    assert similarity[FORGET_CLASS] == 0.0
    torch.testing.assert_close(similarity.sum(), torch.tensor(1.0))
    assert torch.all(targets[:, FORGET_CLASS] == 0.0)
    assert torch.isfinite(targets).all()
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(50))
    p = F.softmax(logits[5:].double(), dim=1)
    weighted = p * torch.exp(tilt * similarity.double())
    weighted[:, FORGET_CLASS] = 0.0
    expected = weighted / weighted.sum(dim=1, keepdim=True)
    torch.testing.assert_close(targets[5:].double(), expected, rtol=1e-5, atol=1e-7)


def test_class_similarity_is_the_renormalised_mean_confusion():
    """s_i = mean of p_i / (1 - p_c): two inputs, hand-computed."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.1, 0.3]]))
    similarity = class_similarity(logits, 0)
    expected = torch.tensor([0.0, (0.3 / 0.5 + 0.1 / 0.4) / 2, (0.2 / 0.5 + 0.3 / 0.4) / 2])
    torch.testing.assert_close(similarity, expected)


def test_trw_forgets_the_class_and_keeps_the_others(digits):
    """After TRW the forget-class inputs are no longer predicted as class 3; the rest hold."""
    data = split_data(digits)
    outcome = TiltedReweighting().unlearn(
        copy.deepcopy(digits[2]), data, TiltedReweighting.settings({})
    )

    assert forget_class_rate(digits[2], data.forget_x) > 0.95
    assert forget_class_rate(outcome.model, data.forget_x) < 0.05
    assert accuracy(outcome.model, data.retain_x, data.retain_y) > 0.95
    assert outcome.forget_epochs == 5.0
    assert 0 < outcome.retain_epochs < 1  # one retain batch per forget batch


# ----------------------------------------------------------- output filter
@pytest.mark.parametrize("redistribution", ["proportional", "uniform"])
def test_output_filter_zeroes_the_class_and_keeps_the_order(redistribution, digits):
    """softmax gives the removed class exactly 0.0; the other classes keep their ranking."""
    model = digits[2]
    inputs = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = F.softmax(model(inputs), dim=1)
        after = F.softmax(OutputFilter(model, FORGET_CLASS, redistribution)(inputs), dim=1)

    assert torch.all(after[:, FORGET_CLASS] == 0.0)
    torch.testing.assert_close(after.sum(dim=1), torch.ones(200))
    others = [c for c in range(10) if c != FORGET_CLASS]
    assert torch.equal(after[:, others].argsort(dim=1), before[:, others].argsort(dim=1))
    removed = before[:, FORGET_CLASS : FORGET_CLASS + 1]
    if redistribution == "proportional":
        expected = before[:, others] / (1 - removed)
    else:
        expected = before[:, others] + removed / 9
    torch.testing.assert_close(after[:, others], expected, rtol=1e-5, atol=1e-6)


def test_output_filter_wraps_the_original_weights_unchanged(digits):
    """No data read, no weight changed, no epoch spent; the evaluation loop gets finite losses."""
    data = split_data(digits)
    original = copy.deepcopy(digits[2])
    saved = {k: v.clone() for k, v in original.state_dict().items()}

    outcome = OutputFilterUnlearning().unlearn(original, data, OutputFilterUnlearning.settings({}))

    state = outcome.model.state_dict()
    assert set(state) == {f"model.{k}" for k in saved}
    for key, value in saved.items():
        assert torch.equal(state[f"model.{key}"], value), key
    assert (outcome.forget_epochs, outcome.retain_epochs) == (0.0, 0.0)
    forget = per_example_metrics(outcome.model, data.forget_x, data.forget_y)
    retain = per_example_metrics(outcome.model, data.retain_x, data.retain_y)
    assert forget["correct"].sum() == 0
    assert np.isfinite(forget["loss"]).all() and (forget["loss"] > 500).all()
    # the filter only changes predictions of class 3, which no retained example has
    assert retain["correct"].mean() >= accuracy(digits[2], data.retain_x, data.retain_y)
