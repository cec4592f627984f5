"""`fedforget experiment` and `fedforget report`: cells, resume, aggregation, the report files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedforget.config import ConfigError
from fedforget.experiment.report import write_report
from fedforget.experiment.results import long_rows, summarise, write_experiment_results
from fedforget.experiment.runner import CellKey, read_cells, run_experiment
from fedforget.experiment.spec import load_experiment
from fedforget.federated.federation import read_arrays

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMALL = """
[experiment]
methods = ["puf-special"]
centralised = ["ft"]
targets = [["0"], ["1"]]
seeds = [0]
references = 1

[config]
num-partitions = 3
num-server-rounds = 4
unlearn-at-round = 2
local-epochs = 1
progress = false
centralised.ft.epochs = 1
"""
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("experiment")
    spec = folder / "small.toml"
    spec.write_text(SMALL)
    out = folder / "out"
    computed = run_experiment(spec, out, progress=False)
    return spec, out, computed


@pytest.mark.ray
def test_every_cell_runs_once_and_becomes_rows(first_run):
    _, out, computed = first_run
    names = sorted((k.kind, k.method, k.targets) for k in computed)
    expected = sorted(
        [
            (kind, m, (t,))
            for t in "01"
            for kind, m in (
                ("federated", "retrain"),
                ("federated", "original"),
                ("federated", "puf-special"),
                ("centralised", "ft"),
            )
        ]
    )
    assert names == expected
    cells = list(read_cells(out))
    assert len(cells) == 8 and all(c["status"] == "ok" for c in cells)
    for cell in cells:
        assert cell["forget_size"] > 0 and 0 <= cell["forget_acc"] <= 1
    puf = [c for c in cells if c["method"] == "puf-special"]
    assert all(c["curve"] and c["curve"][0]["after"] == 1 for c in puf)
    long = json.loads((out / "results-long.json").read_text())
    assert {r["metric"] for r in long} >= {"test_acc", "forget_acc", "mia_yeom", "cost_wall_s"}
    assert (out / "summary.csv").is_file() and (out / "curves.csv").is_file()


@pytest.mark.ray
def test_an_interrupted_run_computes_only_the_missing_cells(first_run):
    spec, out, computed = first_run
    # the cells' keys as computed (ft's one-epoch setting makes its cell a variant)
    gone = [
        k
        for k in computed
        if (k.kind, k.method, k.targets)
        in {("federated", "puf-special", ("1",)), ("centralised", "ft", ("0",))}
    ]
    assert len(gone) == 2
    kept = CellKey("federated", "puf-special", ("0",), 0).path(out)
    before = kept.stat().st_mtime_ns
    for key in gone:
        key.path(out).unlink()
    again = run_experiment(spec, out, progress=False)
    assert sorted(again, key=str) == sorted(gone, key=str)
    assert kept.stat().st_mtime_ns == before
    assert run_experiment(spec, out, progress=False) == []


@pytest.mark.ray
def test_a_different_file_for_the_same_results_is_refused(first_run, tmp_path):
    _, out, _ = first_run
    other = tmp_path / "other.toml"
    other.write_text(SMALL.replace("seeds = [0]", "seeds = [0, 1]"))
    with pytest.raises(ConfigError, match=r"different experiment file .*experiment\.seeds differ"):
        run_experiment(other, out, progress=False)


def test_comments_and_the_tune_table_do_not_make_another_experiment(tmp_path):
    from fedforget.experiment.runner import SPEC_FILE, prepare

    spec = tmp_path / "small.toml"
    spec.write_text(SMALL)
    out = tmp_path / "out"
    prepare(spec, out)
    # a comment and a [tune] table: the same cells, resumed; the folder keeps the new text
    edited = "# tuned later\n" + SMALL + "\n[tune]\nvalidation-seeds = [9]\n"
    spec.write_text(edited)
    prepare(spec, out)
    assert (out / SPEC_FILE).read_text() == edited
    spec.write_text(
        edited.replace("seeds = [0]", "seeds = [0, 1]").replace(
            "local-epochs = 1", "local-epochs = 2"
        )
    )
    with pytest.raises(ConfigError) as refused:
        prepare(spec, out)
    assert "config.local-epochs, experiment.seeds differ" in str(refused.value)
    assert (out / SPEC_FILE).read_text() == edited  # the refused file is not kept


def test_experiment_files_are_checked(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SMALL.replace('targets = [["0"], ["1"]]', 'targets = [["7"]]'))
    with pytest.raises(ConfigError, match="must name clients"):
        load_experiment(bad)
    bad.write_text(SMALL.replace("seeds = [0]", "seeds = [0]\nrepeats = 3"))
    with pytest.raises(ConfigError, match="unknown \\[experiment\\] key"):
        load_experiment(bad)
    bad.write_text(SMALL.replace("references = 1", "references = 0"))
    with pytest.raises(ConfigError, match="references must be an integer >= 1"):
        load_experiment(bad)
    each = tmp_path / "each.toml"
    each.write_text(SMALL.replace('targets = [["0"], ["1"]]', 'targets = "each"'))
    assert load_experiment(each).target_sets == (("0",), ("1",), ("2",))
    each.write_text(SMALL.replace("references = 1\n", ""))
    assert load_experiment(each).references == 3  # the default of an experiment file


def _cell(method: str, targets: str, seed: int, forget_acc: float, kind: str = "federated"):
    return {
        "kind": kind,
        "method": method,
        "status": "ok",
        "targets": [targets],
        "seed": seed,
        "forget_size": 10,
        "forget_acc": forget_acc,
        "cost": {"wall_s": 2.0},
    }


def test_aggregation_mean_std_and_paired_confidence_interval():
    cells = [
        _cell("retrain", "0", 0, 0.5),
        _cell("retrain", "1", 0, 0.7),
        _cell("retrain", "0", 1, 0.6),
        _cell("puf-special", "0", 0, 0.6),
        _cell("puf-special", "1", 0, 0.9),
        _cell("puf-special", "0", 1, 0.6),
    ]
    summary = {(s.method, s.metric): s for s in summarise(long_rows(cells))}
    puf = summary[("puf-special", "forget_acc")]
    assert puf.n == 3 and puf.mean == pytest.approx(0.7)
    assert puf.std == pytest.approx(math.sqrt(((0.1) ** 2 + 0.2**2 + 0.1**2) / 2))
    deltas = [0.1, 0.2, 0.0]  # paired with retrain of the same targets and seed
    assert puf.delta_mean == pytest.approx(0.1)
    assert puf.gap_mean == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert puf.delta_ci_low == pytest.approx(0.1 - half)
    assert puf.delta_ci_high == pytest.approx(0.1 + half)
    assert sum(deltas) / 3 == pytest.approx(puf.delta_mean)
    assert summary[("puf-special", "cost_wall_s")].delta_mean is None
    assert summary[("retrain", "forget_acc")].delta_mean == 0.0


def test_report_writes_every_file_from_a_small_results_file(tmp_path):
    cells = [
        _cell("retrain", "0", 0, 0.5),
        _cell("retrain", "1", 0, 0.7),
        {**_cell("puf-special", "0", 0, 0.6), "curve": [{"after": 1, "test_acc": 0.8}]},
        {**_cell("puf-special", "1", 0, 0.9), "curve": [{"after": 1, "test_acc": 0.9}]},
        _cell("ft", "0", 0, 0.4, kind="centralised"),
        _cell("ft", "1", 0, 0.5, kind="centralised"),
        {
            **_cell("scrub", "1", 0, 0.0, kind="centralised"),
            "status": "refused",
            "reason": "diverged: the unlearning loss became nan",
        },
    ]
    write_experiment_results(tmp_path, cells)
    written = write_report(tmp_path)
    names = {p.name for p in written}
    assert names == {"report.md", "report.html", "recovery.png", "gaps.png", "cost.png"}
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG
    markdown = (tmp_path / "report.md").read_text()
    assert "| ft (c) |" in markdown and "puf-special" in markdown
    assert "0.750 ± 0.212 (Δ +0.150" in markdown  # puf-special: mean 0.75, Δ (0.1 + 0.2) / 2
    # a cell without a result is listed with its reason, and stays out of the means
    assert "| scrub (c) | 1/0 | diverged: the unlearning loss became nan |" in markdown
    assert "| scrub (c) |" not in markdown.split("## Cells without a result")[0]
    assert "diverged: the unlearning loss became nan" in (tmp_path / "report.html").read_text()


def test_report_without_results_says_what_to_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fedforget.cli", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2 and "fedforget experiment" in done.stderr


BACKDOOR = """
[experiment]
methods = ["puf-special"]
centralised = ["ft"]
targets = [["0"], ["1"]]
seeds = [0]
scenario = "backdoor"
references = 3

[config]
num-partitions = 3
num-server-rounds = 4
unlearn-at-round = 2
local-epochs = 1
progress = false
centralised.ft.epochs = 1
"""


@pytest.fixture(scope="module")
def backdoor_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backdoor")
    spec = folder / "backdoor.toml"
    spec.write_text(BACKDOOR)
    out = folder / "out"
    return spec, out, run_experiment(spec, out, progress=False)


@pytest.mark.ray
def test_backdoor_experiment_with_three_references_has_floors_and_verdicts(backdoor_run):
    """Three references on the same data, the attack success rate, U-LiRA and the floor."""
    _, out, computed = backdoor_run
    assert sorted((k.kind, k.method, k.targets) for k in computed) == [
        (kind, method, (target,))
        for kind, method in (
            ("centralised", "ft"),
            ("federated", "original"),
            ("federated", "puf-special"),
            ("federated", "retrain"),
            ("reference", "retrain-1"),
            ("reference", "retrain-2"),
        )
        for target in "01"
    ]
    # the target set decides who carries the trigger: each has its own original model
    originals = [read_arrays(out / "originals" / f"seed-0-{t}.npz") for t in "01"]
    assert any(not np.array_equal(originals[0][k], originals[1][k]) for k in originals[0])
    cells = {c["method"]: c for c in read_cells(out) if c["targets"] == ["0"]}
    for cell in cells.values():
        assert cell["references"] == 3 and cell["scenario"] == "backdoor"
        assert 0 <= cell["backdoor_asr"] <= 1 and 0 <= cell["ulira_auc"] <= 1
        assert cell["provenance"]["cpu_capability"]
    # the references differ from one another (their own training seeds), on the same data
    assert cells["retrain"]["forget_size"] == cells["retrain-2"]["forget_size"]
    assert cells["retrain"]["kl_test"] > 0  # a reference is measured against the others
    long = json.loads((out / "results-long.json").read_text())
    rows = {(r["method"], r["metric"]): r for r in long if r["targets"] == "0"}
    asr = [rows[(f"retrain{s}", "backdoor_asr")]["value"] for s in ("", "-1", "-2")]
    floor = rows[("puf-special", "backdoor_asr")]
    assert floor["floor"] == pytest.approx(max(asr) - min(asr))
    assert floor["gap"] == pytest.approx(abs(floor["value"] - sum(asr) / 3))
    assert floor["verdict"] in ("within retraining noise", "differs")
    assert rows[("ft", "ulira_auc")]["floor"] is not None
    write_report(out)
    markdown = (out / "report.md").read_text()
    assert "3 retrained references" in markdown and "backdoor_asr" in markdown
    assert (out / "figures" / "verdicts.png").is_file()


@pytest.mark.ray
def test_a_cell_computed_with_other_references_is_computed_again(backdoor_run):
    spec, out, _ = backdoor_run
    key = CellKey("federated", "puf-special", ("1",), 0)
    row = json.loads(key.path(out).read_text())
    key.path(out).write_text(json.dumps({**row, "references": 1}))
    assert run_experiment(spec, out, progress=False) == [key]
    assert json.loads(key.path(out).read_text())["references"] == 3


def test_a_trigger_that_does_not_fit_is_refused_before_any_training(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(f"{BACKDOOR}backdoor-patch-size = 9\n")
    with pytest.raises(ConfigError, match="backdoor-patch-size=9 does not fit the 8x8 images"):
        run_experiment(spec, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "cells").exists()
