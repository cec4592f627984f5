"""`fedforget tune`: search spaces, the [tune] table, trials on validation cells, settings-from."""

from __future__ import annotations

import json
import math
import shutil
import tomllib

import pytest

from fedforget.cli import main
from fedforget.config import ConfigError
from fedforget.experiment.runner import CellKey, settings_variant
from fedforget.experiment.spec import load_experiment
from fedforget.experiment.tune import Tuner, load_tune, run_tuning
from fedforget.methods import method_class, method_names
from fedforget.methods.centralised import centralised_class, centralised_names
from fedforget.methods.centralised.gradient_ascent import GradientAscent
from fedforget.methods.space import Categorical, IntRange, LogUniform, Uniform, space_problem

PNG = b"\x89PNG\r\n\x1a\n"
TOY = """
[experiment]
methods = ["puf-special"]
centralised = ["ga"]
targets = [["0"]]
seeds = [0]
references = 1
{settings_from}
[config]
num-partitions = 3
num-server-rounds = 3
unlearn-at-round = 2
local-epochs = 1
progress = false

[tune]
validation-targets = [["1"]]
validation-seeds = [0]
trials = {trials}
{methods}
"""


def toy(trials: int = 2, methods: str = "", settings_from: str = "") -> str:
    """The toy experiment file: digits, 3 clients, PUF-Special and gradient ascent."""
    return TOY.format(trials=trials, methods=methods, settings_from=settings_from)


# ------------------------------------------------------------------ spaces
def test_every_builtin_space_fits_its_method():
    classes = [
        *(method_class(n) for n in method_names()),
        *(centralised_class(n) for n in centralised_names()),
    ]
    for cls in classes:
        assert space_problem(cls) == "", cls.name
    # the formerly broken baselines have something to tune; retraining has nothing
    for name in ("iu", "scrub", "ga", "rl", "salun"):
        assert centralised_class(name).space, name
    assert set(method_class("pga").space) >= {"lr", "radius-fraction"}
    assert method_class("fedau").space["original-weight"] == Uniform(0.0, 0.5)
    assert method_class("puf-special").space == {"eta-special": LogUniform(0.25, 20.0)}
    assert not method_class("retrain").space and not centralised_class("retrain").space


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"learning-rate": LogUniform(1e-3, 0.1)}, "centralised.ga.learning-rate is not a setting"),
        ({"lr": LogUniform(0.1, 1e-3)}, "centralised.ga.lr has low 0.1 > high 0.001"),
        ({"lr": LogUniform(0.0, 0.1)}, "centralised.ga.lr is log-scaled, so its low must be > 0"),
        ({"lr": LogUniform(1e-3, 1e7)}, "centralised.ga.lr reaches 10000000.0, which ga refuses"),
        ({"stop-forget-acc": Uniform(0.5, 1.5)}, "centralised.ga.stop-forget-acc reaches 1.5"),
        (
            {"lr": IntRange(1, 3)},
            "centralised.ga.lr is an integer range, but the setting is a float",
        ),
        ({"batch-size": Uniform(8.0, 64.0)}, "centralised.ga.batch-size is a float range"),
        ({"lr": LogUniform(0.02, 0.1)}, "centralised.ga.lr leaves out the default 0.01"),
        ({"lr": Categorical(("fast",))}, "offers 'fast', not a float"),
    ],
)
def test_a_space_that_does_not_fit_its_method_is_refused_naming_the_key(space, message):
    assert message in space_problem(GradientAscent, space)


def test_a_bad_space_is_refused_before_any_trial(tmp_path, monkeypatch):
    monkeypatch.setattr(GradientAscent, "space", {"lr": LogUniform(1e-3, 1e7)})
    path = tmp_path / "toy.toml"
    path.write_text(toy())
    with pytest.raises(ConfigError, match=r"centralised\.ga\.lr reaches 10000000\.0"):
        run_tuning(path, tmp_path / "tune")
    assert not (tmp_path / "tune").exists()  # refused before anything ran


# ------------------------------------------------------------------ [tune]
def test_validation_cells_that_are_test_cells_are_refused_naming_them(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(
        toy().replace('validation-targets = [["1"]]', 'validation-targets = [["1"], ["0"]]')
    )
    with pytest.raises(ConfigError, match=r"validation cell\(s\) targets \['0'\] seed 0 are test"):
        load_tune(path, load_experiment(path))
    # another seed makes the same target set a validation cell
    path.write_text(
        toy()
        .replace('validation-targets = [["1"]]', 'validation-targets = [["0"]]')
        .replace("validation-seeds = [0]", "validation-seeds = [7]")
    )
    assert load_tune(path, load_experiment(path)).validation_seeds == (7,)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("validation-seeds = [0]", ""), "needs validation-seeds"),
        (("trials = 2", "trials = 0"), "trials must be an integer >= 1"),
        (("trials = 2", "trials = 2\nbudget = 3"), "unknown \\[tune\\] key\\(s\\) budget"),
        (("trials = 2", 'trials = 2\nmethods = ["scrub"]'), "names 'scrub', which the experiment"),
        (('[["1"]]', '[["9"]]'), "\\[tune\\] validation-targets \\['9'\\] must name clients"),
        (("trials = 2", 'trials = 2\ndirection = "down"'), "direction must be"),
        (("trials = 2", "trials = 2\nreferences = 0"), "\\[tune\\] references must be"),
    ],
)
def test_bad_tune_tables_are_refused(tmp_path, change, message):
    path = tmp_path / "toy.toml"
    path.write_text(toy().replace(*change))
    with pytest.raises(ConfigError, match=message):
        load_tune(path, load_experiment(path))


def test_tune_references_set_the_validation_cells_and_keep_the_study_bound(tmp_path):
    """[tune] references: the validation cells' K, whatever the experiment's own K."""
    from fedforget.experiment.tune import bind, validation_spec

    path = tmp_path / "toy.toml"
    path.write_text(toy().replace("trials = 2", "trials = 2\nreferences = 3"))
    spec = load_experiment(path)
    assert spec.references == 1
    assert validation_spec(spec, load_tune(path, spec)).references == 3
    bind(path, tmp_path / "tune")
    # the experiment's K and settings-from may change while the validation cells' K stays
    path.write_text(
        toy(settings_from='settings-from = "tune/tuned.toml"')
        .replace("references = 1", "references = 2")
        .replace("trials = 2", "trials = 5\nreferences = 3")
    )
    bind(path, tmp_path / "tune")
    # without [tune] references the validation cells would use the experiment's K = 2
    path.write_text(toy().replace("references = 1", "references = 2"))
    with pytest.raises(ConfigError, match="holds the tuning of a different experiment"):
        bind(path, tmp_path / "tune")


def test_the_cli_refuses_a_bad_tune_table_in_one_line(tmp_path, capsys):
    path = tmp_path / "toy.toml"
    path.write_text(toy().replace("[tune]", "[tuning]"))
    assert main(["tune", str(path), "--out", str(tmp_path / "tune")]) == 2
    assert "has no [tune] table" in capsys.readouterr().err


def test_settings_from_refuses_a_missing_file_and_a_conflicting_config(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(toy(settings_from='settings-from = "nowhere/tuned.toml"'))
    with pytest.raises(ConfigError, match="run `fedforget tune` first"):
        load_experiment(path)
    (tmp_path / "tuned.toml").write_text(
        '[tune]\n[centralised."ga"]\ntable = "centralised.ga"\nsettings = { "lr" = 0.02 }\n'
    )
    path.write_text(
        toy(settings_from='settings-from = "tuned.toml"') + "[config.centralised.ga]\nlr = 0.05\n"
    )
    with pytest.raises(ConfigError, match=r"sets centralised\.ga\.lr = 0\.05, but settings-from"):
        load_experiment(path)


# ------------------------------------------------------------------ the real thing
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """`fedforget tune` on the toy (2 trials per method), then the experiment with its choice."""
    folder = tmp_path_factory.mktemp("tune")
    spec = folder / "toy.toml"
    spec.write_text(toy(settings_from='settings-from = "tune/tuned.toml"'))
    assert main(["tune", str(spec), "--out", str(folder / "tune")]) == 0
    assert main(["experiment", str(spec), "--out", str(folder / "experiment")]) == 0
    return folder


@pytest.mark.ray
def test_tuning_scores_trials_on_the_validation_cells_and_writes_tuned_toml(tuned):
    out = tuned / "tune"
    document = tomllib.loads((out / "tuned.toml").read_text())
    assert document["tune"]["validation-targets"] == [["1"]]
    assert document["tune"]["validation-references"] == 1
    # the tuning's own report, readable before the tuned experiment runs
    report = (out / "tuning.md").read_text()
    assert report.startswith("# Tuning: toy\n") and "## How each method was set" in report
    assert "| puf-special | eta-special:" in report and "| ga (c) | lr:" in report
    assert (out / "figures" / "tuning.png").read_bytes()[:8] == PNG
    cells = out / "cells" / "seed-0" / "1"
    reference = json.loads((cells / "federated-retrain.json").read_text())
    for kind, name, space in (
        ("federated", "puf-special", {"eta-special"}),
        ("centralised", "ga", {"lr", "max-epochs", "stop-forget-acc"}),
    ):
        entry = document[kind][name]
        assert entry["budget"] == 2 and len(entry["trial-scores"]) == 2
        assert set(entry["space"]) == space and set(entry["settings"]) == space
        # trial 0 is the paper's defaults, scored on the cell computed with them
        default = json.loads((cells / f"{kind}-{name}.json").read_text())
        assert entry["trial-scores"][0] == pytest.approx(default["avg_gap"])
        assert entry["default-score"] == pytest.approx(default["avg_gap"])
        # trial 1's settings have a cell of their own: never the defaults' cell
        variants = sorted(cells.glob(f"{kind}-{name}@*.json"))
        assert len(variants) == 1
        other = json.loads(variants[0].read_text())
        assert other["settings"] != default["settings"]
        assert entry["trial-scores"][1] == pytest.approx(other["avg_gap"])
        feasible = [
            s
            for s, f, row in zip(
                entry["trial-scores"], entry["trial-feasible"], (default, other), strict=True
            )
            if f and row["test_acc"] >= reference["test_acc"] - 0.01
        ]
        assert entry["feasible"] == bool(feasible)
        if feasible:
            assert entry["score"] == pytest.approx(min(feasible))


@pytest.mark.ray
def test_the_experiment_runs_with_the_tuned_settings_and_reports_them(tuned):
    document = tomllib.loads((tuned / "tune" / "tuned.toml").read_text())
    spec = load_experiment(tuned / "toy.toml")
    chosen = document["centralised"]["ga"]["settings"]
    assert spec.config.settings_of("centralised.ga") == {
        **GradientAscent.defaults,
        **chosen,
    }
    variant = settings_variant(spec.config, "centralised", "ga")
    assert bool(variant) == any(GradientAscent.defaults[k] != v for k, v in chosen.items())
    out = tuned / "experiment"
    row = json.loads(CellKey("centralised", "ga", ("0",), 0, variant).path(out).read_text())
    assert row["status"] == "ok" and row["targets"] == ["0"]
    report = (out / "report.md").read_text()
    assert "## How each method was set" in report
    assert "| ga (c) | lr: log-uniform [0.0001, 0.1]" in report
    # the test cells are set against the tuning's constraint: a table, or the sentence for none
    assert "### Test accuracy against the tuning's constraint" in report
    assert (out / "figures" / "tuning.png").read_bytes()[:8] == PNG
    assert "How each method was set" in (out / "report.html").read_text()


@pytest.mark.ray
def test_a_killed_tuning_resumes_and_a_diverging_trial_fails_without_stopping_it(
    tuned, tmp_path, monkeypatch
):
    """A trial left running (what a killed tuning leaves), then one whose loss is not finite."""
    out = tmp_path / "tune"
    shutil.copytree(tuned / "tune", out)
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    path = tmp_path / "toy.toml"
    path.write_text(
        toy(trials=4, methods='methods = ["ga"]', settings_from='settings-from = "tune/tuned.toml"')
    )
    monkeypatch.setattr(
        GradientAscent,
        "space",
        {
            **GradientAscent.space,
            "lr": LogUniform(1e-4, 1e5),
            "stop-forget-acc": Uniform(0.0, 0.99),
        },
    )
    spec = load_experiment(path, settings_from=False)
    tuner = Tuner(spec, load_tune(path, spec), out, progress=False)
    study = tuner.study("centralised", "ga", 2)
    killed = study.ask()  # left running, as a killed tuning leaves its trial
    killed.suggest_float("lr", 1e-4, 1e5, log=True)
    killed.suggest_float("max-epochs", 1.0, 10.0)
    killed.suggest_float("stop-forget-acc", 0.0, 0.99)
    # an ascent at lr 1e5 that never stops early: its loss overflows
    study.enqueue_trial({"lr": 1e5, "max-epochs": 10.0, "stop-forget-acc": 0.0})
    entries = run_tuning(path, out, progress=False)
    from optuna.trial import TrialState

    trials = tuner.study("centralised", "ga").get_trials()
    assert [t.state for t in trials if t.state == TrialState.RUNNING] == []
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert [t.number for t in interrupted] == [killed.number]
    # the interrupted trial ran again with its settings, and counts once
    again = [t for t in trials if t.params == killed.params and not t.user_attrs.get("interrupted")]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    (entry,) = entries
    assert entry["budget"] == 4 and len(entry["trial-scores"]) == 4
    # lr 1e5 diverges (its loss, or the model's outputs, not finite): recorded failed with
    # the reason, and the tuning went on
    assert len(entry["failed"]) == 1 and "diverged: " in entry["failed"][0]
    assert math.isnan(entry["trial-scores"][2]) and not math.isnan(entry["trial-scores"][3])
    assert entry["settings"]["lr"] != 1e5
    # the cells of the earlier trials were reused, not computed again
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


@pytest.mark.ray
def test_centralised_studies_in_parallel_choose_and_score_exactly_as_one_after_another(
    tuned, tmp_path
):
    """Three centralised methods tuned with 1 worker and with 2: every trial the same."""
    path = tmp_path / "toy.toml"
    path.write_text(
        toy(trials=3, methods='methods = ["scrub", "rl", "ga"]').replace(
            'centralised = ["ga"]', 'centralised = ["ga", "scrub", "rl"]'
        )
    )
    spec = load_experiment(path, settings_from=False)
    tune = load_tune(path, spec)
    studies = {}
    for workers in (1, 2):
        out = tmp_path / f"workers-{workers}"
        shutil.copytree(tuned / "tune", out)  # the originals and the references' cells
        (out / "optuna.db").unlink()
        tuner = Tuner(spec, tune, out, num_cpus=workers, progress=False)
        assert tuner.workers(3) == workers
        tuner.run()
        studies[workers] = {
            name: tuner.study("centralised", name).get_trials() for name in ("scrub", "rl", "ga")
        }
        entries = tomllib.loads((out / "tuned.toml").read_text())["centralised"]
        assert set(entries) == {"scrub", "rl", "ga"}
        if workers == 1:
            sequential = entries
        else:
            assert entries == sequential  # the chosen settings, the scores, the failed trials
    for name in ("scrub", "rl", "ga"):
        one, two = studies[1][name], studies[2][name]
        # each study holds its own 3 trials, never another method's
        assert [t.number for t in two] == [0, 1, 2]
        assert all(set(t.params) == set(centralised_class(name).space) for t in two)
        assert [t.state for t in two] == [t.state for t in one]
        assert [t.params for t in two] == [t.params for t in one]
        assert [t.values for t in two] == [t.values for t in one]
        assert [t.user_attrs for t in two] == [t.user_attrs for t in one]
        # trial 0 is the defaults, the others TPE's seeded proposals
        assert one[0].user_attrs["paper-default"] and one[1].params != one[2].params

    def spans(run: dict) -> list[tuple]:
        return [(t[0].datetime_start, t[-1].datetime_complete) for t in run.values()]

    def overlapping(run: dict) -> bool:
        return any(a[0] < b[1] and b[0] < a[1] for a in spans(run) for b in spans(run) if a != b)

    # one worker ran the studies one after another; two ran some at the same time
    assert not overlapping(studies[1]) and overlapping(studies[2])


def test_the_figure_follows_the_best_feasible_score_and_the_table_says_why_none():
    from fedforget.experiment.tune_report import best_so_far, tuning_rows

    curve = best_so_far([0.5, math.nan, 0.3, 0.1], [True, False, True, False], minimize=True)
    assert curve == [0.5, 0.5, 0.3, 0.3]  # 0.1 broke the test-accuracy constraint
    assert best_so_far([0.5, 0.7], [True, True], minimize=False) == [0.5, 0.7]
    (row,) = tuning_rows(
        {
            "centralised": {
                "trw": {
                    "space": {"tilt": "log-uniform [0.5, 10]"},
                    "budget": 1,
                    "settings": {},
                    "score": math.nan,
                    "feasible": False,
                    "default-score": math.nan,
                    "default-feasible": False,
                    "failed": ["trial 0: trw serves the class scenario(s), not client"],
                }
            }
        }
    )
    assert row[0] == "trw (c)" and row[2] == "1 (1 failed)"
    assert row[4] == "no result (trial 0: trw serves the class scenario(s), not client)"


def test_the_report_says_why_a_method_breaks_the_test_accuracy_constraint():
    from fedforget.experiment.tune_report import below_constraint

    def test_acc(kind: str, method: str, delta: float) -> dict:
        return {
            "kind": kind,
            "method": method,
            "metric": "test_acc",
            "delta_mean": delta,
            "delta_ci_low": delta - 0.01,
            "delta_ci_high": delta + 0.01,
        }

    summary = [
        test_acc("federated", "original", -0.5),  # a reference, not a method
        test_acc("federated", "puf-special", -0.01),  # exactly at the constraint: within
        test_acc("federated", "mode", -0.02),
        test_acc("centralised", "neggrad-plus", -0.03),
        test_acc("centralised", "ga", -0.2),
        {**test_acc("federated", "pga", -0.05), "delta_ci_low": None, "delta_ci_high": None},
        {**test_acc("centralised", "ga", -0.9), "metric": "forget_acc"},
    ]
    tuned = {
        "tune": {"max-test-drop": 0.01},
        "federated": {"puf-special": {"feasible": True}},
        "centralised": {"neggrad-plus": {"feasible": False}, "ga": {"feasible": True}},
    }
    assert below_constraint(summary, tuned) == [
        ["mode", "-0.020 [-0.030, -0.010]", "not tuned: its paper's settings"],
        [
            "neggrad-plus (c)",
            "-0.030 [-0.040, -0.020]",
            "no setting in its space kept test accuracy on the validation cells",
        ],
        [
            "ga (c)",
            "-0.200 [-0.210, -0.190]",
            "its chosen setting kept test accuracy on the validation cells, "
            "not on these test cells",
        ],
        ["pga", "-0.050 (one cell: no interval)", "not tuned: its paper's settings"],
    ]


def test_the_terminal_names_each_choice_and_why_a_method_has_none():
    from fedforget.cli import tuning_lines

    entries = [
        {
            "kind": "federated",
            "method": "pga",
            "settings": {"lr": 0.1},
            "score": 0.00431,
            "default-score": 0.00784,
            "feasible": True,
        },
        {
            "kind": "centralised",
            "method": "neggrad-plus",
            "settings": {},
            "score": 0.019,
            "default-score": 0.019,
            "feasible": False,
        },
        {
            "kind": "centralised",
            "method": "trw",
            "settings": {},
            "score": math.nan,
            "default-score": math.nan,
            "feasible": False,
            "failed": ["trial 0: trw serves the class scenario(s), not client", "trial 1: ..."],
        },
        {"kind": "federated", "method": "mode", "settings": {}, "score": math.nan},
    ]
    assert tuning_lines(entries) == [
        "tune: federated pga: {'lr': 0.1} scores 0.0043 (paper defaults 0.0078)",
        "tune: centralised neggrad-plus: {} scores 0.0190 (paper defaults 0.0190)"
        " (no trial kept test accuracy)",
        "tune: centralised trw: no result (trial 0: trw serves the class scenario(s), not client)",
        "tune: federated mode: no result (no trial ran)",
    ]
