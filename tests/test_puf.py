"""PUF's pure update rule against hand-computed values."""

import numpy as np
import pytest

from fedforget.arrays import update_norm
from fedforget.methods.puf import Contribution, puf_update

W = {
    "conv.weight": np.array([1.0, 2.0, 3.0], dtype=np.float32),
    "bn.running_var": np.array([1.0, 1.0], dtype=np.float32),
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
}


def contribution(weight_delta, var_delta, n):
    return Contribution(
        {
            "conv.weight": np.array(weight_delta, dtype=np.float32),
            "bn.running_var": np.array(var_delta, dtype=np.float32),
            "bn.num_batches_tracked": np.array(3, dtype=np.int64),
        },
        n,
    )


def test_special_one_target_is_w_minus_eta_delta():
    """One target, PUF-Special: w - 2 * Delta."""
    new = puf_update(
        W, {"a": contribution([0.5, -1.0, 0.25], [0.4, 0.4], 10)}, mode="special", eta=2.0
    )
    np.testing.assert_allclose(new["conv.weight"], [0.0, 4.0, 2.5])
    assert new["conv.weight"].dtype == np.float32


def test_special_several_targets_weighted_by_examples():
    """Two targets with 1 and 3 examples: weights 1/4 and 3/4."""
    targets = {
        "a": contribution([4.0, 0.0, 0.0], [0, 0], 1),
        "b": contribution([0.0, 4.0, 8.0], [0, 0], 3),
    }
    new = puf_update(W, targets, mode="special", eta=2.0)
    # 1 - 2*(0.25*4) = -1 ; 2 - 2*(0.75*4) = -4 ; 3 - 2*(0.75*8) = -9
    np.testing.assert_allclose(new["conv.weight"], [-1.0, -4.0, -9.0])


def test_regular_folds_negated_targets_into_fedavg():
    """N = 2 + 6 + 2; remaining step + (-eta * n_u / N) * Delta_u."""
    remaining = {
        "r1": contribution([1.0, 1.0, 1.0], [0.5, 0.5], 2),
        "r2": contribution([0.0, 2.0, 0.0], [1.5, 1.5], 6),
    }
    targets = {"u": contribution([1.0, 0.0, -1.0], [9.0, 9.0], 2)}
    new = puf_update(W, targets, mode="regular", eta=20.0, remaining=remaining)
    # remaining: 0.2*[1,1,1] + 0.6*[0,2,0] = [0.2, 1.4, 0.2]; target: -20*0.2*[1,0,-1] = [-4, 0, 4]
    np.testing.assert_allclose(
        new["conv.weight"], [1.0 + 0.2 - 4.0, 2.0 + 1.4, 3.0 + 0.2 + 4.0], rtol=1e-6
    )


def test_regular_several_targets():
    """Two targets and one remaining client: N = 1 + 1 + 2."""
    remaining = {"r": contribution([2.0, 2.0, 2.0], [0, 0], 2)}
    targets = {
        "u1": contribution([1.0, 0.0, 0.0], [0, 0], 1),
        "u2": contribution([0.0, 1.0, 0.0], [0, 0], 1),
    }
    new = puf_update(W, targets, mode="regular", eta=4.0, remaining=remaining)
    # remaining 0.5*2 = 1 each; targets -4*0.25 on entries 0 and 1
    np.testing.assert_allclose(new["conv.weight"], [1.0 + 1.0 - 1.0, 2.0 + 1.0 - 1.0, 3.0 + 1.0])


def test_integer_buffers_untouched_and_statistics_never_negated():
    """num_batches_tracked keeps w's value; running stats: special keeps w, regular averages S."""
    targets = {"u": contribution([0, 0, 0], [5.0, 5.0], 4)}
    special = puf_update(W, targets, mode="special", eta=2.0, statistic_keys={"bn.running_var"})
    np.testing.assert_array_equal(special["bn.running_var"], [1.0, 1.0])
    assert special["bn.num_batches_tracked"] == 7
    assert special["bn.num_batches_tracked"].dtype == np.int64
    remaining = {
        "r1": contribution([0, 0, 0], [1.0, 1.0], 1),
        "r2": contribution([0, 0, 0], [3.0, 3.0], 3),
    }
    regular = puf_update(
        W, targets, mode="regular", eta=20.0, remaining=remaining, statistic_keys={"bn.running_var"}
    )
    # FedAvg of the remaining only: 1 + 0.25*1 + 0.75*3 = 3.5; the target's +5 never enters
    np.testing.assert_allclose(regular["bn.running_var"], [3.5, 3.5])
    # without statistic_keys the variance would be negated: 1 - 2*5 < 0
    naive = puf_update(W, targets, mode="special", eta=2.0)
    assert (naive["bn.running_var"] < 0).all()


def test_inputs_are_not_modified():
    """The function is pure."""
    before = {k: v.copy() for k, v in W.items()}
    puf_update(W, {"a": contribution([1.0, 1.0, 1.0], [1, 1], 1)}, mode="special", eta=2.0)
    for key, value in before.items():
        np.testing.assert_array_equal(W[key], value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "bogus", "eta": 2.0}, "mode must be one of"),
        ({"mode": "special", "eta": 0.0}, "eta must be > 0"),
        (
            {"mode": "special", "eta": 2.0, "remaining": {"r": contribution([0, 0, 0], [0, 0], 1)}},
            "only with mode='regular'",
        ),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        puf_update(W, {"a": contribution([1, 1, 1], [0, 0], 1)}, **kwargs)


def test_wrong_shape_and_empty_targets_raise():
    bad = Contribution(
        {"conv.weight": np.zeros(4, np.float32), "bn.running_var": np.zeros(2, np.float32)}, 1
    )
    with pytest.raises(ValueError, match="shape"):
        puf_update(W, {"a": bad}, mode="special", eta=2.0)
    with pytest.raises(ValueError, match="targets is empty"):
        puf_update(W, {}, mode="special", eta=2.0)
    with pytest.raises(ValueError, match="examples"):
        puf_update(W, {"a": contribution([1, 1, 1], [0, 0], 0)}, mode="special", eta=2.0)


def test_update_norm_over_float_arrays():
    after = dict(W, **{"conv.weight": np.array([4.0, 6.0, 3.0], np.float32)})
    assert update_norm(W, after) == pytest.approx(5.0)
