"""The unlearning strategy with PUF in real Flower simulations (Ray backend, 3-4 clients)."""

from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from harness import TINY, simulate_strategy

from clients import client_app as real
from fedforget.arrays import to_record
from fedforget.methods.puf import Contribution, puf_update
from fedforget.requests import UnlearningRequest
from fedforget.task import model_arrays, model_with, train_client

pytestmark = pytest.mark.ray

# Ray workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fedavg(before, entries):
    total = sum(e.num_examples for e in entries.values())
    return {
        name: value
        + sum(e.num_examples / total * e.pseudo_gradient[name] for e in entries.values())
        for name, value in before.items()
    }


def assert_arrays_close(actual, expected, atol=1e-6):
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=atol, rtol=0, err_msg=name)


@pytest.fixture(scope="module")
def special_stored():
    """Forget client 1 after round 2 (PUF-Special, stored), plus two requests to refuse."""
    refused = [
        UnlearningRequest(("7",), not_before_round=1, request_id="unknown-client"),
        UnlearningRequest(("0",), not_before_round=1, request_id="nothing-stored-yet"),
    ]
    return simulate_strategy(TINY, refused)


def test_refused_requests_say_why_and_change_nothing(special_stored):
    queue = special_stored.strategy.requests
    unknown, early = queue.get("unknown-client"), queue.get("nothing-stored-yet")
    assert unknown.status == "rejected" and "unknown client 7" in unknown.reason
    assert early.status == "rejected" and "no stored pseudo-gradient yet" in early.reason
    # round 1 was a plain FedAvg round of all three clients
    assert special_stored.strategy.rounds[0].participants == ["0", "1", "2"]
    round1 = special_stored.store.put_in_round(1)
    assert sorted(round1) == ["0", "1", "2"]
    assert_arrays_close(special_stored.models[1], fedavg(special_stored.models[0], round1))


def test_special_stored_moves_the_model_by_exactly_the_puf_update(special_stored):
    strategy, models = special_stored.strategy, special_stored.models
    assert strategy.requests.get("config-round-2").status == "applied"
    assert strategy.requests.get("config-round-2").applied_round == 3
    assert strategy.rounds[2].phase == "unlearn"
    assert strategy.rounds[2].participants == []  # stored: the target need not be online
    delta = special_stored.store.put_in_round(2)["1"].pseudo_gradient
    expected = {name: models[2][name] - 2.0 * delta[name] for name in models[2]}
    assert_arrays_close(models[3], expected)
    assert strategy.events[0].update_norm == pytest.approx(
        2.0 * np.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in delta.values())),
        rel=1e-5,
    )


def test_target_is_erased_and_never_contributes_again(special_stored):
    strategy, store = special_stored.strategy, special_stored.store
    assert strategy.directory.forgotten == {"1"}
    assert store.latest("1") is None
    assert strategy.rounds[3].phase == "recover"
    assert strategy.rounds[3].participants == ["0", "2"]
    assert sorted(store.put_in_round(4)) == ["0", "2"]
    assert store.client_ids() == ["0", "2"]
    assert_arrays_close(
        special_stored.models[4], fedavg(special_stored.models[3], store.put_in_round(4))
    )


def test_regular_fresh_applies_concurrent_requests_in_one_step():
    """Two requests due at the same boundary: one PUF-Regular step with fresh updates."""
    config = TINY.replace(
        num_partitions=4,
        num_server_rounds=3,
        unlearn_at_round=0,
        method="puf-regular",
        method_settings=(("puf.source", "fresh"),),
    )
    requests = [
        UnlearningRequest(("0",), not_before_round=3, request_id="a"),
        UnlearningRequest(("2",), not_before_round=3, request_id="b"),
    ]
    record = simulate_strategy(config, requests)
    strategy = record.strategy
    assert len(strategy.events) == 1
    event = strategy.events[0]
    assert event.clients == ("0", "2") and set(event.request_ids) == {"a", "b"}
    assert event.server_round == 3 and event.method == "puf-regular"
    assert event.settings["source"] == "fresh"
    assert strategy.rounds[2].participants == ["0", "1", "2", "3"]
    # remaining clients' updates of round 3 were stored; the targets' fresh ones were not
    remaining = record.store.put_in_round(3)
    assert sorted(remaining) == ["1", "3"]
    # recompute the targets' fresh updates: local training is seeded, and with one
    # thread, as in the Ray actors, it repeats the actors' arithmetic exactly
    w2 = record.models[2]
    targets = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cid in ("0", "2"):
            model = model_with(config, w2)
            _, n = train_client(config, int(cid), model, server_round=3)
            trained = model_arrays(model)
            targets[cid] = Contribution({k: trained[k] - w2[k] for k in w2}, n)
    finally:
        torch.set_num_threads(threads)
    expected = puf_update(
        w2,
        targets,
        mode="regular",
        eta=20.0,
        remaining={
            cid: Contribution(e.pseudo_gradient, e.num_examples) for cid, e in remaining.items()
        },
    )
    assert_arrays_close(record.models[3], expected, atol=1e-5)
    # and it is not what plain FedAvg of everyone would have given
    assert (
        np.abs(
            record.models[3]["classifier.3.bias"] - fedavg(w2, remaining)["classifier.3.bias"]
        ).max()
        > 1e-3
    )


bad_app = ClientApp()


@bad_app.query()
def bad_query(message: Message, context: Context) -> Message:
    return real.query(message, context)


@bad_app.train()
def bad_train(message: Message, context: Context) -> Message:
    """Client 1 always sends NaN; client 2 sends a wrongly shaped array in round 2."""
    reply = real.train(message, context)
    partition = int(context.node_config["partition-id"])
    server_round = int(message.content["config"]["server-round"])
    arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    if partition == 1:
        arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
    if partition == 2 and server_round == 2:
        arrays["classifier.3.bias"] = np.zeros(3, np.float32)
    reply.content["arrays"] = to_record(arrays)
    return reply


def test_invalid_replies_are_neither_aggregated_nor_stored(caplog):
    config = TINY.replace(num_server_rounds=2, unlearn_at_round=0)
    with caplog.at_level("WARNING", logger="fedforget.federated.replies"):
        record = simulate_strategy(config, client_app=bad_app)
    store, models = record.store, record.models
    assert [r.rejected_replies for r in record.strategy.rounds] == [1, 2]
    assert sorted(store.put_in_round(1)) == ["0", "2"]
    assert sorted(store.put_in_round(2)) == ["0"]
    assert_arrays_close(models[1], fedavg(models[0], store.put_in_round(1)))
    assert_arrays_close(models[2], fedavg(models[1], store.put_in_round(2)))
    assert all(np.isfinite(v).all() for v in models[2].values())
    messages = caplog.text
    assert "contains NaN or Inf" in messages and "has shape (3,)" in messages
