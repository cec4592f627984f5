"""MoDe in a real Flower simulation: momentum degradation by the others, guidance by the target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import TINY, simulate_strategy

from fedforget.arrays import is_float_array
from fedforget.federated.federation import method_context
from fedforget.methods.base import ClientUpdate, fedavg
from fedforget.methods.mode import MoDe, degradation_seed
from fedforget.task import (
    client_data,
    client_seed,
    model_arrays,
    model_with,
    train_client,
)

# round 1 trains, rounds 2-3 degrade, round 4 is the target's memory guidance
CONFIG = TINY.replace(method="mode", unlearn_at_round=1, num_server_rounds=4)
DEGRADATION_ROUNDS = (2, 3)
GUIDANCE_ROUND = 4
MOMENTUM = 0.95


@pytest.fixture(scope="module")
def run():
    """Forget client 1 after round 1 with MoDe (2 degradation rounds + guidance)."""
    return simulate_strategy(CONFIG)


def one_thread(work):
    """Run ``work()`` with one torch thread, as the Ray actors do, so arithmetic repeats exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return work()
    finally:
        torch.set_num_threads(threads)


def trained_update(client_id, sent, server_round):
    """A remaining client's ordinary training of ``sent``, as its ClientApp replied it."""
    model = model_with(CONFIG, sent)
    _, count = one_thread(lambda: train_client(CONFIG, int(client_id), model, server_round))
    arrays = model_arrays(model)
    delta = {k: (arrays[k] - v).astype(v.dtype) for k, v in sent.items() if is_float_array(v)}
    return ClientUpdate(client_id, arrays, delta, count)


@pytest.fixture(scope="module")
def degradation_models():
    """w_de after each degradation round, recomputed from its seeded random initialisation."""
    first_round = DEGRADATION_ROUNDS[0]
    degradation = method_context(CONFIG).random_arrays(degradation_seed(CONFIG.seed, first_round))
    models = {}
    for server_round in DEGRADATION_ROUNDS:
        updates = [trained_update(cid, degradation, server_round) for cid in ("0", "2")]
        degradation = models[server_round] = fedavg(degradation, updates)
    return models


def test_degradation_rounds_ask_only_the_remaining_clients(run):
    """Rounds 2-3 train w_de on clients 0 and 2 (ordinary action); round 4 asks client 1 alone."""
    rounds = run.strategy.rounds
    for server_round in DEGRADATION_ROUNDS:
        record = rounds[server_round - 1]
        assert record.phase == "unlearn" and record.method == "mode"
        assert record.participants == ["0", "2"] and record.contributors == ["0", "2"]
        assert record.actions == {}
        assert record.client_epochs == 2 * CONFIG.local_epochs
    guidance = rounds[GUIDANCE_ROUND - 1]
    assert guidance.phase == "unlearn"
    assert guidance.participants == ["1"] and guidance.actions == {"1": "mode"}
    assert guidance.client_epochs == 1
    event = run.strategy.events[0]
    assert event.method == "mode" and event.clients == ("1",)
    assert (event.first_round, event.server_round) == (DEGRADATION_ROUNDS[0], GUIDANCE_ROUND)
    assert run.method("mode").degradation == {}  # w_de is dropped with its step


def test_each_degradation_round_is_a_momentum_step_towards_w_de(run, degradation_models):
    """w_r = 0.95 w_(r-1) + 0.05 w_de,r on float arrays; integer arrays unchanged."""
    degradation = degradation_models
    for server_round in DEGRADATION_ROUNDS:
        before, after = run.models[server_round - 1], run.models[server_round]
        w_de = degradation[server_round]
        for name, value in before.items():
            if not is_float_array(value):
                assert np.array_equal(after[name], value), name
                continue
            expected = MOMENTUM * value.astype(np.float64) + (1 - MOMENTUM) * w_de[name]
            np.testing.assert_allclose(after[name], expected, atol=1e-6, rtol=0, err_msg=name)
        assert np.abs(after["classifier.3.weight"] - before["classifier.3.weight"]).max() > 1e-4


def test_guidance_returns_the_targets_model_trained_on_w_de_pseudo_labels(run, degradation_models):
    """Round 4's global model is the target's guided model (the only target's mean)."""
    w_de = degradation_models[DEGRADATION_ROUNDS[-1]]
    model = model_with(CONFIG, run.models[GUIDANCE_ROUND - 1])
    extra = {"degradation": {k: torch.from_numpy(v) for k, v in w_de.items()}}
    seed = client_seed(CONFIG, GUIDANCE_ROUND, 1)
    settings = CONFIG.settings_of("mode")
    one_thread(lambda: MoDe.client_step(model, client_data(CONFIG, 1), settings, extra, seed))
    guided = model_arrays(model)
    after = run.models[GUIDANCE_ROUND]
    for name, value in guided.items():
        np.testing.assert_allclose(after[name], value, atol=1e-6, rtol=0, err_msg=name)
    before = run.models[GUIDANCE_ROUND - 1]
    assert np.abs(after["classifier.3.weight"] - before["classifier.3.weight"]).max() > 1e-4
