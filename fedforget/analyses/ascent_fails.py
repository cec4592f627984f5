"""Descent-ascent unlearning on L2-regularised logistic regression ("Ascent Fails to Forget").

Binary logistic regression without intercept, labels ``y`` in {-1, +1}, per-example
loss ``l(w; x, y) = log(1 + exp(-y w.x))`` and, for a set ``S``, the mean loss
``L_S(w) = (1/|S|) sum_{i in S} l(w; x_i, y_i)``. With the L2 weight ``lam``:

- original model:  ``w_o = argmin L_{R u F}(w) + lam/2 ||w||^2``
- retrained model: ``w_r = argmin L_R(w) + lam/2 ||w||^2`` (the target of unlearning)
- descent-ascent (NegGrad+), started at ``w_o`` with step ``eta`` and ascent weight
  ``alpha``: ``w_{t+1} = w_t - eta (grad L_R(w_t) + lam w_t - alpha grad L_F(w_t))``

Both optima are unique (the objectives are ``lam``-strongly convex) and are solved
by Newton's method to a gradient norm below 1e-12. The analysis tracks
``||w_t - w_r||`` for every iterate in two cases that share one retain set ``R`` and
differ only in the forget set ``F``:

- correlated: ``F`` is drawn from the retain distribution (same features, same
  label direction). Removing it barely moves the optimum (``w_o`` differs from
  ``w_r`` by sampling noise), but ascending ``L_F`` also ascends the loss the retain
  set shares, so the iterates drift to a model that is systematically biased: at
  the fixed point ``grad L_R(w) + lam w = alpha grad L_F(w)`` and, with ``L_F ~ L_R``,
  that is the retrained model under the heavier weight ``lam / (1 - alpha)``. They
  end further from ``w_r`` than ``w_o`` was.
- independent: ``F``'s labels are carried by features that are pure noise for the
  retain set, and ``F``'s values on the retain set's informative features are
  noise. ``w_o`` has learnt the forget-only features (``w_r`` has not), and the
  ascent acts on those features: the iterates pass close to ``w_r`` and settle
  past it, at a fraction of the original distance of order ``alpha n / |F|``
  (0.5 with the defaults; the curvature of the two objectives differs a little),
  i.e. closer than ``w_o``.

The independent case's margin depends on ``alpha``: from ``alpha`` near ``|F| / n``
on, its iterates overshoot past ``w_r`` as far as ``w_o`` was, and beyond (the
ascent has no bounded target; only the L2 term stops it). The correlated case ends
further than ``w_o`` at every ``alpha`` large enough for its systematic shift to
exceed the sampling noise between ``w_o`` and ``w_r``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedforget.analyses.figures import new_figure, save_png, write_json

NAME = "ascent-fails"
CASES = ("correlated", "independent")
NEWTON_TOLERANCE = 1e-12

Informative = Literal["shared", "own"]


@dataclass(frozen=True)
class AscentFailsConfig:
    """Sizes and hyperparameters of the experiment.

    Parameters
    ----------
    n_retain, n_forget, n_test : int
        Examples in the retain set, each forget set, and the test set (drawn from
        the retain distribution). Defaults 3600, 400, 2000.
    shared_dims, own_dims : int
        Features that carry the retain set's labels (and the correlated forget
        set's), and features that carry only the independent forget set's labels.
        Defaults 5 and 5.
    signal : float
        Norm of the class-mean offset ``y * mu`` added to the informative block of
        standard-normal features. Default 2.0.
    l2 : float
        L2 weight ``lam`` of both training objectives and of the descent step.
        Default 0.5.
    ascent_weight : float
        ``alpha``, the weight of the forget-loss ascent relative to the retain-loss
        descent (NegGrad+ with ``beta = 1 / (1 + alpha)``). Default 0.05, half the
        forget set's share of the data.
    step_size : float
        ``eta`` of descent-ascent. Default 0.05, well under ``1 / smoothness``
        (about 1.8 here) so that the iterates do not oscillate.
    iterations : int
        Descent-ascent steps. Default 1000: the iterates have converged (the
        final gradient norm is reported).
    curve_points : int
        How many iterates of each distance curve the JSON keeps (evenly spaced,
        first and last included). Default 101.

    """

    n_retain: int = 3600
    n_forget: int = 400
    n_test: int = 2000
    shared_dims: int = 5
    own_dims: int = 5
    signal: float = 2.0
    l2: float = 0.5
    ascent_weight: float = 0.05
    step_size: float = 0.05
    iterations: int = 1000
    curve_points: int = 101


@dataclass(frozen=True)
class Accuracies:
    """Accuracy of one model on the forget set and on the test set."""

    forget: float
    test: float


@dataclass(frozen=True)
class AscentCase:
    """One forget set: the descent-ascent trajectory's distances to ``w_r``."""

    name: str
    distances: np.ndarray = field(repr=False)
    original_distance: float
    final_distance: float
    min_distance: float
    min_iteration: int
    final_gradient_norm: float
    original_gradient_norm: float
    original: Accuracies
    retrained: Accuracies
    final: Accuracies

    @property
    def ends_further(self) -> bool:
        """Whether the last iterate is further from ``w_r`` than ``w_o`` is."""
        return self.final_distance > self.original_distance


@dataclass(frozen=True)
class AscentFailsResult:
    """Both cases of one run, with the retrained model they share.

    ``heavier_l2_distance`` is ``||w_r' - w_r||`` for ``w_r'`` the retrained model
    under the L2 weight ``lam / (1 - alpha)``: the predicted limit of the correlated
    case's iterates.
    """

    config: AscentFailsConfig
    seed: int
    retrained_norm: float
    retrained_gradient_norm: float
    heavier_l2_distance: float
    cases: tuple[AscentCase, ...]

    def case(self, name: str) -> AscentCase:
        """The case called ``name`` (``correlated`` or ``independent``)."""
        for case in self.cases:
            if case.name == name:
                return case
        raise KeyError(f"no case {name!r}; the cases are {', '.join(CASES)}")


def logistic_loss(weights: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
    """Mean logistic loss ``(1/n) sum_i log(1 + exp(-y_i w.x_i))``, computed stably."""
    return float(np.logaddexp(0.0, -labels * (features @ weights)).mean())


def logistic_gradient(weights: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gradient of :func:`logistic_loss`: ``-(1/n) sum_i sigma(-m_i) y_i x_i``.

    The margins are ``m_i = y_i w.x_i`` and ``sigma(z) = 1 / (1 + exp(-z))``.
    """
    margins = labels * (features @ weights)
    pull = np.exp(-np.logaddexp(0.0, margins))  # sigma(-m), without overflow
    return -(features.T @ (labels * pull)) / len(labels)


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, l2: float, max_steps: int = 100
) -> tuple[np.ndarray, float]:
    """``argmin_w L(w) + l2/2 ||w||^2`` by damped Newton steps from ``w = 0``.

    The Hessian is ``(1/n) X^T diag(sigma(m) sigma(-m)) X + l2 I``; each step is
    halved until the objective decreases by the Armijo condition (full steps once
    the squared Newton decrement is below 1e-12, where the objective's rounding
    hides the decrease). Returns the weights and the final gradient norm (below
    :data:`NEWTON_TOLERANCE`).
    """

    def objective(weights: np.ndarray) -> float:
        return logistic_loss(weights, features, labels) + 0.5 * l2 * float(weights @ weights)

    weights = np.zeros(features.shape[1])
    for _ in range(max_steps):
        gradient = logistic_gradient(weights, features, labels) + l2 * weights
        norm = float(np.linalg.norm(gradient))
        if norm <= NEWTON_TOLERANCE:
            return weights, norm
        margins = labels * (features @ weights)
        curvature = np.exp(-np.logaddexp(0.0, margins) - np.logaddexp(0.0, -margins))
        hessian = (features.T * curvature) @ features / len(labels) + l2 * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        decrement = float(gradient @ step)  # squared Newton decrement
        size, current = 1.0, objective(weights)
        # Near the optimum the objective cannot resolve a decrease this small: full step.
        while (
            decrement > 1e-12
            and size > 1e-10
            and objective(weights - size * step) > current - 1e-4 * size * decrement
        ):
            size /= 2.0
        weights = weights - size * step
    raise RuntimeError(
        f"Newton's method did not reach a gradient norm of {NEWTON_TOLERANCE:g} in "
        f"{max_steps} steps (last {norm:.3g}); lower the signal or raise l2"
    )


def sample(
    rng: np.random.Generator, count: int, config: AscentFailsConfig, informative: Informative
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` examples with balanced labels ``y`` and features ``x = z + y mu``.

    ``z ~ N(0, I)``, and ``mu`` has norm ``config.signal`` spread evenly over the
    ``informative`` block (the shared features or the forget-only ones) and is zero
    on the other block.
    """
    labels = rng.choice(np.array([-1.0, 1.0]), size=count)
    features = rng.standard_normal((count, config.shared_dims + config.own_dims))
    block = (
        slice(0, config.shared_dims) if informative == "shared" else slice(config.shared_dims, None)
    )
    width = config.shared_dims if informative == "shared" else config.own_dims
    features[:, block] += labels[:, None] * (config.signal / np.sqrt(width))
    return features, labels


def descent_ascent(
    start: np.ndarray,
    retain: tuple[np.ndarray, np.ndarray],
    forget: tuple[np.ndarray, np.ndarray],
    config: AscentFailsConfig,
    target: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Run ``config.iterations`` descent-ascent steps from ``start``.

    Each step is ``w <- w - eta (grad L_R(w) + lam w - alpha grad L_F(w))``.

    Returns the last iterate, ``||w_t - target||`` for ``t = 0..iterations``, and the
    norm of the last step's direction (near 0 once the iterates have converged).
    """
    weights = start.copy()
    distances = np.empty(config.iterations + 1)
    distances[0] = np.linalg.norm(weights - target)
    direction_norm = float("nan")
    for step in range(1, config.iterations + 1):
        direction = (
            logistic_gradient(weights, *retain)
            + config.l2 * weights
            - config.ascent_weight * logistic_gradient(weights, *forget)
        )
        weights = weights - config.step_size * direction
        distances[step] = np.linalg.norm(weights - target)
        direction_norm = float(np.linalg.norm(direction))
    return weights, distances, direction_norm


def accuracy(weights: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
    """Share of examples with ``sign(w.x) == y``."""
    return float(np.mean(np.sign(features @ weights) == labels))


def accuracies(
    weights: np.ndarray,
    forget: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> Accuracies:
    """:func:`accuracy` of ``weights`` on the forget set and on the test set."""
    return Accuracies(forget=accuracy(weights, *forget), test=accuracy(weights, *test))


def run(config: AscentFailsConfig | None = None, seed: int = 0) -> AscentFailsResult:
    """Train the original and retrained models and run descent-ascent for both cases."""
    config = config or AscentFailsConfig()
    rng = np.random.default_rng(seed)
    retain = sample(rng, config.n_retain, config, "shared")
    test = sample(rng, config.n_test, config, "shared")
    retrained, retrained_gradient = fit_logistic(*retain, config.l2)
    heavier, _ = fit_logistic(*retain, config.l2 / (1.0 - config.ascent_weight))
    cases = []
    for name in CASES:
        forget = sample(rng, config.n_forget, config, "shared" if name == "correlated" else "own")
        union = (np.vstack([retain[0], forget[0]]), np.concatenate([retain[1], forget[1]]))
        original, original_gradient = fit_logistic(*union, config.l2)
        final, distances, direction_norm = descent_ascent(
            original, retain, forget, config, retrained
        )
        cases.append(
            AscentCase(
                name=name,
                distances=distances,
                original_distance=float(distances[0]),
                final_distance=float(distances[-1]),
                min_distance=float(distances.min()),
                min_iteration=int(distances.argmin()),
                final_gradient_norm=direction_norm,
                original_gradient_norm=original_gradient,
                original=accuracies(original, forget, test),
                retrained=accuracies(retrained, forget, test),
                final=accuracies(final, forget, test),
            )
        )
    return AscentFailsResult(
        config=config,
        seed=seed,
        retrained_norm=float(np.linalg.norm(retrained)),
        retrained_gradient_norm=retrained_gradient,
        heavier_l2_distance=float(np.linalg.norm(heavier - retrained)),
        cases=tuple(cases),
    )


def curve_iterations(iterations: int, points: int) -> np.ndarray:
    """``points`` evenly spaced iteration indices in ``0..iterations``, both ends kept."""
    return np.unique(np.linspace(0, iterations, max(points, 2)).round().astype(int))


def to_json(result: AscentFailsResult) -> dict[str, Any]:
    """The result as a JSON-ready dictionary (distance curves subsampled)."""
    kept = curve_iterations(result.config.iterations, result.config.curve_points)
    return {
        "analysis": NAME,
        "seed": result.seed,
        "parameters": asdict(result.config),
        "objective": {
            "loss": "mean logistic loss log(1 + exp(-y w.x)), y in {-1, +1}, no intercept",
            "original": "argmin L_{R u F}(w) + l2/2 ||w||^2 (Newton)",
            "retrained": "argmin L_R(w) + l2/2 ||w||^2 (Newton)",
            "descent_ascent": "w <- w - step_size (grad L_R(w) + l2 w"
            " - ascent_weight grad L_F(w)), from the original model",
            "distance": "Euclidean distance of each iterate to the retrained weights",
            "heavier_l2_retrained_distance": "distance from the retrained weights to"
            " argmin L_R(w) + l2 / (1 - ascent_weight) / 2 ||w||^2, the predicted limit of"
            " the correlated case",
        },
        "retrained_norm": result.retrained_norm,
        "retrained_gradient_norm": result.retrained_gradient_norm,
        "heavier_l2_retrained_distance": result.heavier_l2_distance,
        "cases": {
            case.name: {
                "original_distance": case.original_distance,
                "final_distance": case.final_distance,
                "min_distance": case.min_distance,
                "min_iteration": case.min_iteration,
                "final_over_original": case.final_distance / case.original_distance,
                "ends_further_than_original": case.ends_further,
                "final_step_direction_norm": case.final_gradient_norm,
                "original_gradient_norm": case.original_gradient_norm,
                "accuracy": {
                    "original": asdict(case.original),
                    "retrained": asdict(case.retrained),
                    "descent_ascent_final": asdict(case.final),
                },
                "curve": {"iteration": kept, "distance": case.distances[kept]},
            }
            for case in result.cases
        },
    }


def write(result: AscentFailsResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``ascent-fails.png`` and ``ascent-fails.json``; return their paths.

    The figure has one panel per case: the distance to the retrained model per
    iteration, with the original model's distance as a dashed line.
    """
    figure, axes = new_figure(len(result.cases), width=5.4, height=4.0)
    config = result.config
    for ax, case, colour in zip(axes, result.cases, ("tab:red", "tab:blue"), strict=True):
        ax.plot(
            np.arange(len(case.distances)), case.distances, color=colour, label="descent-ascent"
        )
        ax.axhline(case.original_distance, color="black", linestyle="--", label="original model")
        if case.name == "correlated":
            ax.axhline(
                result.heavier_l2_distance,
                color="grey",
                linestyle=":",
                label=r"retrained with l2/(1-$\alpha$) (predicted limit)",
            )
        verdict = "further than" if case.ends_further else "closer than"
        ax.set_title(
            f"{case.name} forget set: ends {verdict} the original\n"
            f"final {case.final_distance:.4f} vs original {case.original_distance:.4f}",
            fontsize=10,
        )
        ax.set_xlabel("descent-ascent iteration")
        ax.set_ylabel(r"$\|w_t - w_{\mathrm{retrained}}\|_2$")
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    figure.suptitle(
        f"Descent-ascent on L2 logistic regression (l2={config.l2:g}, "
        f"ascent weight={config.ascent_weight:g}, step={config.step_size:g}, "
        f"|R|={config.n_retain}, |F|={config.n_forget}, seed {result.seed})",
        fontsize=10,
    )
    png = save_png(figure, out_dir / f"{NAME}.png")
    return png, write_json(out_dir / f"{NAME}.json", to_json(result))


def summary(result: AscentFailsResult) -> str:
    """One line per case: original, final and minimum distance to the retrained model."""
    return "\n".join(
        f"{case.name:>11}: original {case.original_distance:.4f}, final "
        f"{case.final_distance:.4f} ({case.final_distance / case.original_distance:.2f}x), "
        f"min {case.min_distance:.4f} at iteration {case.min_iteration}"
        for case in result.cases
    )
