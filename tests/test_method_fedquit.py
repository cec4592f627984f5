"""FedQUIT (Zhao et al.): the virtual teacher, and one real Flower simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import TINY, simulate_strategy

from fedforget.federated.federation import method_context
from fedforget.methods.fedquit import FedQUIT, virtual_teacher_logits
from fedforget.task import client_data, model_with
from fedforget.training import per_example_metrics

CONFIG = TINY.replace(method="fedquit")


class RecordingFedQUIT(FedQUIT):
    """The real FedQUIT, keeping the replies its step received."""

    def __init__(self, context):
        super().__init__(context)
        self.updates = []

    def apply(self, step, state, global_arrays, plan, updates):
        self.updates.extend(updates)
        return super().apply(step, state, global_arrays, plan, updates)


def test_teacher_puts_the_minimum_logit_on_the_true_class():
    """The true class gets its row's minimum; every other logit is unchanged."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 4.0, -2.5], [1.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1, 1])
    original = logits.clone()
    teacher = virtual_teacher_logits(logits, labels)
    expected = torch.tensor([[-1.0, -1.0, 0.5], [0.3, -2.5, -2.5], [1.0, 1.0, 3.0]])
    torch.testing.assert_close(teacher, expected)
    torch.testing.assert_close(logits, original)  # the input is left as it was


def test_teacher_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    teacher = virtual_teacher_logits(logits, labels)
    rows = torch.arange(64)
    torch.testing.assert_close(teacher[rows, labels], logits.min(dim=1).values)
    others = torch.ones_like(logits, dtype=torch.bool)
    others[rows, labels] = False
    torch.testing.assert_close(teacher[others], logits[others])


@pytest.fixture(scope="module")
def run():
    """Forget client 1 after round 2 with FedQUIT (TINY: digits, 3 clients, 4 rounds)."""
    method = RecordingFedQUIT(method_context(CONFIG))
    return simulate_strategy(CONFIG, methods={"fedquit": method}), method


@pytest.mark.ray
def test_only_the_target_distils(run):
    record, _ = run
    unlearn = record.strategy.rounds[2]
    assert unlearn.phase == "unlearn" and unlearn.method == "fedquit"
    assert unlearn.participants == ["1"] and unlearn.contributors == ["1"]
    assert unlearn.actions == {"1": "fedquit"}
    assert record.strategy.requests.get("config-round-2").status == "applied"
    assert record.strategy.rounds[3].participants == ["0", "2"]


@pytest.mark.ray
def test_new_global_model_is_the_targets_student_and_forgets(run):
    record, method = run
    before, after = record.models[2], record.models[3]
    for name, value in record.strategy.events[0].model_before.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    (update,) = method.updates
    assert update.client_id == "1"
    for name, value in update.arrays.items():
        np.testing.assert_allclose(after[name], value, atol=1e-6, err_msg=name)
    assert record.strategy.events[0].update_norm > 0
    target = client_data(CONFIG, 1)
    metrics_before = per_example_metrics(model_with(CONFIG, before), target.x, target.y)
    metrics_after = per_example_metrics(model_with(CONFIG, after), target.x, target.y)
    assert metrics_after["correct"].mean() <= metrics_before["correct"].mean()
    # the teacher hides the true class: its probability on the target's data went down
    assert metrics_after["loss"].mean() > metrics_before["loss"].mean()
