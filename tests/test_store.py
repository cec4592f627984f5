"""The pseudo-gradient store keeps only the latest entry per client."""

import numpy as np

from fedforget.store import InMemoryPseudoGradientStore, PseudoGradientStore, StoredPseudoGradient


def entry(value, round_):
    return StoredPseudoGradient(
        {"w": np.full(4, value, np.float32)}, num_examples=5, server_round=round_
    )


def test_keeps_only_the_latest_and_erases():
    store = InMemoryPseudoGradientStore()
    assert isinstance(store, PseudoGradientStore)
    store.put("3", entry(1.0, 1))
    store.put("3", entry(2.0, 2))
    store.put("10", entry(5.0, 2))
    latest = store.latest("3")
    assert latest is not None and latest.server_round == 2
    np.testing.assert_array_equal(latest.pseudo_gradient["w"], np.full(4, 2.0))
    assert store.nbytes() == 2 * 4 * 4  # two clients, one float32[4] each
    store.erase("3")
    assert store.latest("3") is None
    assert store.client_ids() == ["10"]


def test_put_keeps_a_private_copy():
    store = InMemoryPseudoGradientStore()
    arrays = {"w": np.zeros(2, np.float32)}
    store.put("1", StoredPseudoGradient(arrays, 1, 1))
    arrays["w"][:] = 9.0
    np.testing.assert_array_equal(store.latest("1").pseudo_gradient["w"], [0.0, 0.0])
