"""The recipe for a new metric (docs/extending.md): one function, one registry line, one test.

A toy metric registered from outside the package reaches every output of a
real ``fedforget compare``: the rows, ``methods.csv``, the long format and the
summary, the terminal table and the report made from the results folder.
"""

from __future__ import annotations

import csv
import json

import pytest

from fedforget.config import ConfigError, FederationConfig
from fedforget.experiment.commands import run_comparison
from fedforget.experiment.evaluation import Evaluator
from fedforget.experiment.report import write_report
from fedforget.experiment.spec import load_experiment
from fedforget.experiment.tables import format_table
from fedforget.metrics import (
    METRICS,
    Metric,
    MetricContext,
    MetricInfo,
    Splits,
    metric_info,
    register,
    unregister,
)
from fedforget.task import model_arrays, new_model

# the recipe: the metric's info and its function ...
FORGET_CONFIDENCE = MetricInfo(
    name="toy_forget_confidence",
    description="mean top-class probability on the forget set",
    kind="probability",
    ideal="the retrained model's",
    direction="retrain",
    tasks=("classification",),
)


def forget_confidence(context: MetricContext, splits: Splits) -> float:
    """Mean over the forget examples of the unlearned model's largest class probability."""
    return float(context.class_outputs(context.unlearned, splits, "forget").probs.max(1).mean())


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A small comparison with the toy metric registered (the recipe's one registry line)."""
    register(Metric(FORGET_CONFIDENCE, forget_confidence))
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("compare")
    config = FederationConfig.from_run_config(
        {
            "num-partitions": 3,
            "num-server-rounds": 3,
            "unlearn-at-round": 1,
            "local-epochs": 1,
            "progress": False,
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDFORGET_CACHE", str(cache))
        results = run_comparison(config, out, ["natural"], centralised=["ft"])
    yield out, results
    unregister(FORGET_CONFIDENCE.name)


@pytest.mark.ray
def test_the_metric_is_in_every_row_and_file(compared):
    out, results = compared
    rows = [r for r in results["rows"] if r["status"] == "ok"]
    assert {r["method"] for r in rows} == {"original", "natural", "retrain", "ft"}
    for row in rows:
        # the value the function gives for the row's model: a probability, not a constant
        assert 0.1 < row["toy_forget_confidence"] <= 1.0
    values = {r["method"]: r["toy_forget_confidence"] for r in rows}
    assert len(set(values.values())) == len(values)  # each model its own value
    with (out / "methods.csv").open() as handle:
        by_method = {r["method"]: r for r in csv.DictReader(handle)}
    assert float(by_method["natural"]["toy_forget_confidence"]) == pytest.approx(
        values["natural"], abs=1e-6
    )
    assert float(by_method["natural"]["gap_toy_forget_confidence"]) == pytest.approx(
        abs(values["natural"] - values["retrain"]), abs=1e-6
    )
    long = json.loads((out / "results-long.json").read_text())
    toy = {r["method"]: r["value"] for r in long if r["metric"] == "toy_forget_confidence"}
    assert toy == pytest.approx(values)
    summary = json.loads((out / "summary.json").read_text())
    natural = next(
        s for s in summary if s["method"] == "natural" and s["metric"] == "toy_forget_confidence"
    )
    assert natural["delta_mean"] == pytest.approx(values["natural"] - values["retrain"])


@pytest.mark.ray
def test_the_metric_is_in_the_terminal_table_and_the_report(compared):
    out, results = compared
    lines = format_table(results).splitlines()
    at = next(i for i, line in enumerate(lines) if "toy_forget_confidence" in line.split())
    column = lines[at].split().index("toy_forget_confidence")
    natural = next(line for line in lines[at:] if line.startswith("natural "))
    assert float(natural.split()[column]) == pytest.approx(
        results["rows"][1]["toy_forget_confidence"], abs=5e-4
    )
    write_report(out)
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| method |"))
    assert "toy_forget_confidence" in header.split(" | ")
    assert "toy_forget_confidence" in (out / "report.html").read_text()


def test_register_refuses_a_taken_name_and_unregister_removes_the_metric():
    with pytest.raises(ValueError, match="registered already"):
        register(Metric(METRICS["test_acc"].info, forget_confidence))
    info = MetricInfo("toy_other", "a toy", "probability", "the retrained model's", "retrain")
    register(Metric(info, forget_confidence))
    assert metric_info("toy_other") is info
    unregister("toy_other")
    assert "toy_other" not in METRICS


EXPERIMENT = """
[experiment]
methods = ["natural"]
centralised = []
targets = [["0"]]
seeds = [0]
references = 1
{metrics}

[config]
num-partitions = 3
num-server-rounds = 3
unlearn-at-round = 1
"""


def test_an_experiment_file_names_its_metrics_and_rows_carry_them_with_the_headline(tmp_path):
    """``metrics = [...]`` narrows each row to those and the headline; unknown names refused."""
    path = tmp_path / "named.toml"
    path.write_text(EXPERIMENT.format(metrics='metrics = ["kl_test", "svc_mia_prob"]'))
    spec = load_experiment(path)
    assert spec.metrics == ("kl_test", "svc_mia_prob")
    path.write_text(EXPERIMENT.format(metrics=""))
    assert load_experiment(path).metrics is None  # default: every metric that applies
    config = spec.cell_config(("0",), 0)
    models = [model_arrays(new_model(config.replace(seed=s))) for s in (1, 2, 3)]
    named = Evaluator(config, models[1:2], models[2], spec.metrics).values(models[0])
    assert sorted(named) == sorted(
        ["test_acc", "forget_acc", "retain_acc", "mia_yeom", "kl_test", "svc_mia_prob"]
    )
    every = Evaluator(config, models[1:2], models[2]).values(models[0])
    assert {"test_loss", "js_forget", "avg_gap", "relearn_steps"} <= set(every)
    assert {k: every[k] for k in named} == named  # the same values, selection or not
    path.write_text(EXPERIMENT.format(metrics='metrics = ["kl_tset"]'))
    with pytest.raises(ConfigError, match="unknown metric\\(s\\) kl_tset; registered: "):
        load_experiment(path)
