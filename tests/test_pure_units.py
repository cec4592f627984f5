"""Pure logic at unit size: NoT / Retrain / MoDe arithmetic, phase configs, costs, the table."""

from __future__ import annotations

import numpy as np
import pytest

from fedforget.comparison import PhaseRecord, cell_config, original_config, reference_config
from fedforget.config import FederationConfig
from fedforget.federated.records import RoundRecord
from fedforget.methods.base import MethodContext, StepState, UnlearningStep
from fedforget.methods.mode import momentum_step
from fedforget.methods.negation import NoT
from fedforget.methods.retrain import Retrain
from fedforget.results import format_table


def context(first_conv_key: str = "conv.weight") -> MethodContext:
    rng = np.random.default_rng(0)
    initial = {
        "conv.weight": rng.normal(size=(2, 1, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(size=2).astype(np.float32),
        "bn.num_batches_tracked": np.array(4),
    }
    return MethodContext(
        initial_arrays=initial,
        statistic_keys=frozenset({"bn.num_batches_tracked"}),
        first_conv_key=first_conv_key,
        head_keys=("conv.bias",),
        task="classification",
        local_epochs=2,
        seed=0,
        random_arrays=lambda seed: initial,
    )


def trained(ctx: MethodContext) -> dict[str, np.ndarray]:
    """A global model some rounds after the initial one."""
    return {
        k: (v + 0.5).astype(v.dtype) if v.dtype.kind == "f" else v + 3
        for k, v in ctx.initial_arrays.items()
    }


STEP = UnlearningStep((), "x", ("1",), {}, first_round=5)


# ------------------------------------------------------------------ methods
def test_not_negates_the_first_convolution_alone_on_the_server():
    ctx = context()
    method, model = NoT(ctx), trained(ctx)
    state = method.begin(STEP, model)
    plan = method.plan(STEP, state, model, ["0", "2"])
    assert plan.clients == {} and plan.epochs == 0.0  # no client works in the step
    result = method.apply(STEP, state, model, plan, [])
    assert result.done
    np.testing.assert_array_equal(result.arrays["conv.weight"], -model["conv.weight"])
    np.testing.assert_array_equal(result.arrays["conv.bias"], model["conv.bias"])
    assert result.arrays["bn.num_batches_tracked"] == 7
    assert result.arrays["conv.bias"] is not model["conv.bias"]  # a new model, the old kept
    assert NoT(context(first_conv_key="")).refusal(["1"], {}) == (
        "not negates the first convolution's weights, and this model has none"
    )


def test_retrain_resets_to_a_copy_of_the_initial_model():
    ctx = context()
    method, model = Retrain(ctx), trained(ctx)
    state = method.begin(STEP, model)
    plan = method.plan(STEP, state, model, ["0", "2"])
    assert plan.clients == {}
    result = method.apply(STEP, state, model, plan, [])
    assert result.done and result.arrays.keys() == ctx.initial_arrays.keys()
    for name, value in ctx.initial_arrays.items():
        np.testing.assert_array_equal(result.arrays[name], value)
    result.arrays["conv.bias"][:] = 9.0  # the context's initial model is not the result
    assert not np.any(ctx.initial_arrays["conv.bias"] == 9.0)
    assert state == StepState()  # neither keeps anything during its step


def test_momentum_step_is_the_convex_pull_towards_the_degradation_model():
    model = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(3)}
    degradation = {"w": np.array([-1.0, 0.0], np.float32), "n": np.array(0)}
    moved = momentum_step(model, degradation, 0.95)
    np.testing.assert_allclose(moved["w"], [0.95 * 1 - 0.05, 0.95 * 2], rtol=1e-6)
    assert moved["n"] == 3  # integer arrays keep the model's values
    np.testing.assert_array_equal(momentum_step(model, degradation, 0.0)["w"], degradation["w"])


# ---------------------------------------------------------- phase configs
RUN = FederationConfig(
    num_partitions=5,
    num_server_rounds=30,
    unlearn_at_round=12,
    unlearn_clients="1,3",
    exclude_clients="4",
    method="puf-special",
    methods="federaser,pga",
    recovery_target_acc=0.5,
    out_dir="/tmp/out",
    seed=3,
)


def test_reference_config_trains_without_the_targets_for_unlearn_at_round_rounds():
    reference = reference_config(RUN)
    assert (reference.num_server_rounds, reference.unlearn_at_round) == (12, 0)
    assert reference.excluded == ("4", "1", "3") and reference.targets == ()
    assert (reference.recovery_target_acc, reference.out_dir) == (0.0, "")
    assert (reference.seed, reference.data_seed) == (3, -1)
    random = reference_config(RUN.replace(forget_scenario="random"))
    assert random.drop_forget_set and random.excluded == ("4",)  # everyone trains, less the set
    assert reference_config(RUN.replace(data_seed=7)).split_seed == 7  # the same data


def test_original_config_keeps_the_history_of_the_compared_methods_that_need_it():
    original = original_config(RUN, ["puf-special", "natural", "federaser", "pga"])
    assert (original.num_server_rounds, original.unlearn_at_round) == (12, 0)
    assert original.kept_methods == ("puf-special", "federaser", "pga")
    assert original.recovery_target_acc == 0.0 and original.out_dir == ""
    class_scenario = original_config(RUN.replace(forget_scenario="class"), ["federaser"])
    assert class_scenario.kept_methods == ("puf-special",)  # no federated method serves it


def test_cell_config_is_one_method_recovering_to_the_target_score():
    cell = cell_config(RUN, "pga", 0.875)
    assert (cell.method, cell.kept_methods, cell.recovery_target_acc) == ("pga", ("pga",), 0.875)
    assert (cell.num_server_rounds, cell.unlearn_at_round, cell.targets) == (30, 12, ("1", "3"))
    assert cell.out_dir == "" and cell.store == "memory"


# -------------------------------------------------------------- cost, table
def test_phase_cost_counts_the_rounds_from_the_first_asked_on():
    rounds = [
        RoundRecord(r, "train", ["0"], bytes_down=100 * r, bytes_up=10 * r, client_epochs=1.5)
        for r in range(1, 6)
    ]
    phase = PhaseRecord({}, rounds, [], wall_s=12.345)
    assert phase.cost() == {
        "rounds": 5,
        "client_epochs": 7.5,
        "bytes_up": 150,
        "bytes_down": 1500,
        "server_storage_bytes": 0,
        "wall_s": 12.35,
    }
    later = phase.cost(first_round=4)
    assert (later["rounds"], later["client_epochs"], later["bytes_up"]) == (2, 3.0, 90)
    assert later["bytes_down"] == 900


def row(method: str, test: float, forget: float, **extra) -> dict:
    cost = {
        "rounds": 3,
        "client_epochs": 12.0,
        "bytes_up": 2_500,
        "bytes_down": 1_200_000,
        "server_storage_bytes": 0,
        "wall_s": 4.0,
    }
    values = {"test_acc": test, "forget_acc": forget, "retain_acc": 0.9, "mia_yeom": 0.5}
    return {"method": method, "status": "ok", "cost": cost, **values, **extra}


def test_format_table_shows_each_rows_gap_to_retrain_and_its_costs():
    results = {
        "rows": [
            row("original", 0.95, 0.99),
            row("retrain", 0.90, 0.80, forget_size=120),
            row("puf-special", 0.85, 0.875, recovery_rounds=7),
            {"method": "pga", "status": "refused", "reason": "client 1 is offline"},
        ]
    }
    lines = format_table(results).splitlines()
    assert lines[0] == "forget set: client scenario, 120 examples"
    puf = next(line for line in lines if line.startswith("puf-special"))
    assert "0.850 (gap 0.050)" in puf and "0.875 (gap 0.075)" in puf
    columns = puf.split(")")[-1].split()  # after the last gap: rounds, epochs, up, down, ...
    assert columns[:2] == ["7", "12"]  # recovery rounds replace the phase's rounds
    assert columns[2:6] == ["2.5", "kB", "1.2", "MB"]
    original = next(line for line in lines if line.startswith("original"))
    assert "0.990 (gap 0.190)" in original
    assert "pga           refused: client 1 is offline" in lines
    assert any("--references K" in line for line in lines)  # one reference: no noise floor


@pytest.mark.parametrize("metric", ["test_acc", "forget_acc", "retain_acc", "mia_yeom"])
def test_the_reference_row_shows_values_without_gaps(metric):
    results = {"rows": [row("retrain", 0.90, 0.80), row("natural", 0.90, 0.80)]}
    table = format_table(results)
    retrain = next(line for line in table.splitlines() if line.startswith("retrain"))
    natural = next(line for line in table.splitlines() if line.startswith("natural"))
    assert "gap" not in retrain and natural.count("(gap 0.000)") == 4
    assert metric in table.splitlines()[1]
