"""Influence functions in the primal (p x p) and the dual (n x n) form, for ridge regression.

After "Extending Kernel Trick to Influence Functions": for a model that is linear
in a feature map ``phi`` (random Fourier features here, standing in for the
linearised features of a network), the influence of training examples can be
computed from the n x n Gram matrix ``K = Phi Phi^T`` instead of the p x p Hessian,
so its cost stops growing with the parameter count p.

The model: features ``Phi`` (n x p), targets ``y``, weights
``theta = argmin J(theta)``, ``J(theta) = 1/2 ||Phi theta - y||^2 + lam/2 ||theta||^2``,
so ``H = Phi^T Phi + lam I`` and ``theta = H^{-1} Phi^T y = Phi^T (K + lam I)^{-1} y``.
Removing a set G of examples (residuals ``r = Phi theta - y``) changes the weights by
``Delta theta``, estimated two ways:

- influence (first order, Hessian of the full objective, Koh and Liang):
  ``Delta theta = H^{-1} Phi_G^T r_G``;
- exact (one Newton step on ``J`` without G, exact since ``J`` is quadratic; the
  leave-group-out formula): ``Delta theta = (H - Phi_G^T Phi_G)^{-1} Phi_G^T r_G
  = H^{-1} Phi_G^T (I - S_GG)^{-1} r_G`` by Woodbury, where ``S = K (K + lam I)^{-1}``
  is the hat matrix and ``S_GG`` its G x G block (the leverages).

Each has a primal form (solve with H) and a dual form through
``H^{-1} Phi^T = Phi^T (K + lam I)^{-1}`` (push-through identity):
``Delta theta = Phi^T c`` with ``c = (K + lam I)^{-1} E_G r_G`` (influence) or
``c = (K + lam I)^{-1} E_G (I - S_GG)^{-1} r_G`` (exact), ``E_G`` the identity's
columns in G. Test outputs change by ``Delta f = Phi_test Delta theta`` (primal) or
``K_test c`` with ``K_test = Phi_test Phi^T`` (dual, kernel evaluations only).

For a single example ``j`` the two estimates differ by the leverage:
``Delta theta_influence = (1 - S_jj) Delta theta_exact``, so the influence estimate's
relative error is exactly ``S_jj``, and the exact estimate matches retraining to
rounding. The sweep over p (below and above n) records the relative error of each
estimate against actual retraining and the wall time of each form.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedforget.analyses.figures import new_figure, save_png, write_json

NAME = "dual-influence"
ESTIMATORS = ("primal_influence", "dual_influence", "primal_exact", "dual_exact")
Kind = Literal["influence", "exact"]
KINDS: tuple[Kind, ...] = ("influence", "exact")
LONG_RUN_SECONDS = 1.0


@dataclass(frozen=True)
class DualInfluenceConfig:
    """Sizes of the sweep.

    Parameters
    ----------
    n_train, n_test : int
        Training and test examples. Defaults 200 and 100.
    input_dims : int
        Dimension of the inputs ``x ~ N(0, I)``. Default 5.
    feature_counts : tuple of int
        The parameter counts p swept (random Fourier features). Default
        50, 100, 200, 400, 1000, 2000, 5000: below, at and above n.
    l2 : float
        Ridge weight ``lam``. Default 0.1.
    noise : float
        Standard deviation of the target noise; targets are
        ``y = sin(a.x) + noise * N(0, 1)`` with ``||a|| = 1.5``. Default 0.1.
    group_size : int
        Size of the removed group (the single removed example is its first
        member). Default 10.
    repeats : int
        Each form is timed up to ``repeats`` times and the fastest run kept (a run
        over one second is not repeated). Default 3.
    blas_threads : int or None
        BLAS threads while the sweep runs, so that the timings compare operation
        counts rather than thread scheduling on a shared machine; ``None`` leaves
        the BLAS default. Default 1.

    """

    n_train: int = 200
    n_test: int = 100
    input_dims: int = 5
    feature_counts: tuple[int, ...] = (50, 100, 200, 400, 1000, 2000, 5000)
    l2: float = 0.1
    noise: float = 0.1
    group_size: int = 10
    repeats: int = 3
    blas_threads: int | None = 1


@dataclass(frozen=True)
class Problem:
    """One fitted ridge regression: training and test features and targets, weights."""

    features: np.ndarray = field(repr=False)
    targets: np.ndarray = field(repr=False)
    test_features: np.ndarray = field(repr=False)
    test_targets: np.ndarray = field(repr=False)
    l2: float
    weights: np.ndarray = field(repr=False)

    @property
    def residuals(self) -> np.ndarray:
        """``r = Phi theta - y`` on the training set."""
        return self.features @ self.weights - self.targets

    @property
    def test_residuals(self) -> np.ndarray:
        """``Phi_test theta - y_test``."""
        return self.test_features @ self.weights - self.test_targets


@dataclass(frozen=True)
class Change:
    """A change of the model after a removal: weights, test outputs, mean test loss."""

    parameters: np.ndarray = field(repr=False)
    test_outputs: np.ndarray = field(repr=False)
    test_loss: float


@dataclass(frozen=True)
class Errors:
    """Relative errors of an estimated :class:`Change` against retraining.

    ``||est - actual|| / ||actual||`` for vectors, ``|est - actual| / |actual|`` for the loss.
    """

    parameters: float
    test_outputs: float
    test_loss: float


@dataclass(frozen=True)
class RemovalRow:
    """One removal at one p: what retraining changed and how well each estimate did."""

    removal: str
    removed: int
    leverage: float
    parameter_change: float
    test_loss_change: float
    retrain_gradient_norm: float
    errors: dict[str, Errors]
    dual_vs_primal: dict[str, float]


@dataclass(frozen=True)
class SweepRow:
    """One parameter count p: the removals and the time of each form (both removals)."""

    features: int
    primal_seconds: float
    dual_seconds: float
    fit_gradient_norm: float
    removals: tuple[RemovalRow, ...]

    def removal(self, name: str) -> RemovalRow:
        """The row of the removal called ``name`` (``single`` or ``group``)."""
        for row in self.removals:
            if row.removal == name:
                return row
        raise KeyError(f"no removal {name!r}; the removals are single and group")


@dataclass(frozen=True)
class DualInfluenceResult:
    """The whole sweep."""

    config: DualInfluenceConfig
    seed: int
    single: int
    group: tuple[int, ...]
    rows: tuple[SweepRow, ...]


def random_fourier_features(
    inputs: np.ndarray, frequencies: np.ndarray, phases: np.ndarray
) -> np.ndarray:
    """Random Fourier features ``phi(x) = sqrt(2/p) cos(W x + b)``.

    ``W`` (``frequencies``) and ``b`` (``phases``) have p rows; ``phi(x).phi(x')``
    approximates a Gaussian kernel.
    """
    return np.sqrt(2.0 / len(phases)) * np.cos(inputs @ frequencies.T + phases)


def ridge_weights(features: np.ndarray, targets: np.ndarray, l2: float) -> np.ndarray:
    """``argmin 1/2 ||Phi theta - y||^2 + l2/2 ||theta||^2`` from the smaller normal equations.

    ``(Phi^T Phi + l2 I)^{-1} Phi^T y`` when p <= n, else ``Phi^T (Phi Phi^T + l2 I)^{-1} y``.
    """
    count, width = features.shape
    if width <= count:
        return np.linalg.solve(features.T @ features + l2 * np.eye(width), features.T @ targets)
    gram = features @ features.T + l2 * np.eye(count)
    return features.T @ np.linalg.solve(gram, targets)


def ridge_gradient_norm(
    weights: np.ndarray, features: np.ndarray, targets: np.ndarray, l2: float
) -> float:
    """``||Phi^T (Phi theta - y) + l2 theta|| / ||Phi^T y||``: 0 at the optimum."""
    gradient = features.T @ (features @ weights - targets) + l2 * weights
    return float(np.linalg.norm(gradient) / np.linalg.norm(features.T @ targets))


def mean_test_loss_change(test_residuals: np.ndarray, output_change: np.ndarray) -> float:
    """Exact change of the test loss ``(1/m) sum_t 1/2 e_t^2`` when outputs move by ``Delta f``.

    It is ``(1/m) sum_t (e_t Delta f_t + 1/2 Delta f_t^2)``.
    """
    return float(np.mean(test_residuals * output_change + 0.5 * output_change**2))


def first_order_test_loss_change(test_residuals: np.ndarray, output_change: np.ndarray) -> float:
    """Influence on the test loss, ``grad L_test . Delta theta = (1/m) sum_t e_t Delta f_t``."""
    return float(np.mean(test_residuals * output_change))


def _loss_change(kind: Kind, test_residuals: np.ndarray, output_change: np.ndarray) -> float:
    """First-order loss change for the influence estimate, exact for the exact one."""
    if kind == "influence":
        return first_order_test_loss_change(test_residuals, output_change)
    return mean_test_loss_change(test_residuals, output_change)


def residual_weights(leverages: np.ndarray, residuals: np.ndarray) -> dict[Kind, np.ndarray]:
    """What multiplies ``H^{-1} Phi_G^T`` in each estimate.

    ``r_G`` for the influence estimate and ``(I - S_GG)^{-1} r_G`` for the exact one,
    with ``S_GG`` the removed examples' leverage block.
    """
    identity = np.eye(len(residuals))
    return {"influence": residuals, "exact": np.linalg.solve(identity - leverages, residuals)}


def primal_estimates(problem: Problem, removals: Sequence[np.ndarray]) -> dict[Kind, list[Change]]:
    """Both estimates for every removal from the p x p Hessian ``H = Phi^T Phi + lam I``.

    ``H^{-1} Phi_G^T r_G`` (influence) and ``H^{-1} Phi_G^T (I - S_GG)^{-1} r_G`` (exact),
    ``S_GG = Phi_G H^{-1} Phi_G^T``. One solve with H serves all removals.
    """
    phi, residuals = problem.features, problem.residuals
    test_residuals = problem.test_residuals
    hessian = phi.T @ phi + problem.l2 * np.eye(phi.shape[1])
    union = np.unique(np.concatenate(removals))
    solved = np.linalg.solve(hessian, phi[union].T)  # H^{-1} Phi_U^T, p x |U|
    columns = {int(index): position for position, index in enumerate(union)}
    estimates: dict[Kind, list[Change]] = {"influence": [], "exact": []}
    for removed in removals:
        block = solved[:, [columns[int(index)] for index in removed]]
        weights = residual_weights(phi[removed] @ block, residuals[removed])
        for kind in KINDS:
            change = block @ weights[kind]
            outputs = problem.test_features @ change
            estimates[kind].append(
                Change(change, outputs, _loss_change(kind, test_residuals, outputs))
            )
    return estimates


def dual_estimates(problem: Problem, removals: Sequence[np.ndarray]) -> dict[Kind, list[Change]]:
    """Both estimates for every removal from the n x n Gram matrix ``K = Phi Phi^T``.

    ``Delta theta = Phi^T c`` with ``c = (K + lam I)^{-1} E_G r_G`` (influence) or
    ``(K + lam I)^{-1} E_G (I - S_GG)^{-1} r_G`` (exact), ``S_GG = K_G. (K + lam I)^{-1} E_G``;
    test outputs change by ``K_test c``. One solve with ``K + lam I`` serves all removals.
    """
    phi, residuals = problem.features, problem.residuals
    test_residuals = problem.test_residuals
    gram = phi @ phi.T
    test_gram = problem.test_features @ phi.T
    union = np.unique(np.concatenate(removals))
    unit = np.zeros((len(gram), len(union)))
    unit[union, np.arange(len(union))] = 1.0
    solved = np.linalg.solve(gram + problem.l2 * np.eye(len(gram)), unit)  # (K+lam I)^{-1} E_U
    columns = {int(index): position for position, index in enumerate(union)}
    estimates: dict[Kind, list[Change]] = {"influence": [], "exact": []}
    for removed in removals:
        block = solved[:, [columns[int(index)] for index in removed]]
        weights = residual_weights(gram[removed] @ block, residuals[removed])
        for kind in KINDS:
            coefficients = block @ weights[kind]
            outputs = test_gram @ coefficients
            estimates[kind].append(
                Change(phi.T @ coefficients, outputs, _loss_change(kind, test_residuals, outputs))
            )
    return estimates


def retrained_change(problem: Problem, removed: np.ndarray) -> tuple[Change, float]:
    """The actual change: retrain without ``removed`` and compare with the full model.

    Retraining uses :func:`ridge_weights`; also returns the retrained model's relative
    gradient norm (:func:`ridge_gradient_norm`).
    """
    keep = np.setdiff1d(np.arange(len(problem.targets)), removed)
    weights = ridge_weights(problem.features[keep], problem.targets[keep], problem.l2)
    change = weights - problem.weights
    outputs = problem.test_features @ change
    loss = mean_test_loss_change(problem.test_residuals, outputs)
    optimality = ridge_gradient_norm(
        weights, problem.features[keep], problem.targets[keep], problem.l2
    )
    return Change(change, outputs, loss), optimality


def relative_difference(value: np.ndarray, reference: np.ndarray) -> float:
    """``||value - reference|| / ||reference||``."""
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def relative_errors(estimate: Change, actual: Change) -> Errors:
    """:class:`Errors` of ``estimate`` against ``actual``."""
    return Errors(
        parameters=relative_difference(estimate.parameters, actual.parameters),
        test_outputs=relative_difference(estimate.test_outputs, actual.test_outputs),
        test_loss=abs(estimate.test_loss - actual.test_loss) / abs(actual.test_loss),
    )


def best_time(
    compute: Callable[[], dict[Kind, list[Change]]], repeats: int
) -> tuple[dict[Kind, list[Change]], float]:
    """Run ``compute`` up to ``repeats`` times; its last result and the fastest wall time.

    A run over :data:`LONG_RUN_SECONDS` is not repeated: its timing noise is small
    next to its length, and repeating it would dominate the analysis' run time.
    """
    fastest, result = float("inf"), None
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = compute()
        fastest = min(fastest, time.perf_counter() - start)
        if fastest > LONG_RUN_SECONDS:
            break
    assert result is not None
    return result, fastest


@contextmanager
def blas_threads(threads: int | None) -> Iterator[None]:
    """Limit the BLAS thread pool to ``threads`` inside the block (``None``: no limit)."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def make_problem(config: DualInfluenceConfig, seed: int) -> Callable[[int], Problem]:
    """Draw the data and ``max(feature_counts)`` random Fourier features.

    Returns a function that fits the ridge model on the first p features (nested in p).
    """
    rng = np.random.default_rng(seed)
    count = config.n_train + config.n_test
    inputs = rng.standard_normal((count, config.input_dims))
    direction = rng.standard_normal(config.input_dims)
    direction *= 1.5 / np.linalg.norm(direction)
    targets = np.sin(inputs @ direction) + config.noise * rng.standard_normal(count)
    widest = max(config.feature_counts)
    frequencies = rng.standard_normal((widest, config.input_dims)) / np.sqrt(config.input_dims)
    phases = rng.uniform(0.0, 2.0 * np.pi, widest)

    def problem(width: int) -> Problem:
        phi = random_fourier_features(inputs, frequencies[:width], phases[:width])
        train, test = phi[: config.n_train], phi[config.n_train :]
        train_targets = targets[: config.n_train]
        return Problem(
            features=train,
            targets=train_targets,
            test_features=test,
            test_targets=targets[config.n_train :],
            l2=config.l2,
            weights=ridge_weights(train, train_targets, config.l2),
        )

    return problem


def sweep_row(problem: Problem, removals: dict[str, np.ndarray], repeats: int) -> SweepRow:
    """Estimates (timed) and retraining for every removal at one p."""
    sets = list(removals.values())
    primal, primal_seconds = best_time(lambda: primal_estimates(problem, sets), repeats)
    dual, dual_seconds = best_time(lambda: dual_estimates(problem, sets), repeats)
    phi = problem.features
    gram = phi @ phi.T
    hat = np.linalg.solve(gram + problem.l2 * np.eye(len(gram)), gram)  # S = (K + lam I)^{-1} K
    rows = []
    for position, (name, removed) in enumerate(removals.items()):
        actual, optimality = retrained_change(problem, removed)
        found = {
            "primal_influence": primal["influence"][position],
            "dual_influence": dual["influence"][position],
            "primal_exact": primal["exact"][position],
            "dual_exact": dual["exact"][position],
        }
        rows.append(
            RemovalRow(
                removal=name,
                removed=len(removed),
                leverage=float(np.mean(np.diag(hat)[removed])),
                parameter_change=float(np.linalg.norm(actual.parameters)),
                test_loss_change=actual.test_loss,
                retrain_gradient_norm=optimality,
                errors={key: relative_errors(change, actual) for key, change in found.items()},
                dual_vs_primal={
                    kind: relative_difference(
                        found[f"dual_{kind}"].parameters, found[f"primal_{kind}"].parameters
                    )
                    for kind in KINDS
                },
            )
        )
    return SweepRow(
        features=phi.shape[1],
        primal_seconds=primal_seconds,
        dual_seconds=dual_seconds,
        fit_gradient_norm=ridge_gradient_norm(problem.weights, phi, problem.targets, problem.l2),
        removals=tuple(rows),
    )


def run(config: DualInfluenceConfig | None = None, seed: int = 0) -> DualInfluenceResult:
    """Sweep p over ``config.feature_counts``, comparing both forms with retraining.

    At each p, one random example and a random group are removed.
    """
    config = config or DualInfluenceConfig()
    if not 1 <= config.group_size <= config.n_train - 1:
        raise ValueError(
            f"group_size must be between 1 and n_train - 1 = {config.n_train - 1}, "
            f"got {config.group_size}"
        )
    problem = make_problem(config, seed)
    order = np.random.default_rng([seed, 1]).permutation(config.n_train)
    group = np.sort(order[: config.group_size])
    removals = {"single": order[:1], "group": group}
    with blas_threads(config.blas_threads):
        rows = tuple(
            sweep_row(problem(width), removals, config.repeats) for width in config.feature_counts
        )
    return DualInfluenceResult(
        config=config,
        seed=seed,
        single=int(order[0]),
        group=tuple(int(index) for index in group),
        rows=rows,
    )


def to_json(result: DualInfluenceResult) -> dict[str, Any]:
    """The result as a JSON-ready dictionary: parameters and the sweep table."""
    return {
        "analysis": NAME,
        "seed": result.seed,
        "parameters": asdict(result.config),
        "model": {
            "objective": "1/2 ||Phi theta - y||^2 + l2/2 ||theta||^2, Phi = random Fourier "
            "features sqrt(2/p) cos(W x + b), W ~ N(0, I/input_dims), b ~ U[0, 2 pi]",
            "influence": "Delta theta = H^{-1} Phi_G^T r_G; test loss change to first order",
            "exact": "Delta theta = H^{-1} Phi_G^T (I - S_GG)^{-1} r_G (Newton step without G)",
            "dual": "H^{-1} Phi^T = Phi^T (K + l2 I)^{-1}, K = Phi Phi^T (n x n)",
            "errors": "relative to retraining without the removed examples",
            "seconds": "fastest of up to `repeats` runs (one if it took over 1 s) computing"
            " both estimates for both removals, with `blas_threads` BLAS threads",
        },
        "removed": {"single": [result.single], "group": list(result.group)},
        "sweep": [
            {
                "features": row.features,
                "primal_seconds": row.primal_seconds,
                "dual_seconds": row.dual_seconds,
                "fit_gradient_norm": row.fit_gradient_norm,
                **{
                    removal.removal: {
                        "removed": removal.removed,
                        "leverage": removal.leverage,
                        "parameter_change": removal.parameter_change,
                        "test_loss_change": removal.test_loss_change,
                        "retrain_gradient_norm": removal.retrain_gradient_norm,
                        "relative_error": {
                            key: asdict(errors) for key, errors in removal.errors.items()
                        },
                        "dual_vs_primal": removal.dual_vs_primal,
                    }
                    for removal in row.removals
                },
            }
            for row in result.rows
        ],
    }


def write(result: DualInfluenceResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``dual-influence.png`` and ``dual-influence.json``; return their paths.

    The figure has two panels on log scales: the relative error of ``Delta theta``
    against retraining vs p, and the wall time of each form vs p.
    """
    widths = [row.features for row in result.rows]
    figure, (errors_ax, time_ax) = new_figure(2, width=6.0, height=4.4)
    styles = {
        "primal": {"linestyle": "-", "marker": "o", "markersize": 5},
        "dual": {"linestyle": "--", "marker": "x", "markersize": 8},
    }
    colours = {
        ("single", "influence"): "tab:blue",
        ("group", "influence"): "tab:orange",
        ("single", "exact"): "tab:green",
        ("group", "exact"): "tab:red",
    }
    floor = np.finfo(float).eps / 10  # an exact zero cannot be drawn on a log axis
    for (removal, kind), colour in colours.items():
        for form, style in styles.items():
            values = [
                max(row.removal(removal).errors[f"{form}_{kind}"].parameters, floor)
                for row in result.rows
            ]
            size = result.config.group_size if removal == "group" else 1
            name = "first-order influence" if kind == "influence" else "exact (Newton/LOO)"
            errors_ax.plot(
                widths, values, color=colour, label=f"{name}, {form}, remove {size}", **style
            )
    leverage = [row.removal("single").leverage for row in result.rows]
    errors_ax.plot(
        widths,
        leverage,
        color="grey",
        linestyle=":",
        label="leverage $S_{jj}$ of the single example",
    )
    time_ax.plot(
        widths,
        [row.primal_seconds for row in result.rows],
        color="black",
        label="primal: p x p Hessian",
        **styles["primal"],
    )
    time_ax.plot(
        widths,
        [row.dual_seconds for row in result.rows],
        color="tab:purple",
        label="dual: n x n Gram",
        **styles["dual"],
    )
    n_train = result.config.n_train
    for ax in (errors_ax, time_ax):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(n_train, color="grey", linewidth=0.8)
        ax.text(
            n_train * 1.06,
            0.8,
            f"p = n = {n_train}",
            transform=ax.get_xaxis_transform(),
            ha="left",
            fontsize=8,
            color="grey",
        )
        ax.set_xlabel("parameter count p (random features)")
        ax.grid(alpha=0.3, which="both")
    errors_ax.set_ylabel(r"relative error of $\Delta\theta$ vs retraining")
    errors_ax.set_title("Estimated parameter change after removal", fontsize=10)
    errors_ax.legend(fontsize=7, ncol=2, loc="center left")
    time_ax.set_ylabel("wall time, both removals [s]")
    time_ax.set_title("Cost of the two forms", fontsize=10)
    time_ax.legend(fontsize=8)
    figure.suptitle(
        f"Influence of removing training examples from ridge regression "
        f"(n = {n_train}, l2 = {result.config.l2:g}, seed {result.seed})",
        fontsize=10,
    )
    png = save_png(figure, out_dir / f"{NAME}.png")
    return png, write_json(out_dir / f"{NAME}.json", to_json(result))


def summary(result: DualInfluenceResult) -> str:
    """One line per p: worst dual-vs-primal difference, errors against retraining, times."""
    lines = []
    for row in result.rows:
        single, group = row.removal("single"), row.removal("group")
        gap = max(max(single.dual_vs_primal.values()), max(group.dual_vs_primal.values()))
        exact = max(single.errors["dual_exact"].parameters, group.errors["dual_exact"].parameters)
        lines.append(
            f"p={row.features:>5}: dual vs primal {gap:.1e}; vs retraining, influence "
            f"{single.errors['dual_influence'].parameters:.2e} (single) "
            f"{group.errors['dual_influence'].parameters:.2e} (group), exact "
            f"{exact:.1e}; "
            f"primal {row.primal_seconds:.3f} s, dual {row.dual_seconds:.3f} s"
        )
    return "\n".join(lines)
