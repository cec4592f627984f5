"""Membership inference on the forget set: Yeom's loss threshold and SVC-MIA.

Both report the fraction of forget examples the attack calls MEMBER (PUF's
convention): high means the model still behaves on the forget set as on its
training data. The ideal is the retrained model's value, which is not 0: a
model that never saw the forget set still fits some of it as well as its
training data. SalUn's "MIA-efficacy" is ``1 - svc_mia_confidence`` (the
fraction predicted NON-member).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray
from torch import nn

from fedforget.metrics.base import PARTS, MetricContext, MetricInfo, Part, Splits

SvcFeature = Literal["correctness", "confidence", "entropy", "m_entropy", "prob"]
SVC_FEATURES: tuple[SvcFeature, ...] = ("correctness", "confidence", "entropy", "m_entropy", "prob")
SVC_C = 3.0
_LOG_FLOOR = 1e-30  # keeps log(0) finite; 0 * log(_LOG_FLOOR) is 0
_MEMBER = "fraction predicted member"
_RETRAINED = "the retrained model's value"


# --------------------------------------------------------------------- Yeom
def yeom_mia(forget_losses: NDArray[np.float64], retain_losses: NDArray[np.float64]) -> float:
    """Yeom et al.'s loss-threshold membership inference on the forget set.

    ``tau = mean(retain losses)`` (known members); the score is
    ``mean(forget_loss <= tau)``, the fraction of forget examples the attack
    calls "member". Ideal: the retrained model's value.
    """
    if len(forget_losses) == 0 or len(retain_losses) == 0:
        raise ValueError("Yeom MIA needs non-empty forget and retain sets")
    threshold = float(np.mean(retain_losses))
    return float(np.mean(forget_losses <= threshold))


MIA_YEOM = MetricInfo(
    "mia_yeom",
    "Yeom loss-threshold MIA: forget examples with loss <= mean retain loss",
    _MEMBER,
    _RETRAINED,
    "retrain",
    headline=True,
)


def mia_yeom(context: MetricContext, splits: Splits) -> float:
    """Yeom's MIA of the unlearned model (per-example task loss)."""
    forget = context.per_example(context.unlearned, splits, "forget")["loss"]
    retain = context.per_example(context.unlearned, splits, "retain")["loss"]
    return yeom_mia(forget, retain)


# ------------------------------------------------------------ SVC features
def entropy(probs: NDArray[np.float64]) -> NDArray[np.float64]:
    """Prediction entropy ``H(p) = -sum_i p_i log p_i`` of each row (nats)."""
    return -np.sum(probs * np.log(np.maximum(probs, _LOG_FLOOR)), axis=1)


def modified_entropy(probs: NDArray[np.float64], labels: NDArray[np.int64]) -> NDArray[np.float64]:
    """Song & Mittal's modified entropy of each row, which uses the label ``y``.

    ``Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``

    (0 for a confident correct prediction, large for a confident wrong one).
    The SalUn torch code takes ``p[:, labels]`` and ``log p`` for the second
    term; this is the paper's formula.
    """
    rows = np.arange(len(labels))
    p_y = probs[rows, labels]
    own = -(1.0 - p_y) * np.log(np.maximum(p_y, _LOG_FLOOR))
    others = probs * np.log(np.maximum(1.0 - probs, _LOG_FLOOR))
    others[rows, labels] = 0.0
    return own - others.sum(axis=1)


def svc_features(
    probs: NDArray[np.float64], labels: NDArray[np.int64], feature: SvcFeature
) -> NDArray[np.float64]:
    """One SVC-MIA feature set, ``(n, d)``: ``d = C`` for ``prob``, else 1.

    ``correctness``: ``[argmax p = y]``; ``confidence``: ``p_y``; ``entropy``:
    ``H(p)``; ``m_entropy``: :func:`modified_entropy`; ``prob``: ``p`` itself.
    """
    rows = np.arange(len(labels))
    if feature == "correctness":
        column = (probs.argmax(axis=1) == labels).astype(np.float64)
    elif feature == "confidence":
        column = probs[rows, labels]
    elif feature == "entropy":
        column = entropy(probs)
    elif feature == "m_entropy":
        column = modified_entropy(probs, labels)
    elif feature == "prob":
        return np.asarray(probs, dtype=np.float64)
    else:
        raise ValueError(f"unknown SVC-MIA feature {feature!r}: use one of {SVC_FEATURES}")
    return column.reshape(-1, 1)


def svc_mia(
    members: NDArray[np.float64],
    non_members: NDArray[np.float64],
    targets: NDArray[np.float64],
    *,
    seed: int = 0,
    max_per_class: int | None = None,
) -> float:
    """Fraction of ``targets`` an SVC trained on members vs non-members calls member.

    ``SVC(C=3, gamma="auto", kernel="rbf")`` (SalUn / PUF) is fit on features
    of members (label 1) and non-members (label 0), balanced by drawing
    ``m = min(n_members, n_non_members, max_per_class)`` rows of each without
    replacement under ``seed``; the score is ``mean(predict(targets) == 1)``.
    """
    from sklearn.svm import SVC

    if len(members) == 0 or len(non_members) == 0 or len(targets) == 0:
        raise ValueError("SVC-MIA needs non-empty member, non-member and target sets")
    rng = np.random.default_rng(seed)
    size = min(len(members), len(non_members))
    if max_per_class is not None:
        size = min(size, max_per_class)
    chosen_in = rng.choice(len(members), size=size, replace=False)
    chosen_out = rng.choice(len(non_members), size=size, replace=False)
    x = np.concatenate([members[chosen_in], non_members[chosen_out]])
    y = np.concatenate([np.ones(size), np.zeros(size)])
    classifier = SVC(C=SVC_C, gamma="auto", kernel="rbf")
    classifier.fit(x, y)
    return float(np.mean(classifier.predict(targets) == 1))


def model_svc_mia(
    context: MetricContext, splits: Splits, feature: SvcFeature, model: nn.Module | None = None
) -> float:
    """SVC-MIA of ``model`` (default: the unlearned one): retain vs test, applied to forget."""
    chosen = context.unlearned if model is None else model

    def compute() -> float:
        features: dict[Part, NDArray[np.float64]] = {}
        for part in PARTS:
            out = context.class_outputs(chosen, splits, part)
            features[part] = svc_features(out.probs, out.labels, feature)
        return svc_mia(
            features["retain"],
            features["test"],
            features["forget"],
            seed=context.options.seed,
            max_per_class=context.options.svc_max_per_class,
        )

    options = context.options  # in the key: a cache shared by contexts keeps them apart
    name = f"svc_mia_{feature}@seed={options.seed},cap={options.svc_max_per_class}"
    return context.cache.value(name, chosen, splits, compute)


def _svc_info(feature: SvcFeature, what: str) -> MetricInfo:
    return MetricInfo(
        f"svc_mia_{feature}",
        f"SVC-MIA on {what}: forget examples predicted member by an SVC trained on "
        "retain (member) vs test (non-member); SalUn's MIA-efficacy is 1 minus it",
        _MEMBER,
        _RETRAINED,
        "retrain",
        tasks=("classification",),
    )


SVC_MIA_CORRECTNESS = _svc_info("correctness", "correctness [argmax p = y]")
SVC_MIA_CONFIDENCE = _svc_info("confidence", "the confidence p_y (PUF's reported MIA)")
SVC_MIA_ENTROPY = _svc_info("entropy", "the prediction entropy")
SVC_MIA_M_ENTROPY = _svc_info("m_entropy", "Song & Mittal's modified entropy")
SVC_MIA_PROB = _svc_info("prob", "the full probability vector")


def svc_mia_correctness(context: MetricContext, splits: Splits) -> float:
    """SVC-MIA on correctness."""
    return model_svc_mia(context, splits, "correctness")


def svc_mia_confidence(context: MetricContext, splits: Splits) -> float:
    """SVC-MIA on the confidence ``p_y``."""
    return model_svc_mia(context, splits, "confidence")


def svc_mia_entropy(context: MetricContext, splits: Splits) -> float:
    """SVC-MIA on the entropy."""
    return model_svc_mia(context, splits, "entropy")


def svc_mia_m_entropy(context: MetricContext, splits: Splits) -> float:
    """SVC-MIA on the modified entropy."""
    return model_svc_mia(context, splits, "m_entropy")


def svc_mia_prob(context: MetricContext, splits: Splits) -> float:
    """SVC-MIA on the probability vector."""
    return model_svc_mia(context, splits, "prob")
