"""FedEraser: the calibration, the history it keeps, and a step in a real Flower simulation."""

from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest
import torch
from harness import TINY, simulate_strategy

from fedforget.arrays import Arrays, arrays_nbytes, is_float_array, norm, weighted_sum
from fedforget.methods.base import ClientUpdate, MethodContext, UnlearningStep
from fedforget.methods.federaser import FedEraser, calibrate, calibration_epochs
from fedforget.task import model_arrays, model_with, train_client

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


def test_calibration_epochs_are_a_fraction_of_the_local_epochs_at_least_one():
    assert calibration_epochs(0.5, 10) == 5
    assert calibration_epochs(0.5, 3) == 2  # ceil, as the original
    assert calibration_epochs(0.3, 10) == 3  # not 4 from 3.0000000000000004
    assert calibration_epochs(0.5, 1) == 1


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
    """interval=2 keeps rounds 1, 3, 5; bytes grow per kept round; forget erases everywhere."""
    rng = np.random.default_rng(3)
    model = random_update(rng, 1.0)
    method = FedEraser(toy_context(model), interval=2)
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
    assert "interval" in method.refusal(("1",), {**settings, "interval": 3})
    assert "(0, 1]" in FedEraser.check_settings({**settings, "calibration-epochs-fraction": 0.0})


def test_a_round_without_remaining_clients_carries_the_model_over():
    """Round 2 kept only the target's update: the step asks nobody then and keeps the model."""
    rng = np.random.default_rng(5)
    model = random_update(rng, 1.0)
    method = FedEraser(toy_context(model))
    stored = random_update(rng, 0.1)
    method.observe(1, model, [ClientUpdate("0", {}, stored, 10), ClientUpdate("1", {}, stored, 5)])
    method.observe(2, model, [ClientUpdate("1", {}, stored, 5)])
    step = UnlearningStep((), "federaser", ("1",), dict(FedEraser.defaults), first_round=3)

    first = method.plan(step, model, ["0", "2"], 0)  # client 2 kept nothing in round 1
    assert first.clients == {"0": "train"} and first.epochs == 2
    assert first.config == {"local-epochs": 2}
    fresh = random_update(rng, 5.0)
    after_first = method.apply(step, model, first, [ClientUpdate("0", {}, fresh, 10)])
    assert not after_first.done
    expected = weighted_sum(model, [(1.0, calibrate(stored, fresh, per_layer=True))])
    for name in model:
        np.testing.assert_allclose(after_first.arrays[name], expected[name], rtol=1e-6)

    second = method.plan(step, after_first.arrays, ["0", "2"], 1)
    assert second.clients == {} and second.epochs == 0.0
    result = method.apply(step, after_first.arrays, second, [])
    assert result.done
    for name in model:
        np.testing.assert_array_equal(result.arrays[name], after_first.arrays[name])


# ---------------------------------------------------------------- simulation
# 2 local epochs so that calibration (half of them) differs from ordinary training;
# rounds 1-2 train, 3-4 replay the 2 kept rounds, 5 recovers.
CONFIG = TINY.replace(method="federaser", local_epochs=2, num_server_rounds=5)


@pytest.fixture(scope="module")
def federaser_run():
    """Forget client 1 after round 2 with FedEraser (history kept every round)."""
    return simulate_strategy(CONFIG)


def test_step_replays_each_kept_round_with_the_remaining_clients_at_half_the_epochs(
    federaser_run,
):
    strategy = federaser_run.strategy
    assert [r.phase for r in strategy.rounds] == ["train", "train", "unlearn", "unlearn", "recover"]
    assert strategy.requests.get("config-round-2").applied_round == 4
    event = strategy.events[0]
    assert event.first_round == 3 and event.server_round == 4 and event.method == "federaser"
    for record in strategy.rounds[:2]:
        assert record.participants == ["0", "1", "2"]
        assert record.client_epochs == 2 * 3
    for record in strategy.rounds[2:4]:
        assert record.participants == record.contributors == ["0", "2"]
        assert record.actions == {}  # ordinary local training
        assert record.client_epochs == 1 * 2  # half of local-epochs=2, two clients


def test_every_applied_update_has_its_stored_norm(federaser_run):
    method = federaser_run.method("federaser")
    kept = {r.server_round: r for r in method.history}
    calibrations = method.calibrations
    assert [(c.server_round, c.client_id) for c in calibrations] == [
        (1, "0"),
        (1, "2"),
        (2, "0"),
        (2, "2"),
    ]
    for c in calibrations:
        stored = kept[c.server_round].updates[c.client_id].pseudo_gradient
        assert c.stored_norm == pytest.approx(norm(stored), rel=1e-9)
        assert c.applied_norm == pytest.approx(c.stored_norm, rel=1e-5)


def test_the_step_is_the_calibrated_replay_from_the_initial_model(federaser_run):
    """Recompute both calibration rounds: fresh 1-epoch updates, rescaled, averaged."""
    models = federaser_run.models
    kept = {r.server_round: r for r in federaser_run.method("federaser").history}
    np.testing.assert_array_equal(kept[1].sent["classifier.3.bias"], models[0]["classifier.3.bias"])
    calibration_config = CONFIG.replace(local_epochs=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray actors: the same arithmetic, bit for bit
    try:
        # unlearning round 3 replays kept round 1 from the initial model, round 4 kept round 2
        for unlearn_round, kept_round, start in ((3, 1, models[0]), (4, 2, models[3])):
            terms = []
            for cid in ("0", "2"):
                model = model_with(calibration_config, start)
                _, count = train_client(calibration_config, int(cid), model, unlearn_round)
                trained = model_arrays(model)
                fresh = {k: trained[k] - v for k, v in start.items() if is_float_array(v)}
                stored = kept[kept_round].updates[cid]
                assert stored.num_examples == count
                terms.append((count, calibrate(stored.pseudo_gradient, fresh, per_layer=True)))
            total = sum(count for count, _ in terms)
            expected = weighted_sum(start, [(count / total, u) for count, u in terms])
            for name in expected:
                np.testing.assert_allclose(
                    models[unlearn_round][name], expected[name], atol=1e-5, rtol=0, err_msg=name
                )
    finally:
        torch.set_num_threads(threads)


def test_history_drops_the_target_keeps_the_others_and_grows_per_round(federaser_run):
    strategy, models = federaser_run.strategy, federaser_run.models
    method = federaser_run.method("federaser")
    # rounds 1, 2 and the recovery round 5 are kept; the unlearning rounds are not observed
    assert [r.server_round for r in method.history] == [1, 2, 5]
    assert all(sorted(r.updates) == ["0", "2"] for r in method.history)
    assert method.stored_clients() == ["0", "2"]
    model_bytes = arrays_nbytes(models[0])
    update_bytes = arrays_nbytes({k: v for k, v in models[0].items() if is_float_array(v)})
    one_round = model_bytes + 3 * update_bytes
    # when the step began (after round 2) it held two rounds' worth: one more than after round 1
    assert strategy.events[0].stored_bytes == 2 * one_round
    assert method.stored_bytes() == 3 * model_bytes + 6 * update_bytes
    assert strategy.status.stored_bytes == method.stored_bytes()
