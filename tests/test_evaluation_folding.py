"""Client evaluation folded into the next round's train messages (a real Ray simulation)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message

from fedforget.arrays import to_arrays, to_record
from fedforget.config import FederationConfig
from fedforget.federated.federation import build_strategy
from fedforget.grid import PromptGrid, message_round
from fedforget.protocol import EVALUATE_REQUEST
from fedforget.simulation import simulate_app
from fedforget.task import model_arrays, new_model

pytestmark = pytest.mark.ray

CONFIG = FederationConfig(
    num_partitions=3,
    local_epochs=1,
    num_server_rounds=3,
    unlearn_at_round=0,
    fraction_evaluate=1.0,
    min_available_clients=3,
    progress=False,
)


class CountingGrid(PromptGrid):
    """The simulation's grid, remembering (node, message round, type, folded) of every push."""

    def __init__(self, grid: PromptGrid) -> None:
        super().__init__(grid.grid, grid.reply_poll_interval)
        self.pushed: list[tuple[int, int, str, bool]] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for m in messages:
            folded = EVALUATE_REQUEST in m.content.config_records
            self.pushed.append(
                (m.metadata.dst_node_id, message_round(m), m.metadata.message_type, folded)
            )
        return super().push_messages(messages)


def run_both(grid: PromptGrid) -> dict[bool, tuple]:
    """The same federation with evaluation messages of its own, then folded; one grid each."""
    outcome = {}
    for fold in (False, True):
        counting = CountingGrid(grid)
        strategy = build_strategy(CONFIG)
        strategy.fold_evaluation = fold
        result = strategy.start(
            counting,
            to_record(model_arrays(new_model(CONFIG))),
            CONFIG.num_server_rounds,
            600.0,
            ConfigRecord(CONFIG.to_run_config()),
            ConfigRecord(CONFIG.to_run_config()),
        )
        outcome[fold] = (counting.pushed, result)
    return outcome


@pytest.fixture(scope="module")
def runs() -> dict[bool, tuple]:
    return simulate_app(run_both, CONFIG.num_partitions)


def messages_per_node_and_round(pushed) -> Counter:
    return Counter((node, rnd) for node, rnd, kind, _ in pushed if kind != "query")


def test_folded_rounds_send_each_node_one_message(runs):
    """Rounds 1-2: one message per node; round 3 adds the last evaluation. Unfolded: two each."""
    unfolded, folded = runs[False][0], runs[True][0]
    nodes = {node for node, *_ in folded}
    assert len(nodes) == 3
    assert messages_per_node_and_round(unfolded) == Counter(
        {(n, r): 2 for n in nodes for r in (1, 2, 3)}
    )
    assert messages_per_node_and_round(folded) == Counter(
        {**{(n, r): 1 for n in nodes for r in (1, 2)}, **{(n, 3): 2 for n in nodes}}
    )
    # the train messages of rounds 2 and 3 carry the evaluation; round 1's has none to carry
    assert sorted((r, f) for _, r, kind, f in folded if kind == "train") == [
        *[(1, False)] * 3,
        *[(2, True)] * 3,
        *[(3, True)] * 3,
    ]


def test_folded_evaluation_reports_the_same_metrics_for_the_same_rounds(runs):
    """Same model, same data: the metrics of every round agree; training is unchanged."""
    unfolded, folded = runs[False][1], runs[True][1]
    assert sorted(folded.evaluate_metrics_clientapp) == [1, 2, 3]
    assert sorted(unfolded.evaluate_metrics_clientapp) == [1, 2, 3]
    for rnd, metrics in unfolded.evaluate_metrics_clientapp.items():
        other = folded.evaluate_metrics_clientapp[rnd]
        assert set(other) == set(metrics) == {"eval-loss", "eval-acc"}
        for key, value in metrics.items():
            assert other[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (rnd, key)
    losses = [unfolded.evaluate_metrics_clientapp[r]["eval-loss"] for r in (1, 2, 3)]
    assert losses[2] < losses[0]  # real evaluations of models that learn
    final, reference = to_arrays(folded.arrays), to_arrays(unfolded.arrays)
    for name, value in reference.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)
