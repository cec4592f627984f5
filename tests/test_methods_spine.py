"""The spine with the server-side methods, a toy plug-in, and refusals (one real simulation)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import cloudpickle
import numpy as np
import pytest
import torch
from harness import TINY, simulate_strategy

from fedforget.arrays import Arrays, weighted_sum
from fedforget.methods import method_class, method_names, register, unregister
from fedforget.methods.base import (
    ClientUpdate,
    ConfigValue,
    FederatedMethod,
    Needs,
    RoundPlan,
    StepResult,
    StepState,
    UnlearningStep,
)
from fedforget.models import first_conv_key
from fedforget.requests import UnlearningRequest
from fedforget.task import model_arrays, model_with, new_model, train_client

pytestmark = pytest.mark.ray

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class ToyShift(FederatedMethod):
    """A plug-in defined in a test: adds ``shift`` to every float array; one client per step."""

    name = "toy-shift"
    table = "toy-shift"
    defaults: Mapping[str, ConfigValue] = {"shift": 0.5}
    needs = Needs(concurrent=False)

    def plan(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        remaining: Sequence[str],
    ) -> RoundPlan:
        return RoundPlan(global_arrays)

    def apply(
        self,
        step: UnlearningStep,
        state: StepState,
        global_arrays: Arrays,
        plan: RoundPlan,
        updates: Sequence[ClientUpdate],
    ) -> StepResult:
        ones = {k: np.ones_like(v) for k, v in global_arrays.items()}
        return StepResult(weighted_sum(global_arrays, [(float(step.settings["shift"]), ones)]))


CONFIG = TINY.replace(num_partitions=5, num_server_rounds=7, unlearn_at_round=0)
REQUESTS = [
    UnlearningRequest(("0",), method="federaser", not_before_round=3, request_id="no-history"),
    UnlearningRequest(("0",), method="nope", not_before_round=3, request_id="unknown-method"),
    UnlearningRequest(("1",), method="natural", not_before_round=3, request_id="natural"),
    UnlearningRequest(("2",), method="not", not_before_round=4, request_id="not"),
    UnlearningRequest(("3",), method="retrain", not_before_round=5, request_id="retrain"),
    UnlearningRequest(("0", "4"), method="toy-shift", not_before_round=6, request_id="two"),
    UnlearningRequest(
        ("4",), method="toy-shift", options={"shift": 0.25}, not_before_round=6, request_id="toy"
    ),
]


@pytest.fixture(scope="module")
def run():
    # registered for this module only: other tests' configs must not carry its table
    register(ToyShift)
    try:
        return simulate_strategy(CONFIG, REQUESTS)
    finally:
        unregister(ToyShift.name)


def test_unmet_needs_and_unknown_methods_are_refused_with_the_reason(run):
    queue = run.strategy.requests
    assert "federaser needs every client update" in queue.get("no-history").reason
    assert "method='federaser'" in queue.get("no-history").reason
    assert "unknown unlearning method 'nope'" in queue.get("unknown-method").reason
    assert "one client per step" in queue.get("two").reason
    assert {queue.get(r).status for r in ("no-history", "unknown-method", "two")} == {"rejected"}
    # nothing was forgotten by them: client 0 still trains in every ordinary round
    assert "0" not in run.strategy.directory.forgotten
    assert all("0" in r.participants for r in run.strategy.rounds if r.phase != "unlearn")
    # every asked client answered (the toy's settings mean nothing to the ClientApps)
    assert all(r.contributors == r.participants for r in run.strategy.rounds)


def test_natural_applies_no_update_of_the_target(run):
    """Round 3 is FedAvg of the remaining clients, recomputed here; the target is not asked."""
    strategy, models = run.strategy, run.models
    assert strategy.rounds[2].phase == "unlearn" and strategy.rounds[2].method == "natural"
    assert strategy.rounds[2].participants == ["0", "2", "3", "4"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the Ray actors' arithmetic
    try:
        updates = []
        for cid in ("0", "2", "3", "4"):
            model = model_with(CONFIG, models[2])
            _, count = train_client(CONFIG, int(cid), model, server_round=3)
            trained = model_arrays(model)
            updates.append((count, {k: trained[k] - models[2][k] for k in trained}))
    finally:
        torch.set_num_threads(threads)
    total = sum(n for n, _ in updates)
    expected = weighted_sum(models[2], [(n / total, d) for n, d in updates])
    for name in expected:
        np.testing.assert_allclose(models[3][name], expected[name], atol=1e-5, rtol=0)


def test_not_negates_exactly_the_first_convolution(run):
    before, after = run.models[3], run.models[4]
    key = first_conv_key(new_model(CONFIG))
    assert key == "features.0.weight"
    np.testing.assert_array_equal(after[key], -before[key])
    for name in before:
        if name != key:
            np.testing.assert_array_equal(after[name], before[name])
    assert run.strategy.rounds[3].participants == []


def test_retrain_resets_to_the_initial_model_and_never_asks_the_target(run):
    initial = model_arrays(new_model(CONFIG))
    for name, value in initial.items():
        np.testing.assert_array_equal(run.models[5][name], value)
    assert run.strategy.rounds[4].participants == []
    assert all("3" not in r.participants for r in run.strategy.rounds[4:])


def test_a_plugin_from_a_test_file_runs_through_the_spine(run):
    assert "toy-shift" not in method_names()  # unregistered again after the run
    event = run.strategy.events[-1]
    assert event.method == "toy-shift" and event.clients == ("4",)
    assert event.settings == {"shift": 0.25}  # the request's option over the default 0.5
    for name, value in run.models[5].items():
        np.testing.assert_allclose(run.models[6][name], value + 0.25, atol=1e-6)
    assert [e.method for e in run.strategy.events] == ["natural", "not", "retrain", "toy-shift"]
    assert run.strategy.directory.forgotten == {"1", "2", "3", "4"}
    assert run.strategy.rounds[6].participants == ["0"]  # recovery with the last client


def test_a_step_begun_in_the_last_round_completes():
    """MoDe needs 3 rounds here (degrade, guide, guide): a request after round 2 of 3 runs to 5."""
    settings = (("mode.degradation-rounds", 1), ("mode.guidance-rounds", 2))
    config = TINY.replace(num_server_rounds=3, method="mode", method_settings=settings)
    record = simulate_strategy(config)
    rounds = record.strategy.rounds
    assert [r.phase for r in rounds] == ["train", "train", "unlearn", "unlearn", "unlearn"]
    assert [(e.first_round, e.server_round) for e in record.strategy.events] == [(3, 5)]
    assert sorted(record.models) == [0, 1, 2, 3, 4, 5]


def test_every_method_names_its_source_and_its_deviations_in_one_line():
    """The docs' methods table is generated from reference, summary and deviations."""
    for name in method_names():
        cls = method_class(name)
        assert cls.reference and cls.summary, name
        assert isinstance(cls.deviations, str) and "\n" not in cls.deviations, name
    fedquit = method_class("fedquit").reference
    assert fedquit.startswith("Mora, Valerio, Bellavista and Passarella") and "Zhao" not in fedquit
    for name in ("federaser", "fedau", "mode", "pga", "puf-special"):
        assert "checked against" in method_class(name).reference, name
