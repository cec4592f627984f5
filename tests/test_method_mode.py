"""MoDe: the published step (the port's), on the server and in a real Flower simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import TINY, simulate_strategy

from fedforget.arrays import is_float_array, weighted_sum
from fedforget.federated.federation import method_context
from fedforget.methods.base import ClientUpdate, MethodContext, UnlearningStep, fedavg
from fedforget.methods.mode import MoDe, degradation_seed, schedule
from fedforget.task import (
    client_data,
    client_seed,
    model_arrays,
    model_with,
    train_client,
)

MOMENTUM = 0.95


# ------------------------------------------------------------- on the server
def toy_context(local_epochs: int = 3) -> MethodContext:
    base = {"w": np.zeros((2, 3), np.float32), "steps": np.array(7)}
    return MethodContext(
        initial_arrays=base,
        statistic_keys=frozenset(),
        first_conv_key="",
        head_keys=("w",),
        task="classification",
        local_epochs=local_epochs,
        seed=0,
        random_arrays=lambda seed: {
            "w": np.random.default_rng(seed).normal(size=(2, 3)).astype(np.float32),
            "steps": np.array(0),
        },
    )


def toy_update(client_id: str, value: float, examples: int) -> ClientUpdate:
    return ClientUpdate(client_id, {}, {"w": np.full((2, 3), value, np.float32)}, examples)


EXAMPLES = {"0": 50, "1": 30, "2": 100, "3": 20}  # client 1 is the target


def run_step(settings, remaining=("0", "2", "3")):
    """Drive a whole step by hand: each plan, then replies from every planned client."""
    method = MoDe(toy_context())
    step = UnlearningStep((), "mode", ("1",), {**MoDe.defaults, **settings}, first_round=21)
    model = {"w": np.ones((2, 3), np.float32), "steps": np.array(7)}
    rounds = []
    state = method.begin(step, model)
    for _ in range(100):
        plan = method.plan(step, state, model, list(remaining))
        updates = [toy_update(c, 0.1 * int(c) + 0.05, EXAMPLES[c]) for c in plan.clients]
        result = method.apply(step, state, model, plan, updates)
        rounds.append((plan, model, result.arrays))
        model = result.arrays
        state.index += 1  # as the spine does after each round
        if result.done:
            return method, rounds
    raise AssertionError("the step never completed")


def test_the_published_step_is_6_degradation_rounds_within_10_fedavg_guidance_rounds():
    """The port: MoDe rounds 1-6 degrade then guide, rounds 7-10 only guide."""
    assert (MoDe.defaults["degradation-rounds"], MoDe.defaults["guidance-rounds"]) == (6, 10)
    assert MoDe.defaults["guidance"] == "fedavg"
    phases = schedule(6, 10)
    assert phases == ("degrade", "guide") * 6 + ("guide",) * 4
    method, rounds = run_step({})
    assert len(rounds) == 16
    kinds = ["degrade" if "degradation" not in p.extra else "guide" for p, _, _ in rounds]
    assert tuple(kinds) == phases
    assert vars(method) == {"context": method.context}  # the step's state is not the method's


def test_guidance_rounds_train_every_client_and_weigh_the_target_n_u_over_n():
    """Every guidance round asks all clients (the target with MoDe's step) and averages
    them with FedAvg's weights over everyone, the target's n_u / N included."""
    _, rounds = run_step({})
    guidance = [(p, before, after) for p, before, after in rounds if "degradation" in p.extra]
    assert len(guidance) == 10
    total = sum(EXAMPLES.values())
    for plan, before, after in guidance:
        assert plan.clients == {"0": "train", "2": "train", "3": "train", "1": "mode"}
        assert plan.arrays is before  # everyone trains from the global model
        assert plan.config == {"mode.guidance-epochs": 3}  # 0: the run's local epochs
        expected = sum(EXAMPLES[c] / total * (0.1 * int(c) + 0.05) for c in EXAMPLES)
        np.testing.assert_allclose(after["w"], before["w"] + expected, rtol=1e-6)
        assert after["steps"] == 7  # integer arrays keep the global model's values
        assert plan.epochs == pytest.approx(3.0)


def test_degradation_rounds_train_w_de_undecayed_and_pull_the_model_towards_it():
    method = MoDe(toy_context())
    step = UnlearningStep((), "mode", ("1",), dict(MoDe.defaults), first_round=21)
    model = {"w": np.ones((2, 3), np.float32), "steps": np.array(7)}
    state = method.begin(step, model)
    plan = method.plan(step, state, model, ["0", "2", "3"])
    w_de = toy_context().random_arrays(degradation_seed(0, 21))
    np.testing.assert_array_equal(plan.arrays["w"], w_de["w"])
    assert plan.clients == {"0": "train", "2": "train", "3": "train"}
    assert plan.config == {"lr-decay": 1.0}  # the port trains w_de at the base lr
    updates = [toy_update(c, 0.1 * int(c), EXAMPLES[c]) for c in plan.clients]
    result = method.apply(step, state, model, plan, updates)
    trained = fedavg(plan.arrays, updates)
    expected = MOMENTUM * model["w"] + (1 - MOMENTUM) * trained["w"]
    np.testing.assert_allclose(result.arrays["w"], expected, rtol=1e-6)
    assert not result.done


def test_targets_variant_guides_with_the_targets_alone_at_full_weight():
    """guidance='targets' with 2 + 1 rounds is the variant fedforget ran before."""
    settings = {"guidance": "targets", "degradation-rounds": 2, "guidance-rounds": 1}
    _, rounds = run_step(settings)
    assert len(rounds) == 3
    plan, before, after = rounds[-1]
    assert plan.clients == {"1": "mode"}
    np.testing.assert_allclose(after["w"], before["w"] + 0.15, rtol=1e-6)


def test_remaining_lr_sets_the_remaining_clients_learning_rate_in_guidance_rounds():
    _, rounds = run_step({"remaining-lr": 0.0005, "guidance-epochs": 2})
    plan = rounds[-1][0]
    assert plan.config == {"mode.guidance-epochs": 2, "lr": 0.0005, "lr-decay": 1.0}
    assert plan.epochs == pytest.approx((3 * 3 + 2) / 4)


def test_settings_are_checked():
    for key, value, message in (
        ("guidance", "all", "mode.guidance must be one of fedavg, targets"),
        ("guidance-rounds", 0, "mode.guidance-rounds must be an integer >= 1"),
        ("guidance-epochs", -1, "mode.guidance-epochs must be an integer >= 0"),
        ("remaining-lr", -0.1, "mode.remaining-lr must be a finite number >= 0"),
    ):
        assert message in MoDe.check_settings({**MoDe.defaults, key: value})
    assert MoDe.check_settings(dict(MoDe.defaults)) == ""


# ---------------------------------------------------------------- simulation
# round 1 trains; MoDe rounds: (degrade 2, guide 3), (guide 4); round 5 recovers
CONFIG = TINY.replace(
    method="mode",
    unlearn_at_round=1,
    num_server_rounds=5,
    method_settings=(("mode.degradation-rounds", 1), ("mode.guidance-rounds", 2)),
)
DEGRADATION_ROUND = 2
GUIDANCE_ROUNDS = (3, 4)


@pytest.fixture(scope="module")
def run():
    """Forget client 1 after round 1 with MoDe (1 degradation round within 2 guidance rounds)."""
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


def guided_update(sent, w_de, server_round):
    """The target's memory guidance of ``sent``, as its ClientApp replied it."""
    model = model_with(CONFIG, sent)
    extra = {"degradation": {k: torch.from_numpy(v) for k, v in w_de.items()}}
    seed = client_seed(CONFIG, server_round, 1)
    settings = {**CONFIG.settings_of("mode"), "guidance-epochs": CONFIG.local_epochs}
    data = client_data(CONFIG, 1)
    one_thread(lambda: MoDe.client_step(model, data, settings, extra, seed))
    arrays = model_arrays(model)
    delta = {k: (arrays[k] - v).astype(v.dtype) for k, v in sent.items() if is_float_array(v)}
    return ClientUpdate("1", arrays, delta, len(data.y))


@pytest.fixture(scope="module")
def w_de():
    """w_de after the degradation round, recomputed from its seeded random initialisation."""
    start = method_context(CONFIG).random_arrays(degradation_seed(CONFIG.seed, DEGRADATION_ROUND))
    updates = [trained_update(cid, start, DEGRADATION_ROUND) for cid in ("0", "2")]
    return fedavg(start, updates)


@pytest.mark.ray
def test_rounds_ask_the_remaining_clients_then_everyone(run):
    rounds = run.strategy.rounds
    degradation = rounds[DEGRADATION_ROUND - 1]
    assert degradation.phase == "unlearn" and degradation.method == "mode"
    assert degradation.participants == ["0", "2"] and degradation.actions == {}
    for server_round in GUIDANCE_ROUNDS:
        record = rounds[server_round - 1]
        assert record.phase == "unlearn"
        assert record.participants == record.contributors == ["0", "1", "2"]
        assert record.actions == {"1": "mode"}
    event = run.strategy.events[0]
    assert event.method == "mode" and event.clients == ("1",)
    assert (event.first_round, event.server_round) == (DEGRADATION_ROUND, GUIDANCE_ROUNDS[-1])
    assert rounds[4].phase == "recover" and rounds[4].participants == ["0", "2"]


@pytest.mark.ray
def test_degradation_round_is_a_momentum_step_towards_w_de(run, w_de):
    before, after = run.models[DEGRADATION_ROUND - 1], run.models[DEGRADATION_ROUND]
    for name, value in before.items():
        if not is_float_array(value):
            assert np.array_equal(after[name], value), name
            continue
        expected = MOMENTUM * value.astype(np.float64) + (1 - MOMENTUM) * w_de[name]
        np.testing.assert_allclose(after[name], expected, atol=1e-6, rtol=0, err_msg=name)


@pytest.mark.ray
def test_guidance_rounds_are_fedavg_of_everyone_with_the_target_on_pseudo_labels(run, w_de):
    """Each guidance round: FedAvg (n_k / N over all three) of the remaining clients'
    ordinary training and the target's training on w_de's labels."""
    for server_round in GUIDANCE_ROUNDS:
        before = run.models[server_round - 1]
        updates = [trained_update(c, before, server_round) for c in ("0", "2")]
        updates.append(guided_update(before, w_de, server_round))
        total = sum(u.num_examples for u in updates)
        expected = weighted_sum(before, [(u.num_examples / total, u.delta) for u in updates])
        after = run.models[server_round]
        for name, value in expected.items():
            np.testing.assert_allclose(after[name], value, atol=1e-5, rtol=0, err_msg=name)
        assert np.abs(after["classifier.3.weight"] - before["classifier.3.weight"]).max() > 1e-4
