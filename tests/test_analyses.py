"""The analyses behind ``fedforget analyse``: ascent-fails and dual-influence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

from fedforget.analyses import ascent_fails, dual_influence
from fedforget.analyses.ascent_fails import AscentFailsConfig
from fedforget.analyses.dual_influence import DualInfluenceConfig
from fedforget.analyses.figures import PNG_SIGNATURE
from fedforget.cli import main

SMALL_SWEEP = DualInfluenceConfig(
    n_train=40, n_test=20, feature_counts=(10, 40, 300), group_size=5, repeats=1
)


def _problem_and_removals(width: int, seed: int = 3):
    problem = dual_influence.make_problem(SMALL_SWEEP, seed)(width)
    return problem, [np.array([7]), np.array([1, 4, 9, 22, 31])]


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def ascent_result() -> ascent_fails.AscentFailsResult:
    return ascent_fails.run(seed=0)


@pytest.fixture(scope="module")
def sweep() -> dual_influence.DualInfluenceResult:
    return dual_influence.run(SMALL_SWEEP, seed=3)


@pytest.mark.parametrize("width", [10, 300])
def test_dual_estimates_equal_primal_ones(width: int) -> None:
    """Below (p=10) and above (p=300) n=40, the n x n form gives the p x p form's numbers."""
    # Prepare
    problem, removals = _problem_and_removals(width)

    # Execute
    primal = dual_influence.primal_estimates(problem, removals)
    dual = dual_influence.dual_estimates(problem, removals)

    # Assert
    for kind in dual_influence.KINDS:
        for ours, theirs in zip(dual[kind], primal[kind], strict=True):
            assert np.linalg.norm(ours.parameters - theirs.parameters) <= 1e-8 * np.linalg.norm(
                theirs.parameters
            )
            assert np.linalg.norm(ours.test_outputs - theirs.test_outputs) <= 1e-8 * np.linalg.norm(
                theirs.test_outputs
            )
            assert ours.test_loss == pytest.approx(theirs.test_loss, rel=1e-8)


def test_ridge_weights_match_scikit_learn() -> None:
    """The ridge fit every comparison starts from is scikit-learn's, for p < n and p > n."""
    for width in (10, 300):
        # Prepare
        problem, _ = _problem_and_removals(width)
        reference = Ridge(alpha=SMALL_SWEEP.l2, fit_intercept=False, solver="svd")

        # Execute
        reference.fit(problem.features, problem.targets)

        # Assert
        np.testing.assert_allclose(problem.weights, reference.coef_, rtol=1e-8, atol=1e-10)


def test_exact_estimate_matches_retraining(sweep: dual_influence.DualInfluenceResult) -> None:
    """Ridge is quadratic and strongly convex: the Newton/leave-out estimate is retraining."""
    for row in sweep.rows:
        for removal in row.removals:
            assert removal.retrain_gradient_norm < 1e-10
            for form in ("primal_exact", "dual_exact"):
                errors = removal.errors[form]
                assert errors.parameters < 1e-8, (row.features, removal.removal, form)
                assert errors.test_outputs < 1e-8
                assert errors.test_loss < 1e-8
            assert max(removal.dual_vs_primal.values()) < 1e-8


def test_first_order_influence_is_off_by_the_leverage(
    sweep: dual_influence.DualInfluenceResult,
) -> None:
    """Removing one point, the first-order estimate is (1 - S_jj) times the exact one."""
    for row in sweep.rows:
        single, group = row.removal("single"), row.removal("group")
        for form in ("primal_influence", "dual_influence"):
            assert single.errors[form].parameters == pytest.approx(single.leverage, abs=1e-8)
            assert single.errors[form].test_outputs == pytest.approx(single.leverage, abs=1e-8)
            assert group.errors[form].parameters > 1e-3  # first order is not exact for a group
        assert 0.0 < single.leverage < 1.0


def test_logistic_optimum_matches_scikit_learn() -> None:
    """The Newton solution of mean logistic loss + l2/2 ||w||^2 is scikit-learn's optimum."""
    # Prepare
    config = AscentFailsConfig()
    rng = np.random.default_rng(5)
    features, labels = ascent_fails.sample(rng, 500, config, "shared")
    reference = LogisticRegression(
        C=1.0 / (len(labels) * config.l2), fit_intercept=False, tol=1e-12, max_iter=10_000
    )

    # Execute
    weights, gradient_norm = ascent_fails.fit_logistic(features, labels, config.l2)
    reference.fit(features, labels)

    # Assert
    assert gradient_norm < 1e-12
    np.testing.assert_allclose(weights, reference.coef_[0], rtol=1e-6, atol=1e-8)


def test_descent_ascent_ends_further_only_when_correlated(
    ascent_result: ascent_fails.AscentFailsResult,
) -> None:
    """Correlated forget set: DA ends further than the original; independent: closer."""
    correlated = ascent_result.case("correlated")
    independent = ascent_result.case("independent")

    assert correlated.final_distance > 1.5 * correlated.original_distance
    assert independent.final_distance < 0.8 * independent.original_distance
    # the independent trajectory passes close to the retrained model before settling
    assert independent.min_distance < 0.1 * independent.original_distance
    # the correlated limit is the retrained model under the heavier weight l2 / (1 - alpha)
    assert correlated.final_distance == pytest.approx(ascent_result.heavier_l2_distance, rel=0.2)
    for case in ascent_result.cases:
        assert case.final_gradient_norm < 1e-8  # the iterates have converged
        assert case.original_gradient_norm < 1e-12
        assert case.distances[-1] == case.final_distance
        assert len(case.distances) == ascent_result.config.iterations + 1


def test_descent_ascent_contrast_holds_for_another_seed() -> None:
    """The contrast is not one seed's accident."""
    result = ascent_fails.run(seed=7)

    assert result.case("correlated").ends_further
    assert not result.case("independent").ends_further


@pytest.mark.slow
def test_cli_analyse_ascent_fails_writes_png_and_json(tmp_path: Path) -> None:
    """``fedforget analyse ascent-fails`` writes a readable PNG and a strict JSON."""
    import matplotlib.image

    # Execute
    code = main(["analyse", "ascent-fails", "--out", str(tmp_path), "--seed", "1"])

    # Assert
    assert code == 0
    png = tmp_path / "ascent-fails.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels.std() > 0.01  # not a blank canvas
    data = _strict_json(tmp_path / "ascent-fails.json")
    assert data["analysis"] == "ascent-fails" and data["seed"] == 1
    assert data["parameters"]["step_size"] == AscentFailsConfig().step_size
    assert set(data["cases"]) == {"correlated", "independent"}
    for case in data["cases"].values():
        assert {"original_distance", "final_distance", "min_distance", "curve"} <= set(case)
        curve = case["curve"]
        assert curve["iteration"][0] == 0
        assert curve["iteration"][-1] == AscentFailsConfig().iterations
        assert curve["distance"][0] == case["original_distance"]
        assert curve["distance"][-1] == case["final_distance"]
    assert data["cases"]["correlated"]["ends_further_than_original"] is True
    assert data["cases"]["independent"]["ends_further_than_original"] is False


@pytest.mark.slow
def test_cli_analyse_dual_influence_writes_png_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fedforget analyse dual-influence`` writes a readable PNG and the sweep table as JSON."""
    import matplotlib.image

    # Prepare: the CLI's default sweep takes ~30 s; run the same code on the small one
    full_run = dual_influence.run
    monkeypatch.setattr(
        dual_influence, "run", lambda config=None, seed=0: full_run(SMALL_SWEEP, seed)
    )

    # Execute
    code = main(["analyse", "dual-influence", "--out", str(tmp_path), "--seed", "2"])

    # Assert
    assert code == 0
    png = tmp_path / "dual-influence.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(png).shape[0] > 300
    data = _strict_json(tmp_path / "dual-influence.json")
    assert data["analysis"] == "dual-influence" and data["seed"] == 2
    assert [row["features"] for row in data["sweep"]] == list(SMALL_SWEEP.feature_counts)
    for row in data["sweep"]:
        assert row["primal_seconds"] > 0 and row["dual_seconds"] > 0
        for removal in ("single", "group"):
            errors = row[removal]["relative_error"]
            assert set(errors) == set(dual_influence.ESTIMATORS)
            assert set(errors["dual_exact"]) == {"parameters", "test_outputs", "test_loss"}
            assert errors["dual_exact"]["parameters"] < 1e-8
    assert len(data["removed"]["group"]) == SMALL_SWEEP.group_size


def test_cli_refuses_an_unknown_analysis(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown name is an argparse error listing the choices."""
    with pytest.raises(SystemExit) as exit_info:
        main(["analyse", "no-such-analysis"])

    assert exit_info.value.code == 2
    assert "ascent-fails" in capsys.readouterr().err
