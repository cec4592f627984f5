"""The pseudo-gradient stores keep only the latest entry per client; the disk store survives."""

import numpy as np
import pytest

from fedforget.state.disk_store import DiskPseudoGradientStore
from fedforget.state.store import (
    InMemoryPseudoGradientStore,
    PseudoGradientStore,
    StoredEntryError,
    StoredPseudoGradient,
)


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


# ------------------------------------------------------------------ disk store
def update(seed, round_=1, examples=7):
    rng = np.random.default_rng(seed)
    return StoredPseudoGradient(
        {
            "conv.weight": rng.normal(0, 0.01, (4, 1, 3, 3)).astype(np.float32),
            "conv.bias": rng.normal(0, 0.01, 4).astype(np.float32),
            "fc.weight": rng.normal(0, 0.01, (3, 4)).astype(np.float32),
        },
        num_examples=examples,
        server_round=round_,
    )


def files(directory):
    return sorted(p.name for p in directory.iterdir())


def assert_same(actual, expected):
    assert actual.num_examples == expected.num_examples
    assert actual.server_round == expected.server_round
    assert actual.pseudo_gradient.keys() == expected.pseudo_gradient.keys()
    for name, value in expected.pseudo_gradient.items():
        assert actual.pseudo_gradient[name].dtype == value.dtype
        np.testing.assert_array_equal(actual.pseudo_gradient[name], value)


def test_disk_store_keeps_one_file_per_client_and_survives_a_reopen(tmp_path):
    """Each put replaces the client's file; a new store on the folder reads the same entries."""
    store = DiskPseudoGradientStore(tmp_path)
    assert isinstance(store, PseudoGradientStore)
    store.put("3", update(1, round_=1))
    store.put("3", update(2, round_=2))
    store.put("client/x", update(3, round_=2))  # any id: the file name is percent-encoded
    assert files(tmp_path) == ["3.r2.safetensors", "client%2Fx.r2.safetensors"]
    assert store.nbytes() == 2 * (36 + 4 + 12) * 4

    reopened = DiskPseudoGradientStore(tmp_path)

    assert reopened.client_ids() == ["3", "client/x"]
    assert_same(reopened.latest("3"), update(2, round_=2))
    assert_same(reopened.latest("client/x"), update(3, round_=2))
    assert reopened.latest("7") is None
    assert reopened.nbytes() > 0


def test_disk_store_erase_deletes_the_file(tmp_path):
    store = DiskPseudoGradientStore(tmp_path)
    store.put("1", update(1))
    store.put("2", update(2))

    store.erase("1")

    assert files(tmp_path) == ["2.r1.safetensors"]
    assert store.latest("1") is None and store.client_ids() == ["2"]
    assert DiskPseudoGradientStore(tmp_path).client_ids() == ["2"]


def test_float16_store_halves_the_bytes_and_returns_float32(tmp_path):
    """store-dtype float16: half the bytes on disk and in memory, errors of float16's rounding."""
    exact = update(5)
    for store in (
        DiskPseudoGradientStore(tmp_path, "float16"),
        InMemoryPseudoGradientStore("float16"),
    ):
        store.put("1", exact)
        half = store.latest("1")
        assert store.nbytes() == (36 + 4 + 12) * 2
        for name, value in exact.pseudo_gradient.items():
            assert half.pseudo_gradient[name].dtype == np.float32
            # float16 keeps 11 significant bits: relative error <= 2**-11 (normal range)
            np.testing.assert_allclose(half.pseudo_gradient[name], value, rtol=2**-11, atol=1e-7)


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_disk_store_refuses_a_damaged_file_with_a_clear_error(tmp_path, damage):
    """A truncated or altered file is never used: latest raises, naming the client and file."""
    store = DiskPseudoGradientStore(tmp_path)
    store.put("1", update(1))
    store.put("2", update(2))
    path = tmp_path / "1.r1.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(data[: len(data) - 10]))
    else:
        data[-5] ^= 0xFF  # a flipped byte in the arrays: the header still parses
        path.write_bytes(bytes(data))

    for reader in (store, DiskPseudoGradientStore(tmp_path)):  # also after a reopen
        with pytest.raises(
            StoredEntryError, match=r"client 1 .*1\.r1\.safetensors.*cannot be used"
        ):
            reader.latest("1")
        assert_same(reader.latest("2"), update(2))  # the others are unaffected
    # the client's next training round replaces the damaged file
    store.put("1", update(3, round_=2))
    assert_same(store.latest("1"), update(3, round_=2))
    assert files(tmp_path) == ["1.r2.safetensors", "2.r1.safetensors"]


def test_puf_refuses_a_request_whose_stored_update_is_damaged(tmp_path):
    """PUF refuses with the store's reason (no crash); a step that meets it fails cleanly."""
    from fedforget.methods.base import MethodContext, StepFailed, UnlearningStep
    from fedforget.methods.puf import PufSpecial

    store = DiskPseudoGradientStore(tmp_path)
    model = {name: np.zeros_like(v) for name, v in update(0).pseudo_gradient.items()}
    context = MethodContext(
        model, frozenset(), "conv.weight", ("fc.weight",), "classification", 1, 0, lambda s: model
    )
    puf = PufSpecial(context, store)
    puf.observe(1, model, [])
    store.put("1", update(1))
    (tmp_path / "1.r1.safetensors").write_bytes(b"not a safetensors file")
    settings = puf.run_settings

    reason = puf.refusal(["1"], settings)

    assert "client 1" in reason and "cannot be used" in reason and "puf.source='fresh'" in reason
    step = UnlearningStep((), "puf-special", ("1",), settings, first_round=2)
    with pytest.raises(StepFailed, match="cannot be used"):
        state = puf.begin(step, model)
        puf.apply(step, state, model, puf.plan(step, state, model, []), [])


def test_a_pinned_file_outlives_its_replacement_until_the_next_checkpoint(tmp_path):
    """What the last checkpoint names stays on disk until a newer checkpoint is durable."""
    store = DiskPseudoGradientStore(tmp_path)
    store.put("1", update(1, round_=1))
    store.put("2", update(2, round_=1))
    saved = store.state_dict()
    store.state_saved()  # the checkpoint holding `saved` is durable: its files are pinned

    store.put("1", update(3, round_=2))
    store.erase("2")

    assert files(tmp_path) == ["1.r1.safetensors", "1.r2.safetensors", "2.r1.safetensors"]
    assert store.client_ids() == ["1"]
    # a crash now: the restarted run goes back to the checkpoint, whose files are all there
    restarted = DiskPseudoGradientStore(tmp_path)
    restarted.load_state_dict(saved)
    assert files(tmp_path) == ["1.r1.safetensors", "2.r1.safetensors"]
    assert_same(restarted.latest("1"), update(1, round_=1))
    assert_same(restarted.latest("2"), update(2, round_=1))
    # no crash: the next checkpoint is durable, and the erased client's file is gone
    store.put("1", update(3, round_=2))
    store.erase("2")
    store.state_saved()
    assert files(tmp_path) == ["1.r2.safetensors"]


def test_float16_keeps_an_array_it_cannot_hold_in_its_own_dtype():
    """A value beyond float16's range would become Inf: that array stays float32."""
    store = InMemoryPseudoGradientStore("float16")
    big = {"w": np.array([1e6, 1.0], np.float32), "b": np.array([0.5], np.float32)}
    store.put("1", StoredPseudoGradient(big, 1, 1))
    kept = store.latest("1").pseudo_gradient
    np.testing.assert_array_equal(kept["w"], big["w"])  # exact: never cast
    assert store.nbytes() == 2 * 4 + 1 * 2
