"""FedAU in a real Flower simulation: the target trains a random-label head, the server mixes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import TINY, simulate_strategy

from fedforget.federated.federation import method_context
from fedforget.methods.base import ClientUpdate, UnlearningStep
from fedforget.methods.fedau import (
    FedAU,
    auxiliary_head_seed,
    fresh_head,
    random_other_labels,
)
from fedforget.models import head_keys
from fedforget.task import client_data, client_seed, model_arrays, model_with, new_model

CONFIG = TINY.replace(method="fedau", unlearn_at_round=1, num_server_rounds=2)
UNLEARN_ROUND = 2  # forgets client 1


@pytest.fixture(scope="module")
def run():
    """Forget client 1 after round 1 with FedAU."""
    return simulate_strategy(CONFIG)


def auxiliary_model(global_arrays):
    """The target's client step, recomputed on the model, data and seed its ClientApp used:
    the global model with the fresh head the server drew for the step."""
    heads = head_keys(new_model(CONFIG))
    sent = fresh_head(global_arrays, heads, auxiliary_head_seed(CONFIG.seed, UNLEARN_ROUND))
    model = model_with(CONFIG, sent)
    seed = client_seed(CONFIG, UNLEARN_ROUND, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray actors, so the arithmetic repeats exactly
    try:
        FedAU.client_step(model, client_data(CONFIG, 1), CONFIG.settings_of("fedau"), {}, seed)
    finally:
        torch.set_num_threads(threads)
    return model_arrays(model)


@pytest.mark.ray
def test_only_the_target_takes_part_with_the_fedau_action(run):
    """The unlearning round asks the target alone, with its client step, for 10 head epochs."""
    record = run.strategy.rounds[UNLEARN_ROUND - 1]
    assert record.phase == "unlearn" and record.method == "fedau"
    assert record.participants == ["1"] and record.contributors == ["1"]
    assert record.actions == {"1": "fedau"}
    assert record.client_epochs == 10
    event = run.strategy.events[0]
    assert event.method == "fedau" and event.clients == ("1",)
    assert event.first_round == event.server_round == UNLEARN_ROUND


@pytest.mark.ray
def test_new_head_is_the_convex_mix_and_the_rest_is_unchanged(run):
    """Head = 0.04 x previous head + 0.96 x the target's head; every other array as before."""
    before, after = run.models[UNLEARN_ROUND - 1], run.models[UNLEARN_ROUND]
    assert np.array_equal(
        run.strategy.events[0].model_before["classifier.3.bias"], before["classifier.3.bias"]
    )
    heads = head_keys(new_model(CONFIG))
    assert heads == ("classifier.3.weight", "classifier.3.bias")
    auxiliary = auxiliary_model(before)
    for name in heads:
        expected = 0.04 * before[name].astype(np.float64) + 0.96 * auxiliary[name]
        np.testing.assert_allclose(after[name], expected, atol=1e-6, rtol=0, err_msg=name)
        # the step did change the head: the mix is not the old head
        assert np.abs(after[name] - before[name]).max() > 1e-3
    for name in before.keys() - set(heads):
        assert np.array_equal(after[name], before[name]), name
        assert np.array_equal(auxiliary[name], before[name]), f"{name} was not frozen"


# ------------------------------------------------------------- on the server
def step(settings=None):
    return UnlearningStep(
        (), "fedau", ("1",), {**FedAU.defaults, **(settings or {})}, first_round=UNLEARN_ROUND
    )


def global_model():
    return model_arrays(new_model(CONFIG.replace(seed=5)))


def test_the_auxiliary_head_starts_fresh_from_normal_0_001_as_published():
    """The server sends the global model with the head redrawn: weight N(0, 0.01^2), bias 0."""
    assert FedAU.defaults["aux-init"] == "random"
    method = FedAU(method_context(CONFIG))
    model = global_model()
    plan = method.plan(step(), method.begin(step(), model), model, ["0", "2"])
    weight, bias = head_keys(new_model(CONFIG))
    sent = plan.arrays[weight]
    assert sent.shape == model[weight].shape and sent.dtype == model[weight].dtype
    assert abs(float(sent.mean())) < 0.002 and 0.009 < float(sent.std()) < 0.011
    assert float(model[weight].std()) > 0.03  # the global head is no such head
    assert not plan.arrays[bias].any()
    for name in model.keys() - {weight, bias}:
        assert np.array_equal(plan.arrays[name], model[name]), name
    assert plan.clients == {"1": "fedau"}
    # drawn under the run's seed and the step's first round: reproducible, not the global head
    again = method.plan(step(), method.begin(step(), model), model, ["0", "2"])
    np.testing.assert_array_equal(again.arrays[weight], sent)
    other = fresh_head(model, (weight, bias), auxiliary_head_seed(CONFIG.seed, UNLEARN_ROUND + 1))
    assert not np.array_equal(other[weight], sent)


def test_the_mix_takes_the_targets_trained_fresh_heads():
    """Head = 0.04 W_orig + 0.96 W_aux, W_aux = fresh head + the target's update."""
    method = FedAU(method_context(CONFIG))
    model = global_model()
    plan = method.plan(step(), method.begin(step(), model), model, ["0", "2"])
    heads = method.context.head_keys
    delta = {k: np.full_like(v, 0.5) for k, v in model.items() if k in heads}
    delta.update({k: np.zeros_like(v) for k, v in model.items() if k not in heads})
    state = method.begin(step(), model)
    result = method.apply(step(), state, model, plan, [ClientUpdate("1", {}, delta, 40)])
    for name in heads:
        auxiliary = plan.arrays[name].astype(np.float64) + 0.5
        expected = 0.04 * model[name] + 0.96 * auxiliary
        np.testing.assert_allclose(result.arrays[name], expected, atol=1e-6, err_msg=name)
    for name in model.keys() - set(heads):
        assert np.array_equal(result.arrays[name], model[name]), name


def test_global_aux_init_keeps_the_earlier_variant():
    """aux-init='global': the head trains from the global head (W + 0.96 dW)."""
    method = FedAU(method_context(CONFIG))
    model = global_model()
    aux_global = step({"aux-init": "global"})
    plan = method.plan(aux_global, method.begin(aux_global, model), model, ["0", "2"])
    for name, value in model.items():
        assert np.array_equal(plan.arrays[name], value), name
    assert "fedau.aux-init must be one of random, global" in FedAU.check_settings(
        {**FedAU.defaults, "aux-init": "zeros"}
    )


def test_random_labels_are_never_the_true_class_and_cover_the_others():
    """Each example's label is drawn from the other classes, reproducibly."""
    y = torch.arange(10).repeat(200)
    labels = random_other_labels(y, 10, seed=7)
    assert not torch.any(labels == y)
    assert torch.equal(labels, random_other_labels(y, 10, seed=7))
    for cls in range(10):
        assert set(labels[y == cls].tolist()) == set(range(10)) - {cls}
