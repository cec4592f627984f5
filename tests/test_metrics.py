"""The metric registry: each metric against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedforget.data import FederatedData, SplitDataset
from fedforget.metrics import (
    METRICS,
    MetricContext,
    MetricOptions,
    RecoveryHistory,
    ShadowModels,
    Splits,
    UnlearningMetrics,
    average_gap,
    divergence_floor,
    entropy,
    evaluate_metrics,
    evaluate_unlearning,
    headline_metrics,
    js_divergence,
    kl_divergence,
    logit_confidence,
    metric_info,
    metrics_metadata,
    mia_nn_score,
    modified_entropy,
    nearest_classes,
    recovery_rounds,
    relearn_time,
    score_after_budget,
    svc_features,
    svc_mia,
    ulira_accuracy,
    ulira_cross_validated,
    yeom_mia,
)
from fedforget.metrics.base import TASKS
from fedforget.training import eval_batch_size

LN2 = math.log(2)


# ------------------------------------------------------------------ helpers
def linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    """A fixed linear classifier (no training needed)."""
    w = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def two_class_probs(p1: np.ndarray) -> np.ndarray:
    return np.stack([1 - p1, p1], axis=1)


def blob_splits(scenario: str = "client", forget_class: int | None = None) -> Splits:
    """Three 2-D Gaussian blobs (classes 0, 1, 2), 60 forget / 90 retain / 60 test examples."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 3
        return centres[y] + torch.randn(n, 2, generator=gen), y

    (fx, fy), (rx, ry), (tx, ty) = draw(60), draw(90), draw(60)
    return Splits(
        fx, fy, rx, ry, tx, ty, num_classes=3, scenario=scenario, forget_class=forget_class
    )


# --------------------------------------------------------- features, Yeom
def test_modified_entropy_matches_song_mittal_by_hand():
    """Mentr(p, y) = -(1-p_y) ln p_y - sum_{i!=y} p_i ln(1-p_i) on p = (0.7, 0.2, 0.1)."""
    # Prepare
    p = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]])
    # Execute
    values = modified_entropy(p, np.array([0, 1]))
    # Assert: y=0: 0.3*0.356675 + 0.2*0.223144 + 0.1*0.105361 = 0.162167
    #         y=1: 0.8*1.609438 + 0.7*1.203973 + 0.1*0.105361 = 2.140867
    assert values == pytest.approx([0.1621672, 2.1408673], abs=1e-6)
    assert entropy(p)[0] == pytest.approx(0.8018186, abs=1e-6)


def test_svc_features_shapes_and_values():
    """Correctness, confidence, entropy are columns; prob is the vector itself."""
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    y = np.array([0, 1])
    assert svc_features(p, y, "correctness").ravel().tolist() == [1.0, 0.0]
    assert svc_features(p, y, "confidence").ravel().tolist() == [0.7, 0.3]
    assert svc_features(p, y, "prob").shape == (2, 3)
    assert svc_features(p, y, "m_entropy").shape == (2, 1)


def test_yeom_counts_forget_losses_at_or_below_mean_retain_loss():
    """tau = mean(0.1, 0.3) = 0.2: forget losses 0.1, 0.2 count, 0.5 does not."""
    assert yeom_mia(np.array([0.1, 0.2, 0.5]), np.array([0.1, 0.3])) == pytest.approx(2 / 3)


# ------------------------------------------------------------------ SVC-MIA
def test_svc_mia_separable_members_all_forget_predicted_member():
    """Members at confidence ~0.95, non-members ~0.15: forget like members -> 1, like test -> 0."""
    # Prepare: 200 members vs 50 non-members (balanced by subsampling to 50 each)
    rng = np.random.default_rng(0)
    labels_in, labels_out = np.ones(200, dtype=np.int64), np.ones(50, dtype=np.int64)
    members = svc_features(two_class_probs(rng.uniform(0.9, 1.0, 200)), labels_in, "confidence")
    non_members = svc_features(two_class_probs(rng.uniform(0.0, 0.3, 50)), labels_out, "confidence")
    forget_like_members = svc_features(
        two_class_probs(rng.uniform(0.92, 0.98, 30)), np.ones(30, dtype=np.int64), "confidence"
    )
    forget_like_test = svc_features(
        two_class_probs(rng.uniform(0.05, 0.25, 30)), np.ones(30, dtype=np.int64), "confidence"
    )
    # Execute / Assert
    assert svc_mia(members, non_members, forget_like_members, seed=0) == 1.0
    assert svc_mia(members, non_members, forget_like_test, seed=0) == 0.0


def test_svc_mia_empty_set_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        svc_mia(np.zeros((0, 1)), np.ones((3, 1)), np.ones((3, 1)))


# ------------------------------------------------------------------- MIA-NN
def _mia_nn_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forget class 0 of 4: original sends the rest to class 1, retrained to class 2."""
    rng = np.random.default_rng(1)
    original = rng.dirichlet(300 * np.array([0.9, 0.08, 0.015, 0.005]), size=40)
    retrained = rng.dirichlet(300 * np.array([0.001, 0.1, 0.8, 0.099]), size=40)
    # "hides" class 0: p_0 pushed down, the other classes keep the original's proportions
    hidden = original.copy()
    hidden[:, 1:] *= 0.99 / hidden[:, 1:].sum(axis=1, keepdims=True)
    hidden[:, 0] = 0.01
    return original, retrained, hidden


def test_nearest_classes_from_original_mean_probabilities():
    """Mean probabilities (0.9, 0.03, 0.06, 0.01) on class 0: neighbours 2 then 1."""
    probs = np.array([[0.9, 0.02, 0.07, 0.01], [0.9, 0.04, 0.05, 0.01]])
    assert nearest_classes(probs, 0, 2) == (2, 1)
    assert nearest_classes(probs, 0, 9) == (2, 1, 3)


def test_mia_nn_catches_a_model_that_only_hides_the_class():
    """Hidden class -> all held-out examples look 'original'; retrained outputs -> none do."""
    original, retrained, hidden = _mia_nn_case()
    assert mia_nn_score(original, retrained, hidden, 0, neighbours=2) == 1.0
    assert mia_nn_score(original, retrained, retrained, 0, neighbours=2) == 0.0
    # a confidence attack would call the hidden model's forget examples non-members:
    assert hidden[:, 0].max() == pytest.approx(0.01)


# ------------------------------------------------------------------- U-LiRA
def test_logit_confidence_is_log_odds_of_the_label():
    """Logits (2, 0, 0), y = 0: p = e^2 / (e^2 + 2), log(p / (1 - p)) = 2 - ln 2."""
    value = logit_confidence(np.array([[2.0, 0.0, 0.0]]), np.array([0]))
    assert value[0] == pytest.approx(2 - LN2, abs=1e-12)


def test_ulira_well_separated_distributions_accuracy_near_one():
    """OUT ~ N(0, 1), unlearned ~ N(6, 1): the boundary sits near 3, error ~0.1 %."""
    rng = np.random.default_rng(0)
    k, n = 8, 200
    accuracy = ulira_accuracy(
        rng.normal(0, 1, (k, n)),
        rng.normal(6, 1, (k, n)),
        rng.normal(0, 1, (2, n)),
        rng.normal(6, 1, (2, n)),
    )
    assert accuracy >= 0.98
    assert ulira_cross_validated(rng.normal(0, 1, (k, n)), rng.normal(6, 1, (k, n))) >= 0.98


def test_ulira_identical_distributions_accuracy_near_half():
    """Same N(0, 1) for both: each of the 2*4*500 decisions is right with probability 1/2.

    Standard error 0.5 / sqrt(4000) = 0.0079; 0.04 is five of them.
    """
    rng = np.random.default_rng(0)
    k, m, n = 16, 4, 500
    accuracy = ulira_accuracy(
        rng.normal(0, 1, (k, n)),
        rng.normal(0, 1, (k, n)),
        rng.normal(0, 1, (m, n)),
        rng.normal(0, 1, (m, n)),
        variance="global",
    )
    assert abs(accuracy - 0.5) < 0.04


def test_ulira_ties_count_half():
    """Identical shadow scores give identical Gaussians: every decision is a tie, accuracy 0.5."""
    scores = np.tile(np.linspace(-2, 2, 5), (3, 1))
    assert ulira_accuracy(scores, scores, scores[:1], scores[:1]) == 0.5


# --------------------------------------------------------------- KL and JS
def test_kl_and_js_of_known_distributions():
    """KL(p||p) = 0; KL((.5,.5)||(.25,.75)) = .5 ln 2 + .5 ln(2/3); JS of disjoint = ln 2."""
    p = np.array([[0.5, 0.5]])
    assert kl_divergence(p, p)[0] == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(p, np.array([[0.25, 0.75]]))[0] == pytest.approx(
        0.5 * LN2 + 0.5 * math.log(2 / 3), abs=1e-12
    )
    assert js_divergence(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(LN2)
    assert js_divergence(p, p)[0] == pytest.approx(0.0, abs=1e-12)


def test_divergence_floor_averages_every_ordered_pair():
    """A = B = (1, 0), C = (0, 1): JS over the 6 ordered pairs = 4 ln 2 / 6."""
    a, c = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert divergence_floor([a, a, c], "js") == pytest.approx(2 / 3 * LN2)
    with pytest.raises(ValueError, match=">= 2"):
        divergence_floor([a])


# ------------------------------------------------------ Average Gap, recovery
def test_average_gap_arithmetic():
    """|0.2-0.1|, |0.9-0.95|, |0.8-0.82|, |0.6-0.7| -> mean 0.0675."""
    values = {"ua": 0.2, "ra": 0.9, "ta": 0.8, "mia_efficacy": 0.6}
    reference = {"ua": 0.1, "ra": 0.95, "ta": 0.82, "mia_efficacy": 0.7}
    assert average_gap(values, reference) == pytest.approx(0.0675)


HISTORY = [(1, 0.5), (2, 0.6), (3, 0.3), (4, 0.45), (5, 0.61), (6, 0.7)]


def test_recovery_rounds_first_round_after_the_request_reaching_the_target():
    """Request at round 2 (whose 0.6 does not count): round 5 is the first >= 0.6 -> 3."""
    assert recovery_rounds(HISTORY, 2, 0.6) == 3
    assert recovery_rounds(HISTORY, 2, 0.8) is None
    assert score_after_budget(HISTORY, 2, 2) == 0.45
    with pytest.raises(ValueError, match="round 9"):
        score_after_budget(HISTORY, 2, 7)


# ----------------------------------------------------------------- relearn
def _one_weight_model(gap: float) -> nn.Linear:
    """logits (w0 x, w1 x) with w0 - w1 = gap: class 0 wins on x = 1 exactly when gap > 0."""
    return linear([[gap / 2], [-gap / 2]])


def test_relearn_time_counts_sgd_steps_until_forget_accuracy_returns():
    """Labels 0, x = 1, lr 1: each step adds 2 p_1 to w0 - w1: -5 -> -3.01 -> -1.11 -> 0.40."""
    # Prepare
    x, y = torch.ones(8, 1), torch.zeros(8, dtype=torch.long)
    model = _one_weight_model(-5.0)
    # Execute
    result = relearn_time(model, x, y, 1.0, lr=1.0, batch_size=4, max_steps=10)
    capped = relearn_time(model, x, y, 1.0, lr=1.0, batch_size=4, max_steps=2)
    # Assert
    assert (result.steps, result.recovered, result.final_score) == (3, True, 1.0)
    assert (capped.steps, capped.recovered, capped.final_score) == (2, False, 0.0)
    assert model.weight[0, 0].item() == -2.5  # the model itself is untouched


def test_relearn_time_stops_an_evaluation_once_the_target_is_out_of_reach():
    """3000 identical forget examples, all wrong, lr 0: after each step but the last the
    evaluation stops at the first batch after which even a perfect rest misses the target."""
    # Prepare
    x, y = torch.ones(3000, 1), torch.zeros(3000, dtype=torch.long)
    model = _one_weight_model(-5.0)
    images: list[int] = []
    model.register_forward_pre_hook(lambda _, args: images.append(len(args[0])))
    size = eval_batch_size("classification", torch.device("cpu"))
    assert size == 1024  # the counts below are in batches of 1024: 3000 = 1024 + 1024 + 952
    # Execute
    half = relearn_time(model, x, y, 0.5, lr=0.0, batch_size=4, max_steps=2)
    half_images = list(images)
    images.clear()
    whole = relearn_time(model, x, y, 1.0, lr=0.0, batch_size=4, max_steps=3)
    # Assert
    assert (half.steps, half.recovered, half.final_score) == (2, False, 0.0)
    # first score; step 1 (train 4, then 2 batches: 952 left < 1500); step 2, the last: whole
    assert half_images == [1024, 1024, 952, 4, 1024, 1024, 4, 1024, 1024, 952]
    assert (whole.steps, whole.recovered, whole.final_score) == (3, False, 0.0)
    assert sum(images) == 3000 + 3 * 4 + 2 * 1024 + 3000  # 1976 left < 3000 after a batch


def test_relearn_steps_through_the_registry_uses_the_original_forget_accuracy():
    """Original (gap +5) gets every forget example right; the unlearned one needs 3 steps."""
    x, y = torch.ones(8, 1), torch.zeros(8, dtype=torch.long)
    splits = Splits(x, y, x, y, x, y, num_classes=2)
    context = MetricContext(
        unlearned=_one_weight_model(-5.0),
        original=_one_weight_model(5.0),
        options=MetricOptions(relearn_lr=1.0, relearn_batch_size=4),
    )
    assert evaluate_metrics(context, splits, ["relearn_steps"]) == {"relearn_steps": 3.0}


# --------------------------------------------------------- the registry
def test_every_metric_states_kind_ideal_and_direction():
    """Table metadata: known kind and direction, an ideal in words, tasks from TASKS."""
    kinds = {
        "accuracy",
        "dice",
        "loss",
        "fraction predicted member",
        "fraction classified original",
        "attack accuracy",
        "attack AUC",
        "attack success rate",
        "divergence",
        "gap",
        "rounds",
        "score",
        "steps",
    }
    for name, metric in METRICS.items():
        info = metric.info
        assert info.name == name and info.kind in kinds and info.ideal and info.description
        assert info.direction in ("higher", "lower", "retrain")
        assert set(info.tasks) <= set(TASKS)
    assert metric_info("ulira_acc").ideal_value == 0.5
    assert metric_info("svc_mia_confidence").kind == "fraction predicted member"
    assert metrics_metadata(["mia_nn"])[0]["scenarios"] == ("class",)
    with pytest.raises(KeyError, match="registered metrics are"):
        metric_info("nope")


def _models() -> dict[str, nn.Module]:
    return {
        "retrained": linear([[1.0, 0.0], [-0.5, 0.9], [-0.5, -0.9]]),
        "retrained_2": linear([[0.9, 0.1], [-0.4, 1.0], [-0.5, -0.8]]),
        "original": linear([[3.0, 0.0], [-1.5, 2.7], [-1.5, -2.7]]),
    }


def test_registry_evaluates_every_applicable_metric_with_hand_checks():
    """The retrained model judged against itself: divergences 0, Average Gap 0, U-LiRA 0.5."""
    # Prepare
    splits = blob_splits()
    models = _models()
    retrained = models["retrained"]
    shadows = ShadowModels(
        out=(retrained, models["retrained_2"]), unlearned=(retrained, models["retrained_2"])
    )
    history = RecoveryHistory(request_round=2, scores=((3, 0.1), (4, 0.99), (5, 1.0)), budget=1)
    context = MetricContext(
        unlearned=retrained,
        retrained=(retrained,),
        original=models["original"],
        shadows=shadows,
        history=history,
    )
    # Execute
    values = evaluate_metrics(context, splits)
    # Assert: every classification metric applies but MIA-NN (class unlearning only), the
    # attack success rate (backdoor only) and offline U-LiRA (needs two references)
    expected = {n for n, m in METRICS.items() if "classification" in m.info.tasks} - {
        "mia_nn",
        "backdoor_asr",
        "ulira_auc",
    }
    assert set(values) == expected
    with torch.no_grad():
        logits = retrained(splits.test_x)
        test_acc = float((logits.argmax(1) == splits.test_y).double().mean())
        forget_loss = F.cross_entropy(retrained(splits.forget_x), splits.forget_y, reduction="none")
        retain_loss = F.cross_entropy(retrained(splits.retain_x), splits.retain_y, reduction="none")
    assert values["test_acc"] == pytest.approx(test_acc)
    assert values["mia_yeom"] == pytest.approx(yeom_mia(forget_loss.numpy(), retain_loss.numpy()))
    assert values["kl_test"] == 0.0 and values["js_forget"] == 0.0 and values["avg_gap"] == 0.0
    assert values["ulira_acc"] == 0.5
    # the retrained test accuracy (0.78) is first reached in round 4, 2 rounds after the request
    assert test_acc < 0.99 and values["recovery_rounds"] == 2.0
    assert values["score_after_budget"] == 0.1
    assert all(0.0 <= values[f"svc_mia_{f}"] <= 1.0 for f in ("confidence", "prob", "entropy"))


def test_registry_divergence_and_gap_of_a_different_model_are_positive():
    """The original (sharper logits) differs from the retrained model: KL, JS, gap > 0."""
    splits = blob_splits()
    models = _models()
    context = MetricContext(unlearned=models["original"], retrained=(models["retrained"],))
    values = evaluate_metrics(context, splits, ["kl_test", "js_test", "js_forget"])
    assert 0.0 < values["js_test"] < LN2 and 0.0 < values["js_forget"] < LN2
    assert values["kl_test"] > 0.0


def test_registry_class_scenario_adds_mia_nn_and_missing_inputs_are_explained():
    """MIA-NN applies to class unlearning only; a named metric without its inputs is an error."""
    splits = blob_splits("class", forget_class=0)
    models = _models()
    context = MetricContext(
        unlearned=models["retrained"], retrained=(models["retrained"],), original=models["original"]
    )
    assert "mia_nn" in evaluate_metrics(context, splits)
    bare = MetricContext(unlearned=models["retrained"])
    with pytest.raises(ValueError, match="needs original, retrained"):
        evaluate_metrics(bare, splits, ["mia_nn"])
    with pytest.raises(ValueError, match="forget_class is set exactly"):
        Splits(
            splits.forget_x,
            splits.forget_y,
            splits.retain_x,
            splits.retain_y,
            splits.test_x,
            splits.test_y,
            scenario="class",
        )


def test_segmentation_dice_of_a_perfect_model_is_one():
    """A 1x1 conv that predicts the mask exactly: Dice 1 with and without background."""
    # Prepare: masks from the sign of the input
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 4, 4, generator=gen)
    masks = (x[:, 0] > 0).long()
    model = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[[[0.0]]], [[[10.0]]]]))
        model.bias.zero_()
    splits = Splits(x, masks, x, masks, x, masks, task="segmentation", num_classes=2)
    # Execute
    result = headline_metrics(model, splits)
    names = evaluate_metrics(MetricContext(unlearned=model), splits).keys()
    # Assert
    assert result.test_score == 1.0 and result.as_dict()["forget_dice_fg"] == 1.0
    assert "svc_mia_confidence" not in names and "test_dice" in names


def test_evaluate_unlearning_keeps_its_schema_and_numbers():
    """Client 0 forgotten, client 2 excluded: forget = partition 0, retain = partition 1."""
    splits = blob_splits()
    data = SplitDataset(splits.retain_x, splits.retain_y, splits.test_x, splits.test_y, 3)
    federated = FederatedData(data, (np.arange(0, 30), np.arange(30, 60), np.arange(60, 90)))
    model = _models()["retrained"]
    result = evaluate_unlearning(model, federated, ("0",), ("2",))
    assert isinstance(result, UnlearningMetrics)
    with torch.no_grad():
        forget_correct = model(data.train_x[:30]).argmax(1) == data.train_y[:30]
        retain_correct = model(data.train_x[30:60]).argmax(1) == data.train_y[30:60]
    assert result.forget_acc == pytest.approx(float(forget_correct.double().mean()))
    assert result.retain_acc == pytest.approx(float(retain_correct.double().mean()))
    assert set(result.as_dict()) == {
        "test_acc",
        "forget_acc",
        "retain_acc",
        "mia_yeom",
        "test_loss",
    }
