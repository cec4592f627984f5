"""PGA (Halimi et al.): the reference model, the ball, and one real Flower simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import TINY, simulate_strategy

from fedforget.federated.federation import method_context
from fedforget.methods.base import ClientUpdate
from fedforget.methods.pga import (
    PGA,
    LocalModel,
    project_onto_ball,
    random_init_seeds,
    reference_model,
)
from fedforget.task import client_data, model_with
from fedforget.training import ClientOptimizer, per_example_loss

CONFIG = TINY.replace(method="pga")


class RecordingPGA(PGA):
    """The real PGA, keeping what it had stored and what it planned and received at the step."""

    def __init__(self, context):
        super().__init__(context)
        self.stored_at_step = {}
        self.plans = []
        self.updates = []

    def plan(self, step, state, global_arrays, remaining):
        self.stored_at_step = dict(self.local_models)
        plan = super().plan(step, state, global_arrays, remaining)
        self.plans.append(plan)
        return plan

    def apply(self, step, state, global_arrays, plan, updates):
        self.updates.extend(updates)
        return super().apply(step, state, global_arrays, plan, updates)


def distance(a, b):
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in b)))


def mean_of(models):
    """The example-weighted mean of ``{client: LocalModel}``, in float64."""
    total = sum(m.num_examples for m in models.values())
    names = next(iter(models.values())).arrays
    return {
        k: sum(m.num_examples / total * m.arrays[k].astype(np.float64) for m in models.values())
        for k in names
    }


@pytest.fixture(scope="module")
def run():
    """Forget client 1 after round 2 with PGA (TINY: digits, 3 clients, 4 rounds)."""
    method = RecordingPGA(method_context(CONFIG))
    return simulate_strategy(CONFIG, methods={"pga": method}), method


@pytest.mark.ray
def test_only_the_target_runs_the_ascent(run):
    record, _ = run
    unlearn = record.strategy.rounds[2]
    assert unlearn.phase == "unlearn" and unlearn.method == "pga"
    assert unlearn.participants == ["1"] and unlearn.contributors == ["1"]
    assert unlearn.actions == {"1": "pga"}
    assert record.strategy.requests.get("config-round-2").status == "applied"
    assert record.strategy.rounds[3].participants == ["0", "2"]


@pytest.mark.ray
def test_reference_model_is_the_size_weighted_fedavg_without_the_target(run):
    record, method = run
    stored = method.stored_at_step
    assert sorted(stored) == ["0", "1", "2"]
    assert {m.server_round for m in stored.values()} == {2}
    # the stored local models are what round 2 averaged: their FedAvg is the global model
    for name, value in mean_of(stored).items():
        np.testing.assert_allclose(record.models[2][name], value, atol=1e-5, err_msg=name)
    # so (w - p_u w_u) / (1 - p_u) is the size-weighted mean of the other two
    expected = mean_of({c: m for c, m in stored.items() if c != "1"})
    sizes = {m.num_examples for m in stored.values()}
    assert len(sizes) > 1  # unequal sizes: the equal-weight form would be wrong here
    sent = method.plans[0].arrays
    for name, value in expected.items():
        np.testing.assert_allclose(sent[name], value, atol=1e-5, err_msg=name)


@pytest.mark.ray
def test_unlearned_model_stays_in_the_ball_and_ascends(run):
    record, method = run
    plan = method.plans[0]
    reference, radius = plan.arrays, plan.config["pga.radius"]
    seeds = random_init_seeds(CONFIG.seed, 3)
    assert CONFIG.seed not in seeds and len(set(seeds)) == 3
    randoms = [method.context.random_arrays(seed) for seed in seeds]
    assert radius == pytest.approx(np.mean([distance(r, reference) for r in randoms]) / 3)
    np.testing.assert_array_equal(
        plan.extra["target-model"]["classifier.3.bias"],
        method.stored_at_step["1"].arrays["classifier.3.bias"],
    )
    after = record.models[3]
    assert 0 < distance(after, reference) <= radius + 1e-5
    # one target: the new global model is its returned model
    (update,) = method.updates
    for name, value in update.arrays.items():
        np.testing.assert_allclose(after[name], value, atol=1e-6, err_msg=name)
    assert record.strategy.events[0].update_norm > 0
    # it was ascent: the target's loss went up from the reference model
    target = client_data(CONFIG, 1)
    loss_before, _ = per_example_loss(model_with(CONFIG, reference), target.x, target.y)
    loss_after, _ = per_example_loss(model_with(CONFIG, after), target.x, target.y)
    assert loss_after.mean() > loss_before.mean()


@pytest.mark.ray
def test_target_is_erased_from_the_server(run):
    record, method = run
    assert sorted(method.stored_clients()) == ["0", "2"]
    one_model = sum(v.nbytes for v in record.models[0].values())
    assert method.stored_bytes() == 2 * one_model


def test_projection_puts_an_outside_point_on_the_sphere():
    """A point outside the ball goes to the sphere along the line to the center."""
    generator = torch.Generator().manual_seed(0)
    center = [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]
    point = [c + 10 * torch.randn(c.shape, generator=generator) for c in center]
    direction = [p - c for p, c in zip(point, center, strict=True)]
    before = project_onto_ball(point, center, radius=2.0)
    assert before > 2.0
    after = float(torch.sqrt(sum(((p - c) ** 2).sum() for p, c in zip(point, center, strict=True))))
    assert after == pytest.approx(2.0, abs=1e-5)
    for p, c, d in zip(point, center, direction, strict=True):
        torch.testing.assert_close(p - c, d * (2.0 / before), atol=1e-5, rtol=0)


def test_projection_leaves_a_point_inside_unchanged():
    center = [torch.zeros(4)]
    point = [torch.tensor([0.5, 0.0, 0.0, 0.0])]
    assert project_onto_ball(point, center, radius=1.0) == pytest.approx(0.5)
    torch.testing.assert_close(point[0], torch.tensor([0.5, 0.0, 0.0, 0.0]))


def test_reference_model_removes_several_targets_by_their_round_weights():
    """Two targets of one round: w_ref is the size-weighted mean of the others."""
    rng = np.random.default_rng(0)
    sizes = {"a": 10, "b": 30, "c": 20, "d": 40}
    local = {c: {"w": rng.normal(size=(3, 2)).astype(np.float32)} for c in sizes}
    total = sum(sizes.values())
    w = {"w": sum(sizes[c] / total * local[c]["w"] for c in sizes)}
    targets = [LocalModel(local[c], sizes[c], 5, total) for c in ("b", "d")]
    expected = (sizes["a"] * local["a"]["w"] + sizes["c"] * local["c"]["w"]) / 30
    np.testing.assert_allclose(reference_model(w, targets)["w"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="no other client"):
        reference_model(w, [LocalModel(local[c], sizes[c], 5, total) for c in sizes])


def test_observe_keeps_the_latest_local_model_and_refuses_without_one():
    """observe stores sent + delta with the round's examples; forget erases it."""
    method = PGA(method_context(CONFIG))
    sent = {"w": np.zeros(3, np.float32), "steps": np.array(4)}
    updates = [
        ClientUpdate(c, {}, {"w": np.full(3, float(i + 1), np.float32)}, n)
        for i, (c, n) in enumerate((("0", 10), ("1", 30)))
    ]
    assert "client 2 has no stored local model" in method.refusal(["2"], PGA.defaults)
    method.observe(1, sent, updates)
    kept = method.local_models["1"]
    np.testing.assert_array_equal(kept.arrays["w"], [2.0, 2.0, 2.0])
    assert kept.arrays["steps"] == 4 and kept.weight == pytest.approx(0.75)
    assert method.refusal(["1"], PGA.defaults) == ""
    assert "only clients" in method.refusal(["0", "1"], PGA.defaults)
    method.forget(["1"])
    assert method.stored_clients() == ["0"]
    assert method.stored_bytes() == sent["w"].nbytes + sent["steps"].nbytes


# ------------------------------------------------------------ the early stop
def ascent_distances(settings, radius=1e6):
    """Run the real client step on a small model; the squared distance to w_u after each step.

    ``w_u`` is the starting model itself (the reference), and the radius is
    so large that no projection happens: every step's distance is the one the
    early stop checks.
    """
    from fedforget.methods.base import ClientData
    from fedforget.methods.pga import pga_client_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    generator = torch.Generator().manual_seed(1)
    data = ClientData(
        x=torch.randn(64, 6, generator=generator),
        y=torch.randint(0, 3, (64,), generator=generator),
        task="classification",
        num_classes=3,
        batch_size=8,
        device=torch.device("cpu"),
    )
    target = {k: v.detach().clone() for k, v in model.named_parameters()}
    distances = []

    step = ClientOptimizer.step

    def recorded_step(optimizer):
        step(optimizer)
        distances.append(
            float(
                sum(
                    ((p.detach() - t) ** 2).sum()
                    for p, t in zip(optimizer.parameters, target.values(), strict=True)
                )
            )
        )

    ClientOptimizer.step = recorded_step  # the client step's optimiser (fedforget.training)
    try:
        pga_client_step(
            model, data, {**settings, "radius": radius}, {"target-model": target}, seed=3
        )
    finally:
        ClientOptimizer.step = step
    return distances


def first_past(distances, level):
    """Index of the first distance above ``level``."""
    return next(i for i, d in enumerate(distances) if d > level)


def test_default_ascent_stops_after_the_first_step_past_halimis_squared_distance():
    """Halimi's code: stop once ||w - w_u||^2 > 2.2, far before the ball's surface."""
    assert PGA.defaults["stop-distance"] == 2.2
    assert PGA.defaults["stop-distance-fraction"] == 0.0
    free = ascent_distances({**PGA.defaults, "stop-distance": 0.0})
    assert len(free) == 5 * 8  # no early stop: 5 epochs of 8 mini-batches
    assert free[-1] > 4 * 2.2  # unstopped, the ascent goes much further
    stopped = ascent_distances(dict(PGA.defaults))
    last = first_past(free, 2.2)
    assert 0 < last < len(free) - 1
    assert stopped == free[: last + 1]  # the same path, ended right after crossing 2.2


def test_stop_distance_fraction_keeps_the_earlier_variant_at_a_fraction_of_the_radius():
    """stop-distance-fraction f > 0 (with stop-distance 0): stop past (f * radius)^2."""
    free = ascent_distances({**PGA.defaults, "stop-distance": 0.0}, radius=1e6)
    level = free[len(free) // 2]  # a radius whose half is crossed mid-ascent
    radius = 2 * level**0.5 * 1.0001
    settings = {**PGA.defaults, "stop-distance": 0.0, "stop-distance-fraction": 0.5}
    stopped = ascent_distances(settings, radius=radius)
    assert stopped == free[: first_past(free, (0.5 * radius) ** 2) + 1]


def test_both_early_stops_at_once_are_refused_with_the_way_out():
    problem = PGA.check_settings({**PGA.defaults, "stop-distance-fraction": 1.0})
    assert "pga.stop-distance-fraction and pga.stop-distance are both set" in problem
    assert "pga.stop-distance = 0" in problem
    assert (
        PGA.check_settings({**PGA.defaults, "stop-distance-fraction": 1.0, "stop-distance": 0.0})
        == ""
    )
    assert "stop-distance must be a finite number >= 0" in PGA.check_settings(
        {**PGA.defaults, "stop-distance": -1.0}
    )
