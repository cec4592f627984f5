"""Centralised fine-tuning baselines: retrain, ft, ga, neggrad-plus, rl, salun, l1-sparse.

Each method runs on a small real problem (400 scikit-learn digits, a small
MLP trained until it fits them) with an assertion specific to it; the
augmentation and the shared loop are tested directly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping

import pytest
import torch
from torch import nn

from fedforget.data.datasets import load_digits_split
from fedforget.methods.base import ConfigValue
from fedforget.methods.centralised import (
    CENTRALISED_METHODS,
    CentralisedOutcome,
    UnlearningData,
    centralised_class,
)
from fedforget.methods.centralised.augment import bounds_of, trivial_augment
from fedforget.methods.centralised.common import BatchCycle, mean_loss, run_epochs, task_loss
from fedforget.methods.centralised.gradient_ascent import stop_level
from fedforget.methods.centralised.l1_sparse import l1_coefficient
from fedforget.methods.centralised.random_labels import random_wrong_labels, relabelled_union
from fedforget.methods.centralised.salun import forget_gradient, saliency_mask
from fedforget.training import evaluate_task, train

MINE = ("retrain", "ft", "ga", "neggrad-plus", "rl", "salun", "l1-sparse")
EXAMPLES = 400
FORGET = 40
FORGET_CLASS = 3


class CountingMLP(nn.Module):
    """A 64-32-10 MLP that counts the examples it sees in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.trained_on = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.trained_on += len(x)
        return self.net(x)


def new_model(seed: int = 1) -> CountingMLP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CountingMLP()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one thread avoids oversubscription
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    split = load_digits_split("", 0.2, 0)
    return split.train_x[:EXAMPLES], split.train_y[:EXAMPLES]


@pytest.fixture(scope="module")
def fitted(digits: tuple[torch.Tensor, torch.Tensor]) -> CountingMLP:
    """The 'original' model: fits all 400 examples (it memorised the forget set too)."""
    x, y = digits
    model = new_model()
    train(model, x, y, epochs=40, batch_size=32, lr=0.1, seed=0)
    return model


@pytest.fixture(scope="module")
def underfitted(digits: tuple[torch.Tensor, torch.Tensor]) -> CountingMLP:
    """An original model whose retain loss can still go down."""
    x, y = digits
    model = new_model()
    train(model, x, y, epochs=2, batch_size=32, lr=0.05, seed=0)
    return model


def split(
    digits: tuple[torch.Tensor, torch.Tensor], scenario: str, seed: int = 0
) -> UnlearningData:
    x, y = digits
    if scenario == "class":
        forget = y == FORGET_CLASS
    else:
        forget = torch.zeros(len(y), dtype=torch.bool)
        forget[torch.randperm(len(y), generator=torch.Generator().manual_seed(7))[:FORGET]] = True
    return UnlearningData(
        forget_x=x[forget],
        forget_y=y[forget],
        retain_x=x[~forget],
        retain_y=y[~forget],
        task="classification",
        num_classes=10,
        scenario=scenario,
        forget_class=FORGET_CLASS if scenario == "class" else None,
        new_model=new_model,
        seed=seed,
    )


def run(
    name: str, original: nn.Module, data: UnlearningData, **given: ConfigValue
) -> CentralisedOutcome:
    method = centralised_class(name)
    settings = method.settings(given)
    assert method.check_settings(settings) == ""
    return method().unlearn(copy.deepcopy(original), data, settings)


def losses(model: nn.Module, data: UnlearningData) -> tuple[float, float]:
    """(forget loss, retain loss)."""
    return (
        mean_loss(model, data.forget_x, data.forget_y),
        mean_loss(model, data.retain_x, data.retain_y),
    )


def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return evaluate_task(model, x, y)["accuracy"]


# ------------------------------------------------------------------ registry


def test_registry_resolves_every_method_with_reference_and_valid_defaults() -> None:
    """Each name resolves to its class; table, arXiv reference, summary, defaults valid."""
    for name in MINE:
        method = centralised_class(name)
        assert name in CENTRALISED_METHODS
        assert method.name == name
        assert method.table == f"centralised.{name}"
        assert "arXiv" in method.reference and method.summary
        assert method.check_settings(method.settings({})) == ""
        assert method.scenarios == {"client", "random", "class", "backdoor"}
    for name in ("ft", "rl", "salun"):
        assert centralised_class(name).defaults["augment"] is False


def test_refusals_name_the_reason() -> None:
    """Unsupported tasks and scenarios are refused with what the method does serve."""
    ga = centralised_class("ga")
    assert "classification" in ga.refusal("client", "segmentation")
    assert ga.refusal("class", "classification") == ""
    refusal = centralised_class("salun").refusal("nearest-neighbours", "classification")
    assert "class, client, random" in refusal and "nearest-neighbours" in refusal
    assert centralised_class("ft").refusal("client", "segmentation") == ""


@pytest.mark.parametrize(
    ("name", "given", "message"),
    [
        ("ft", {"lr": 0.0}, "centralised.ft.lr must be a finite number > 0, got 0.0"),
        ("retrain", {"epochs": 0}, "centralised.retrain.epochs must be a whole number >= 1"),
        ("rl", {"momentum": 1.0}, "centralised.rl.momentum must be in [0, 1)"),
        ("ga", {"stop-forget-acc": 1.5}, "centralised.ga.stop-forget-acc must be in [0, 1]"),
        ("ga", {"lr": float("nan")}, "centralised.ga.lr must be a finite number > 0"),
        ("neggrad-plus", {"alpha": 1.0}, "centralised.neggrad-plus.alpha must be in [0, 1)"),
        ("salun", {"mask-fraction": 0.0}, "centralised.salun.mask-fraction must be in (0, 1]"),
        ("l1-sparse", {"no-l1-epochs": 5}, "no-l1-epochs must be below epochs (5)"),
        ("l1-sparse", {"l1-coefficient": -1.0}, "l1-coefficient must be a finite number >= 0"),
    ],
)
def test_bad_settings_are_refused_with_the_key(
    name: str, given: Mapping[str, ConfigValue], message: str
) -> None:
    """check_settings names the key, the allowed range and the value given."""
    method = centralised_class(name)
    assert message in method.check_settings(method.settings(given))


def test_unknown_setting_and_empty_forget_set_raise(
    digits: tuple[torch.Tensor, torch.Tensor], fitted: CountingMLP
) -> None:
    """A key the method lacks lists the valid ones; an empty forget set is an error."""
    with pytest.raises(ValueError, match="not a setting of ga; its settings are: batch-size"):
        centralised_class("ga").settings({"epochs": 3})
    data = split(digits, "random")
    empty = UnlearningData(
        data.forget_x[:0], data.forget_y[:0], data.retain_x, data.retain_y,
        "classification", 10, "random", None, new_model,
    )  # fmt: skip
    with pytest.raises(ValueError, match="the forget set is empty"):
        run("salun", fitted, empty)


# ------------------------------------------------------------------- methods


def test_retrain_is_independent_of_the_original_weights(
    digits: tuple[torch.Tensor, torch.Tensor], fitted: CountingMLP
) -> None:
    """Two different originals give bit-identical retrained models that fit the retain set."""
    data = split(digits, "random")
    one = run("retrain", fitted, data, epochs=10, lr=0.1)
    other = run("retrain", new_model(seed=99), data, epochs=10, lr=0.1)
    for a, b in zip(one.model.parameters(), other.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(one.model.net[1].weight, fitted.net[1].weight)
    assert accuracy_on(one.model, data.retain_x, data.retain_y) > 0.9
    assert (one.forget_epochs, one.retain_epochs) == (0.0, 10.0)


def test_ft_lowers_the_retain_loss(
    digits: tuple[torch.Tensor, torch.Tensor], underfitted: CountingMLP
) -> None:
    """Fine-tuning from an underfitted model lowers its retain loss; costs epochs on retain."""
    data = split(digits, "random")
    outcome = run("ft", underfitted, data, epochs=3)
    assert losses(outcome.model, data)[1] < 0.7 * losses(underfitted, data)[1]
    assert (outcome.forget_epochs, outcome.retain_epochs) == (0.0, 3.0)
    assert next(outcome.model.parameters()).device.type == "cpu"


def test_ga_raises_the_forget_loss_and_stops_when_its_rule_fires(
    digits: tuple[torch.Tensor, torch.Tensor], fitted: CountingMLP
) -> None:
    """GA stops early once forget accuracy <= the level, and reports the epochs it ascended."""
    data = split(digits, "random")
    assert accuracy_on(fitted, data.forget_x, data.forget_y) == 1.0
    fitted.trained_on = 0
    outcome = run("ga", fitted, data, **{"stop-forget-acc": 0.5, "max-epochs": 50.0})
    forget_accuracy = accuracy_on(outcome.model, data.forget_x, data.forget_y)
    assert forget_accuracy <= 0.5
    assert losses(outcome.model, data)[0] > 5 * losses(fitted, data)[0]
    assert 0 < outcome.forget_epochs < 50  # the rule fired, not the cap
    assert outcome.forget_epochs * FORGET == pytest.approx(outcome.model.trained_on)
    assert outcome.retain_epochs == 0.0


def test_ga_stops_at_max_epochs_or_before_any_step(
    digits: tuple[torch.Tensor, torch.Tensor], fitted: CountingMLP
) -> None:
    """The cap ends an ascent whose level is not reached; a level already met costs nothing."""
    data = split(digits, "random")
    capped = run(
        "ga", fitted, data, **{"stop-forget-acc": 0.0, "max-epochs": 0.5, "batch-size": 10}
    )
    assert capped.forget_epochs == 0.5  # 40 examples, batches of 10: two steps
    met = run("ga", fitted, data, **{"stop-forget-acc": 1.0, "batch-size": 10})
    assert met.forget_epochs == 0.0
    for a, b in zip(met.model.parameters(), fitted.parameters(), strict=True):
        assert torch.equal(a, b)
    settings = centralised_class("ga").settings({})
    assert stop_level("class", settings) == 0.0
    assert stop_level("client", settings) == stop_level("random", settings) == 0.85


def test_neggrad_plus_lowers_retain_loss_and_raises_forget_loss(
    digits: tuple[torch.Tensor, torch.Tensor], underfitted: CountingMLP
) -> None:
    """Descent on retain with ascent on forget: the two losses move apart."""
    data = split(digits, "class")
    forget_before, retain_before = losses(underfitted, data)
    outcome = run("neggrad-plus", underfitted, data, alpha=0.9, epochs=3)
    forget_after, retain_after = losses(outcome.model, data)
    assert retain_after < 0.8 * retain_before
    assert forget_after > 2 * forget_before
    seen = outcome.model.trained_on - underfitted.trained_on  # both splits, training mode
    assert outcome.retain_epochs == 3.0
    assert seen == pytest.approx(
        3 * len(data.retain_x) + outcome.forget_epochs * len(data.forget_x)
    )
    assert outcome.forget_epochs > 3.0  # a forget batch beside every retain batch


def test_random_wrong_labels_always_differ_and_cover_the_other_classes() -> None:
    """Every relabelled example gets another class; all other classes occur; seeded."""
    labels = torch.arange(10).repeat(200)
    wrong = random_wrong_labels(labels, 10, torch.Generator().manual_seed(0))
    assert bool((wrong != labels).all())
    assert wrong.min() >= 0 and wrong.max() <= 9
    assert set(wrong[labels == 0].tolist()) == set(range(1, 10))
    again = random_wrong_labels(labels, 10, torch.Generator().manual_seed(0))
    assert torch.equal(wrong, again)
    with pytest.raises(ValueError, match="at least 2 classes"):
        random_wrong_labels(labels[:3] * 0, 1, torch.Generator())


def test_rl_trains_on_wrong_forget_labels_and_forgets(
    digits: tuple[torch.Tensor, torch.Tensor], fitted: CountingMLP
) -> None:
    """RL's union relabels exactly the forget part; the forgotten class's accuracy collapses."""
    data = split(digits, "class")
    x, y = relabelled_union(data)
    count = len(data.forget_x)
    assert bool((y[:count] != data.forget_y).all())
    assert torch.equal(y[count:], data.retain_y) and torch.equal(x[count:], data.retain_x)
    outcome = run("rl", fitted, data, epochs=5, lr=0.05)
    assert accuracy_on(outcome.model, data.forget_x, data.forget_y) < 0.2
    assert accuracy_on(outcome.model, data.retain_x, data.retain_y) > 0.9
    assert (outcome.forget_epochs, outcome.retain_epochs) == (5.0, 5.0)


def test_salun_moves_only_the_masked_weights(
    digits: tuple[torch.Tensor, torch.Tensor], fitted: CountingMLP
) -> None:
    """Unmasked weights stay bit-identical (despite momentum and weight decay); masked move."""
    data = split(digits, "random")
    gradients = forget_gradient(copy.deepcopy(fitted), data.forget_x, data.forget_y, data.task)
    masks = saliency_mask(gradients, 0.5)
    total = sum(m.numel() for m in masks)
    assert sum(int(m.sum()) for m in masks) == round(0.5 * total)
    chosen = torch.cat([g.abs()[m] for g, m in zip(gradients, masks, strict=True)])
    left = torch.cat([g.abs()[~m] for g, m in zip(gradients, masks, strict=True)])
    assert chosen.min() >= left.max()  # one global threshold over all tensors
    outcome = run("salun", fitted, data, **{"weight-decay": 0.01, "momentum": 0.9})
    moved = 0
    after = outcome.model.parameters()
    for before, now, mask in zip(fitted.parameters(), after, masks, strict=True):
        assert torch.equal(now[~mask], before[~mask])
        moved += int((now[mask] != before[mask]).sum())
    assert moved > 0.9 * round(0.5 * total)
    assert accuracy_on(outcome.model, data.forget_x, data.forget_y) < 1.0


def test_l1_sparse_makes_more_weights_near_zero_than_ft(
    digits: tuple[torch.Tensor, torch.Tensor], fitted: CountingMLP
) -> None:
    """The decaying l1 penalty leaves more |w| < 1e-2 than fine-tuning alone."""
    assert [l1_coefficient(t, 5, 1, 0.1) for t in range(5)] == pytest.approx(
        [0.1, 0.075, 0.05, 0.025, 0.0]
    )
    data = split(digits, "random")
    common = {"epochs": 4, "lr": 0.05, "no-l1-epochs": 1}

    def near_zero(model: nn.Module) -> float:
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((weights.abs() < 1e-2).float().mean())

    sparse = run("l1-sparse", fitted, data, **common, **{"l1-coefficient": 2e-3})
    dense = run("l1-sparse", fitted, data, **common, **{"l1-coefficient": 0.0})
    plain = run("ft", fitted, data, epochs=4, lr=0.05)
    assert near_zero(dense.model) == pytest.approx(near_zero(plain.model))
    assert near_zero(sparse.model) > near_zero(plain.model) + 0.1
    assert accuracy_on(sparse.model, data.retain_x, data.retain_y) > 0.9


# --------------------------------------------------------------- augmentation


@pytest.mark.parametrize("shape", [(16, 1, 8, 8), (4, 3, 32, 32)])
def test_augmentation_is_seeded_changes_inputs_and_keeps_the_range(
    shape: tuple[int, int, int, int],
) -> None:
    """Same seed, same images; another seed, others; global RNG untouched; range kept."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    bounds = bounds_of(x)
    state = torch.get_rng_state()
    one = trivial_augment(x, torch.Generator().manual_seed(3), bounds=bounds)
    two = trivial_augment(x, torch.Generator().manual_seed(3), bounds=bounds)
    other = trivial_augment(x, torch.Generator().manual_seed(4), bounds=bounds)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(one, two)
    assert not torch.equal(one, other)
    assert one.shape == x.shape and one.dtype == x.dtype
    changed = (one - x).flatten(1).abs().amax(dim=1) > 1e-6
    assert float(changed.float().mean()) >= 0.5
    assert one.min() >= bounds[0] - 1e-5 and one.max() <= bounds[1] + 1e-5


def test_ft_with_augmentation_is_reproducible_and_differs_from_without(
    digits: tuple[torch.Tensor, torch.Tensor], fitted: CountingMLP
) -> None:
    """augment=true: two runs under one seed agree bit for bit, and differ from augment=false."""
    data = split(digits, "random")
    one = run("ft", fitted, data, epochs=1, augment=True)
    two = run("ft", fitted, data, epochs=1, augment=True)
    plain = run("ft", fitted, data, epochs=1)
    first = next(one.model.parameters())
    assert torch.equal(first, next(two.model.parameters()))
    assert not torch.equal(first, next(plain.model.parameters()))


def test_run_epochs_counts_fractional_epochs_and_reshuffles() -> None:
    """A cycle of 10 examples in batches of 4: 1.4 epochs after 4 steps; new order per pass."""
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 10, (10,))
    cycle = BatchCycle(x, y, 4, torch.Generator().manual_seed(0))
    first_pass = torch.cat([cycle.next_indices() for _ in range(3)])
    second_pass = torch.cat([cycle.next_indices() for _ in range(3)])
    assert sorted(first_pass.tolist()) == sorted(second_pass.tolist()) == list(range(10))
    assert not torch.equal(first_pass, second_pass)
    model = new_model()
    steps = 0

    def stop() -> bool:
        return steps == 4

    def counted(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nonlocal steps
        steps += 1
        return task_loss()(model, inputs, targets)

    fresh = BatchCycle(x, y, 4, torch.Generator().manual_seed(0))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    spent = run_epochs(model, fresh, counted, optimiser, epochs=5, stop=stop)
    assert spent == pytest.approx(1.4)  # 4 + 4 + 2, then 4 of the next pass


def test_retain_methods_serve_segmentation() -> None:
    """ft, neggrad-plus and l1-sparse lower the Dice-CE retain loss of a tiny segmenter."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(24, 1, 12, 12, generator=generator)
    masks = (images[:, 0] > 0.5).long()  # the foreground is the bright pixels
    forget = torch.arange(24) < 4
    data = UnlearningData(
        images[forget], masks[forget], images[~forget], masks[~forget],
        "segmentation", 2, "client", None, lambda: nn.Conv2d(1, 2, 3, padding=1),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        original = nn.Conv2d(1, 2, 3, padding=1)
    before = mean_loss(original, data.retain_x, data.retain_y, "segmentation")
    for name in ("ft", "neggrad-plus", "l1-sparse", "retrain"):
        assert centralised_class(name).refusal("client", "segmentation") == ""
        outcome = run(name, original, data, lr=0.1, **{"batch-size": 8})
        assert mean_loss(outcome.model, data.retain_x, data.retain_y, "segmentation") < before
    assert "classification" in centralised_class("salun").refusal("client", "segmentation")


def test_a_diverging_method_is_a_refused_row_and_the_others_go_on():
    """A centralised cell whose loss stops being finite is refused with the reason, not raised."""
    from fedforget.comparison import centralised_cell, unlearning_data
    from fedforget.config import FederationConfig
    from fedforget.task import new_model

    torch.set_num_threads(1)
    config = FederationConfig.from_run_config(
        {"num-partitions": 3, "model": "mlp", "centralised.ft.lr": 1e6, "progress": False}
    )
    original = {k: v.numpy() for k, v in new_model(config).state_dict().items()}
    data = unlearning_data(config)
    row, model = centralised_cell(config, original, "ft", data)
    assert model is None and row["status"] == "refused" and row["kind"] == "centralised"
    assert row["reason"].startswith("diverged: the unlearning loss became ")
    assert "lower the learning rate" in row["reason"] and "centralised.ft" in row["reason"]
    # the next cell of the same experiment still runs
    row, model = centralised_cell(config, original, "iu", data)
    assert row["status"] == "ok" and model is not None


def test_an_ascent_whose_outputs_are_not_finite_is_a_diverged_refusal():
    """GA's steps keep a finite loss while the weights grow until the outputs are inf / NaN."""
    from fedforget.comparison import centralised_cell, unlearning_data
    from fedforget.config import FederationConfig
    from fedforget.task import new_model

    torch.set_num_threads(1)
    ascent = {"centralised.ga.stop-forget-acc": 0.0, "centralised.ga.max-epochs": 10.0}
    config = FederationConfig.from_run_config({"num-partitions": 3, "progress": False, **ascent})
    data = unlearning_data(config)
    model = new_model(config)
    inputs, labels = (
        torch.cat([data.forget_x, data.retain_x]),
        torch.cat([data.forget_y, data.retain_y]),
    )
    train(model, inputs, labels, epochs=3, batch_size=32, lr=0.05, seed=0)
    original = {k: v.numpy() for k, v in model.state_dict().items()}
    steep = FederationConfig.from_run_config({**config.to_run_config(), "centralised.ga.lr": 10.0})
    row, unlearned = centralised_cell(steep, original, "ga", data)
    assert unlearned is None and row["status"] == "refused" and row["kind"] == "centralised"
    assert row["reason"].startswith("diverged: the unlearned model's outputs are not finite")
    assert "lower the learning rate" in row["reason"] and "centralised.ga" in row["reason"]
    # the paper's settings stop at forget accuracy 0.85, from the same original, finite
    paper = FederationConfig.from_run_config({"num-partitions": 3, "progress": False})
    row, unlearned = centralised_cell(paper, original, "ga", data)
    assert row["status"] == "ok" and unlearned is not None
