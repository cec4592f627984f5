"""`fedforget compare`: every method on one original model, rows with metrics and measured costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedforget.arrays import arrays_nbytes, record_nbytes, to_record
from fedforget.comparison import reference_key, run_comparison
from fedforget.config import FederationConfig
from fedforget.metrics import METRIC_NAMES
from fedforget.results import reference_row
from fedforget.task import model_arrays, new_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMALL = "num-partitions=3 num-server-rounds=5 unlearn-at-round=2 local-epochs=1"
METHODS = ["puf-special", "natural", "not", "fedquit"]
CENTRALISED = ["ft", "salun", "output-filter"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    old = os.environ.get("FEDFORGET_CACHE")
    os.environ["FEDFORGET_CACHE"] = str(folder)
    yield folder
    if old is None:
        del os.environ["FEDFORGET_CACHE"]
    else:
        os.environ["FEDFORGET_CACHE"] = old


@pytest.fixture(scope="module")
def config():
    return FederationConfig.from_run_config(
        {
            "num-partitions": 3,
            "num-server-rounds": 5,
            "unlearn-at-round": 2,
            "local-epochs": 1,
            "progress": False,
            "centralised.ft.epochs": 1,
            "centralised.salun.epochs": 1,
        }
    )


@pytest.fixture(scope="module")
def first(cache, config, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, run_comparison(config, out, METHODS, centralised=CENTRALISED)


@pytest.mark.ray
def test_one_row_per_method_with_metrics(first):
    out, results = first
    rows = [r for r in results["rows"] if r["kind"] == "federated"]
    assert [r["method"] for r in rows] == ["original", *METHODS, "retrain"]
    for row in rows:
        assert row["status"] == "ok" and row["targets"] == ["0"]
        assert row["scenario"] == "client" and row["forget_size"] > 0
        for metric in METRIC_NAMES:
            assert 0.0 <= row[metric] <= 1.0
    retrain = rows[-1]
    for row in rows[1:-1]:
        assert row["unlearning_round"] == 3
        assert 1 <= row["recovery_rounds"] <= 3
        assert row["recovered"] == (row["test_acc"] >= retrain["test_acc"])
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    header = (out / "methods.csv").read_text().splitlines()[0]
    assert header.startswith("method,kind,status,forget_size,test_acc,forget_acc,retain_acc")
    assert "cost_server_storage_bytes" in header


@pytest.mark.ray
def test_centralised_rows_unlearn_the_same_forget_set(first):
    """Centralised methods start from the original model and see the targets' data."""
    _, results = first
    rows = {r["method"]: r for r in results["rows"] if r["kind"] == "centralised"}
    assert list(rows) == ["ft", "salun", "output-filter"]
    original = next(r for r in results["rows"] if r["method"] == "original")
    assert rows["ft"]["status"] == rows["salun"]["status"] == "ok"
    for name in ("ft", "salun"):
        row = rows[name]
        assert row["forget_size"] == original["forget_size"] and row["targets"] == ["0"]
        assert row["cost"]["retain_epochs"] > 0 and row["cost"]["wall_s"] >= 0
        assert row["recovery_rounds"] is None
    assert rows["output-filter"]["status"] == "refused"
    assert "class" in rows["output-filter"]["reason"]


@pytest.mark.ray
def test_class_scenario_refuses_federated_methods_and_retrains_without_the_class(
    cache, config, tmp_path
):
    by_class = config.replace(forget_scenario="class", forget_class=3)
    results = run_comparison(
        by_class, tmp_path, ["puf-special"], centralised=["ft", "output-filter"]
    )
    rows = {(r["kind"], r["method"]): r for r in results["rows"]}
    refused = rows[("federated", "puf-special")]
    assert refused["status"] == "refused" and "client scenario" in refused["reason"]
    retrain, original = rows[("federated", "retrain")], rows[("federated", "original")]
    # the reference never saw class 3: it cannot predict it; the original can
    assert retrain["forget_acc"] < 0.05 < 0.5 < original["forget_acc"]
    assert retrain["scenario"] == "class" and retrain["targets"] == []
    # the output filter gives the class exactly zero probability: nothing predicts it
    assert rows[("centralised", "output-filter")]["forget_acc"] == 0.0
    assert rows[("centralised", "ft")]["status"] == "ok"


@pytest.mark.ray
def test_costs_come_from_the_rounds_that_ran(first, config):
    """Bytes and client-epochs per round follow from who was asked to do what."""
    _, results = first
    rows = {r["method"]: r for r in results["rows"]}
    arrays = model_arrays(new_model(config))
    model = record_nbytes([to_record(arrays)])  # serialised arrays, as they travel
    remaining = 2  # clients 1 and 2
    # original and the reference: 2 rounds of every (non-excluded) client, both ways
    assert rows["original"]["cost"]["bytes_down"] == 2 * 3 * model
    assert rows["original"]["cost"]["client_epochs"] == 2 * 3
    assert rows["retrain"]["cost"]["bytes_up"] == 2 * remaining * model
    # PUF-Special (stored): its unlearning round sends nothing and trains nobody
    puf = rows["puf-special"]
    recovery = puf["recovery_rounds"] - 1
    assert puf["cost"]["step_rounds"] == 1
    assert puf["cost"]["bytes_down"] == recovery * remaining * model
    assert puf["cost"]["client_epochs"] == recovery * remaining
    # the latest update of each of the 3 clients, in memory
    assert puf["cost"]["server_storage_bytes"] == 3 * arrays_nbytes(arrays)
    # Natural keeps nothing; FedQUIT sends the model to the target alone in its step
    assert rows["natural"]["cost"]["server_storage_bytes"] == 0
    quit_ = rows["fedquit"]
    assert quit_["cost"]["bytes_down"] == (1 + (quit_["recovery_rounds"] - 1) * remaining) * model


@pytest.mark.ray
def test_second_call_reuses_the_cached_reference(first, cache, config, tmp_path):
    _, results = first
    assert results["timing"]["reference_cached"] is False
    assert reference_key(config) in [p.name for p in (cache / "references").iterdir()]
    out = tmp_path / "again"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedforget.cli",
            "compare",
            "--out",
            str(out),
            "--methods",
            "puf-special,retrain",
            "--centralised",
            "none",
            "--run-config",
            SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FEDFORGET_CACHE": str(cache)},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((out / "results.json").read_text())
    assert again["timing"]["reference_cached"] is True
    assert [r["method"] for r in again["rows"]] == ["original", "puf-special", "retrain"]
    assert reference_row(again)["test_acc"] == reference_row(results)["test_acc"]
    assert "[reference]" not in done.stdout and "puf-special" in done.stdout
    assert "gap" in done.stdout and "stored" in done.stdout


def test_reference_key_changes_with_what_the_reference_computes(config):
    """The cache key follows the reference's training, not the method or the output."""
    key = reference_key(config)
    assert reference_key(config.replace(method="pga", out_dir="/elsewhere")) == key
    assert reference_key(config.replace(api_port=8080, progress=True)) == key
    for changed in (
        config.replace(unlearn_at_round=3),
        config.replace(unlearn_clients="1"),
        config.replace(seed=1),
        config.replace(local_epochs=2),
    ):
        assert reference_key(changed) != key
