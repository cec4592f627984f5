"""FedEraser: the calibration, the history it keeps, and a step in a real Flower simulation."""

from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest
import torch
from harness import TINY, simulate_strategy

from fedforget.arrays import Arrays, arrays_nbytes, is_float_array, norm, weighted_sum
from fedforget.config import FederationConfig
from fedforget.data import load_federated_data
from fedforget.methods.base import ClientUpdate, MethodContext, UnlearningStep
from fedforget.methods.federaser import FedEraser, calibrate
from fedforget.task import client_seed, local_steps, model_arrays, model_with, partition_index
from fedforget.training import train

# Ray workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def layer_norm(array: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(array, np.float64)))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def random_update(rng: np.random.Generator, scale: float) -> Arrays:
    return {
        "conv.weight": (scale * rng.normal(size=(4, 1, 3, 3))).astype(np.float32),
        "conv.bias": (0.1 * scale * rng.normal(size=4)).astype(np.float32),
        "fc.weight": (3 * scale * rng.normal(size=(2, 4))).astype(np.float32),
    }


def test_calibrate_per_layer_gives_each_layer_the_stored_norm_and_the_new_direction():
    """Per layer: every array has its stored norm and points where the new update points."""
    rng = np.random.default_rng(0)
    stored, new = random_update(rng, 0.5), random_update(rng, 7.0)

    calibrated = calibrate(stored, new, per_layer=True)

    assert calibrated.keys() == new.keys()
    for name in new:
        assert calibrated[name].dtype == np.float32
        assert layer_norm(calibrated[name]) == pytest.approx(layer_norm(stored[name]), rel=1e-5)
        assert cosine(calibrated[name], new[name]) == pytest.approx(1.0, abs=1e-6)


def test_calibrate_whole_model_keeps_the_layers_proportions():
    """Whole-model: one scale for all arrays, so the total norm is the stored one."""
    rng = np.random.default_rng(1)
    stored, new = random_update(rng, 0.5), random_update(rng, 7.0)

    calibrated = calibrate(stored, new, per_layer=False)

    assert norm(calibrated) == pytest.approx(norm(stored), rel=1e-5)
    scale = norm(stored) / norm(new)
    for name in new:
        np.testing.assert_allclose(calibrated[name], scale * new[name], rtol=1e-5)
    # per layer would have changed the proportions between the arrays
    per_layer = calibrate(stored, new, per_layer=True)
    assert abs(layer_norm(per_layer["fc.weight"]) - layer_norm(calibrated["fc.weight"])) > 1e-3


def test_calibrate_leaves_a_zero_update_zero_and_checks_shapes():
    """A new update of norm 0 has no direction; a stored update of another shape is an error."""
    rng = np.random.default_rng(2)
    stored, new = random_update(rng, 1.0), random_update(rng, 1.0)
    new["conv.bias"] = np.zeros(4, np.float32)

    calibrated = calibrate(stored, new, per_layer=True)

    assert not calibrated["conv.bias"].any()
    assert layer_norm(calibrated["fc.weight"]) == pytest.approx(layer_norm(stored["fc.weight"]))
    with pytest.raises(ValueError, match="shape"):
        calibrate({**stored, "conv.bias": np.zeros(5, np.float32)}, new, per_layer=False)


def test_calibration_trains_half_the_local_schedule_rounded_down_to_mini_batches():
    """As the PUF authors' port: int(0.5 x batches) of one epoch, not a whole epoch."""
    config = FederationConfig(local_epochs=1, batch_size=32, local_epochs_fraction=0.5)
    assert local_steps(config, 224) == 3  # 7 batches: 3, not 4 (ceil) and not 7 (an epoch)
    assert local_steps(config, 256) == 4
    assert local_steps(config, 20) == 1  # at least one mini-batch
    assert local_steps(config.replace(local_epochs=10), 224) == 35  # 5 whole epochs
    assert local_steps(config.replace(local_epochs=3), 224) == 10  # 1.5 epochs: 10 of 21
    assert local_steps(config.replace(local_epochs_fraction=1.0), 224) is None  # all of them


def toy_context(model: Arrays) -> MethodContext:
    return MethodContext(
        initial_arrays=model,
        statistic_keys=frozenset(),
        first_conv_key="conv.weight",
        head_keys=("fc.weight",),
        task="classification",
        local_epochs=4,
        seed=0,
        random_arrays=lambda seed: model,
    )


def test_history_keeps_every_interval_th_round_grows_and_forgets():
    """The default interval 2 keeps rounds 1, 3, 5; bytes grow per kept round; forget erases."""
    assert FedEraser.defaults["interval"] == 2
    rng = np.random.default_rng(3)
    model = random_update(rng, 1.0)
    method = FedEraser(toy_context(model))
    per_update = arrays_nbytes(model)  # every array is a float array
    sizes = []

    for server_round in range(1, 6):
        updates = [ClientUpdate(cid, {}, random_update(rng, 0.1), 10 + int(cid)) for cid in "012"]
        method.observe(server_round, model, updates)
        sizes.append(method.stored_bytes())

    assert [r.server_round for r in method.history] == [1, 3, 5]
    assert sizes == [
        4 * per_update,
        4 * per_update,
        8 * per_update,
        8 * per_update,
        12 * per_update,
    ]
    assert method.stored_clients() == ["0", "1", "2"]
    method.forget(["1"])
    assert all(sorted(r.updates) == ["0", "2"] for r in method.history)
    assert method.stored_bytes() == 9 * per_update
    assert method.stored_clients() == ["0", "2"]


def test_refusals_name_what_is_missing():
    """No history yet, or an interval other than the history's, is refused with the reason."""
    model = random_update(np.random.default_rng(4), 1.0)
    method = FedEraser(toy_context(model))
    settings = dict(FedEraser.defaults)
    assert "no round yet" in method.refusal(("1",), settings)
    method.observe(1, model, [ClientUpdate("0", {}, model, 5)])
    assert method.refusal(("1",), settings) == ""
    assert "interval" in method.refusal(("1",), {**settings, "interval": 1})
    assert "(0, 1]" in FedEraser.check_settings({**settings, "calibration-epochs-fraction": 0.0})


def test_the_first_kept_round_reuses_its_stored_updates_and_the_next_one_calibrates():
    """Kept rounds 1 and 3: round 1's stored updates of the remaining clients rebuild w~
    (no training); the step's one round calibrates round 3 from it at half the epochs."""
    rng = np.random.default_rng(5)
    initial, third = random_update(rng, 1.0), random_update(rng, 1.0)
    method = FedEraser(toy_context(initial))
    first = {c: random_update(rng, 0.1) for c in "012"}
    stored = {c: random_update(rng, 0.1) for c in "012"}
    sizes = {"0": 10, "1": 5, "2": 30}
    method.observe(1, initial, [ClientUpdate(c, {}, first[c], sizes[c]) for c in "012"])
    method.observe(2, random_update(rng, 1.0), [ClientUpdate("0", {}, stored["0"], 10)])
    method.observe(3, third, [ClientUpdate(c, {}, stored[c], sizes[c]) for c in "012"])
    step = UnlearningStep((), "federaser", ("1",), dict(FedEraser.defaults), first_round=4)

    state = method.begin(step, third)
    plan = method.plan(step, state, third, ["0", "2"])
    start = weighted_sum(initial, [(10 / 40, first["0"]), (30 / 40, first["2"])])
    for name in initial:
        np.testing.assert_allclose(plan.arrays[name], start[name], rtol=1e-6, err_msg=name)
    assert plan.clients == {"0": "train", "2": "train"}
    assert plan.config == {"local-epochs-fraction": 0.5}
    assert plan.epochs == 2.0  # half of local-epochs=4, for the cost record
    fresh = {c: random_update(rng, 5.0) for c in "02"}
    result = method.apply(
        step, state, third, plan, [ClientUpdate(c, {}, fresh[c], sizes[c]) for c in "02"]
    )
    assert result.done  # two kept rounds: one unlearning round
    expected = weighted_sum(
        plan.arrays,
        [(sizes[c] / 40, calibrate(stored[c], fresh[c], per_layer=True)) for c in "02"],
    )
    for name in initial:
        np.testing.assert_allclose(result.arrays[name], expected[name], rtol=1e-6)
    assert [(c.server_round, c.client_id) for c in method.calibrations] == [(3, "0"), (3, "2")]
    # the replay schedule was the step's; the method keeps its history and the latest record
    assert set(vars(method)) == {"context", "interval", "history", "calibrations"}
    assert method.calibrations is state.calibrations


def test_one_kept_round_is_a_step_that_asks_nobody():
    rng = np.random.default_rng(6)
    initial, update = random_update(rng, 1.0), random_update(rng, 0.1)
    method = FedEraser(toy_context(initial))
    method.observe(
        1, initial, [ClientUpdate("0", {}, update, 10), ClientUpdate("1", {}, update, 5)]
    )
    step = UnlearningStep((), "federaser", ("1",), dict(FedEraser.defaults), first_round=3)
    model = random_update(rng, 1.0)
    state = method.begin(step, model)
    plan = method.plan(step, state, model, ["0", "2"])
    assert plan.clients == {} and plan.epochs == 0.0
    result = method.apply(step, state, plan.arrays, plan, [])
    assert result.done
    expected = weighted_sum(initial, [(1.0, update)])  # round 1 without the target
    for name in initial:
        np.testing.assert_allclose(result.arrays[name], expected[name], rtol=1e-6)


def test_a_round_without_remaining_clients_carries_the_model_over():
    """Kept round 3 holds only the target's update: the step asks nobody then."""
    rng = np.random.default_rng(7)
    model = random_update(rng, 1.0)
    method = FedEraser(toy_context(model))
    stored = random_update(rng, 0.1)
    method.observe(1, model, [ClientUpdate("0", {}, stored, 10), ClientUpdate("1", {}, stored, 5)])
    method.observe(3, model, [ClientUpdate("1", {}, stored, 5)])
    step = UnlearningStep((), "federaser", ("1",), dict(FedEraser.defaults), first_round=4)
    state = method.begin(step, model)
    plan = method.plan(step, state, model, ["0", "2"])
    assert plan.clients == {} and plan.epochs == 0.0
    result = method.apply(step, state, model, plan, [])
    assert result.done
    for name in model:
        np.testing.assert_array_equal(result.arrays[name], plan.arrays[name])


# ---------------------------------------------------------------- simulation
# One local epoch, as on the paper's CIFAR configurations: calibration trains half of it.
# Rounds 1-3 train (1 and 3 kept), round 4 replays kept round 3 from round 1's stored
# updates, round 5 recovers.
CONFIG = TINY.replace(method="federaser", unlearn_at_round=3, num_server_rounds=5)


@pytest.fixture(scope="module")
def federaser_run():
    """Forget client 1 after round 3 with FedEraser (history kept every 2nd round)."""
    return simulate_strategy(CONFIG)


@pytest.mark.ray
def test_step_replays_the_second_kept_round_with_the_remaining_clients_at_half_an_epoch(
    federaser_run,
):
    strategy = federaser_run.strategy
    assert [r.phase for r in strategy.rounds] == ["train"] * 3 + ["unlearn", "recover"]
    assert strategy.requests.get("config-round-3").applied_round == 4
    event = strategy.events[0]
    assert event.first_round == event.server_round == 4 and event.method == "federaser"
    record = strategy.rounds[3]
    assert record.participants == record.contributors == ["0", "2"]
    assert record.actions == {}  # ordinary local training
    assert record.client_epochs == 0.5 * 2  # half of local-epochs=1, two clients


@pytest.mark.ray
def test_every_applied_update_has_its_stored_norm(federaser_run):
    method = federaser_run.method("federaser")
    kept = {r.server_round: r for r in method.history}
    assert [(c.server_round, c.client_id) for c in method.calibrations] == [(3, "0"), (3, "2")]
    for c in method.calibrations:
        stored = kept[c.server_round].updates[c.client_id].pseudo_gradient
        assert c.stored_norm == pytest.approx(norm(stored), rel=1e-9)
        assert c.applied_norm == pytest.approx(c.stored_norm, rel=1e-5)


@pytest.mark.ray
def test_the_step_is_round_1_reused_then_round_3_calibrated_for_half_an_epoch(federaser_run):
    """Recompute the step: round 1's FedAvg without the target, then half an epoch of the
    remaining clients' training (floor(batches / 2) mini-batches), rescaled, averaged."""
    models = federaser_run.models
    kept = {r.server_round: r for r in federaser_run.method("federaser").history}
    assert sorted(kept) == [1, 3, 5]
    np.testing.assert_array_equal(kept[1].sent["classifier.3.bias"], models[0]["classifier.3.bias"])
    first = [kept[1].updates[c] for c in ("0", "2")]
    total = sum(u.num_examples for u in first)
    start = weighted_sum(models[0], [(u.num_examples / total, u.pseudo_gradient) for u in first])
    federated = load_federated_data(CONFIG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray actors: the same arithmetic, bit for bit
    try:
        terms = []
        for cid in ("0", "2"):
            index = partition_index(CONFIG, int(cid))
            batches = -(-len(index) // CONFIG.batch_size)
            model = model_with(CONFIG, start)
            train(
                model,
                federated.data.train_x[index],
                federated.data.train_y[index],
                epochs=1,
                batch_size=CONFIG.batch_size,
                lr=CONFIG.lr,
                seed=client_seed(CONFIG, 4, int(cid)),
                max_steps=batches // 2,
            )
            trained = model_arrays(model)
            fresh = {k: trained[k] - v for k, v in start.items() if is_float_array(v)}
            stored = kept[3].updates[cid]
            assert stored.num_examples == len(index) and batches >= 3
            terms.append((len(index), calibrate(stored.pseudo_gradient, fresh, per_layer=True)))
        total = sum(count for count, _ in terms)
        expected = weighted_sum(start, [(count / total, u) for count, u in terms])
        for name in expected:
            np.testing.assert_allclose(
                models[4][name], expected[name], atol=1e-5, rtol=0, err_msg=name
            )
    finally:
        torch.set_num_threads(threads)


@pytest.mark.ray
def test_history_drops_the_target_keeps_the_others_and_grows_per_kept_round(federaser_run):
    strategy, models = federaser_run.strategy, federaser_run.models
    method = federaser_run.method("federaser")
    # rounds 1, 3 and the recovery round 5 are kept; the unlearning round is not observed
    assert [r.server_round for r in method.history] == [1, 3, 5]
    assert all(sorted(r.updates) == ["0", "2"] for r in method.history)
    assert method.stored_clients() == ["0", "2"]
    model_bytes = arrays_nbytes(models[0])
    update_bytes = arrays_nbytes({k: v for k, v in models[0].items() if is_float_array(v)})
    one_round = model_bytes + 3 * update_bytes
    # when the step began (after round 3) it held two kept rounds
    assert strategy.events[0].stored_bytes == 2 * one_round
    assert method.stored_bytes() == 3 * model_bytes + 6 * update_bytes
    assert strategy.status.stored_bytes == method.stored_bytes()
