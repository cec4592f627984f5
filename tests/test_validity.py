"""The retraining noise floor, verdicts, offline U-LiRA and where results were computed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedforget.experiment.report import write_report
from fedforget.experiment.results import long_rows, summarise, write_experiment_results
from fedforget.experiment.validity import DIFFERS, NEEDS_REFERENCES, WITHIN
from fedforget.metrics import ulira_offline_auc
from fedforget.provenance import provenance
from fedforget.results import format_table

PNG = b"\x89PNG\r\n\x1a\n"
MACHINE = {"cpu_capability": "AVX2", "torch": "2.0", "flwr": "1.42.0", "numpy": "2.0", "threads": 2}


def _cell(method, targets, seed, forget_acc, kl_forget, kind="federated"):
    return {
        "kind": kind,
        "method": method,
        "status": "ok",
        "targets": [targets],
        "seed": seed,
        "forget_size": 10,
        "forget_acc": forget_acc,
        "kl_forget": kl_forget,
        "cost": {"wall_s": 1.0},
        "provenance": MACHINE,
    }


def _three_references(targets, seed, values, kls):
    names = (("retrain", "federated"), ("retrain-1", "reference"), ("retrain-2", "reference"))
    return [
        _cell(name, targets, seed, value, kl, kind)
        for (name, kind), value, kl in zip(names, values, kls, strict=True)
    ]


def test_floor_gap_and_verdict_per_cell_and_over_cells():
    """Floor = range of the references; gap = |value - their mean|; distances: max and value."""
    cells = [
        *_three_references("0", 0, (0.80, 0.84, 0.82), (0.01, 0.03, 0.02)),
        *_three_references("1", 0, (0.70, 0.71, 0.72), (0.02, 0.02, 0.04)),
        _cell("puf-special", "0", 0, 0.83, 0.02),  # gap 0.01 <= floor 0.04; kl 0.02 <= 0.03
        _cell("puf-special", "1", 0, 0.75, 0.05),  # gap 0.04 > floor 0.02; kl 0.05 > 0.04
        _cell("original", "0", 0, 0.99, 0.30),
        _cell("original", "1", 0, 0.98, 0.40),
    ]
    long = {(r["method"], r["targets"], r["metric"]): r for r in long_rows(cells)}
    first = long[("puf-special", "0", "forget_acc")]
    assert first["floor"] == pytest.approx(0.04) and first["gap"] == pytest.approx(0.01)
    assert first["gap_floor"] == pytest.approx(0.25) and first["verdict"] == WITHIN
    second = long[("puf-special", "1", "forget_acc")]
    assert second["gap"] == pytest.approx(0.04) and second["verdict"] == DIFFERS
    kl = long[("puf-special", "0", "kl_forget")]
    assert kl["floor"] == pytest.approx(0.03) and kl["gap"] == pytest.approx(0.02)
    assert long[("puf-special", "1", "kl_forget")]["verdict"] == DIFFERS
    assert long[("puf-special", "0", "cost_wall_s")]["verdict"] == ""
    assert long[("puf-special", "0", "forget_acc")]["machine"].startswith("AVX2")

    summary = {(s.method, s.metric): s for s in summarise(list(long.values()))}
    puf = summary[("puf-special", "forget_acc")]
    assert puf.noise_gap == pytest.approx(0.025) and puf.noise_floor == pytest.approx(0.03)
    assert puf.gap_floor == pytest.approx(0.025 / 0.03) and puf.verdict == WITHIN
    assert puf.within_share == pytest.approx(0.5)
    half = 12.706204736174698 * np.std([0.01, 0.04], ddof=1) / math.sqrt(2)  # t(0.975, 1)
    assert puf.noise_gap_ci_low == pytest.approx(0.025 - half)
    assert puf.noise_gap_ci_high == pytest.approx(0.025 + half)
    assert summary[("original", "forget_acc")].verdict == DIFFERS
    assert summary[("puf-special", "cost_wall_s")].verdict == ""


def test_one_reference_says_what_the_floor_needs_and_writes_no_nan(tmp_path):
    cells = [
        _cell("retrain", "0", 0, 0.8, 0.0),
        _cell("puf-special", "0", 0, 0.9, 0.1),
    ]
    long = long_rows(cells)
    judged = [r for r in long if r["metric"] == "forget_acc"]
    assert all(r["verdict"] == NEEDS_REFERENCES and r["floor"] is None for r in judged)
    assert judged[1]["gap"] == pytest.approx(0.1)
    write_experiment_results(tmp_path, cells)  # JSON without NaN: allow_nan=False would raise
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {s["verdict"] for s in summary if s["metric"] == "forget_acc"} == {NEEDS_REFERENCES}
    write_report(tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "needs references >= 2" in markdown and "references = K" in markdown
    assert not (tmp_path / "figures" / "verdicts.png").exists()


def test_report_has_the_verdict_table_figure_and_provenance(tmp_path):
    cells = [
        *_three_references("0", 0, (0.80, 0.84, 0.82), (0.01, 0.03, 0.02)),
        *_three_references("0", 1, (0.70, 0.71, 0.72), (0.02, 0.02, 0.04)),
        _cell("puf-special", "0", 0, 0.83, 0.02),
        _cell("puf-special", "0", 1, 0.75, 0.05),
        _cell("ft", "0", 0, 0.5, 0.5, kind="centralised"),
        _cell("ft", "0", 1, 0.5, 0.5, kind="centralised"),
    ]
    write_experiment_results(tmp_path, cells)
    written = {p.name for p in write_report(tmp_path)}
    assert "verdicts.png" in written
    assert (tmp_path / "figures" / "verdicts.png").read_bytes()[:8] == PNG
    markdown = (tmp_path / "report.md").read_text()
    section = markdown.split("## Within retraining noise?")[1]
    assert "3 retrained references" in section
    # puf-special forget_acc: gap (0.01 + 0.04) / 2 over floor (0.04 + 0.02) / 2
    assert "| puf-special | 0.83" in section and "✓ 1/2" in section
    assert "| ft (c) |" in section and "✗ 0/2" in section
    assert "retrain-1" not in markdown.split("## Within retraining noise?")[0]
    assert "AVX2, torch 2.0, flwr 1.42.0, numpy 2.0, 2 thread(s): 10 cell(s)" in markdown
    provenance_file = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance_file[0]["cells"] == 10 and provenance_file[0]["cpu_capability"] == "AVX2"


def test_offline_ulira_separates_a_remembering_model_from_a_retrained_one():
    """References' scores per example; a model scoring the forget set higher is detected."""
    rng = np.random.default_rng(0)
    means = rng.normal(0.0, 3.0, size=300)  # per-example difficulty
    references = means + rng.normal(0.0, 0.5, size=(4, 300))
    forget, held = references[:, :100], references[:, 100:]
    retrained = means + rng.normal(0.0, 0.5, size=300)
    remembering = retrained + np.r_[np.full(100, 2.0), np.zeros(200)]
    assert ulira_offline_auc(forget, held, retrained[:100], retrained[100:]) == pytest.approx(
        0.5, abs=0.1
    )
    assert ulira_offline_auc(forget, held, remembering[:100], remembering[100:]) > 0.95
    with pytest.raises(ValueError, match="needs references >= 2"):
        ulira_offline_auc(forget[:1], held[:1], retrained[:100], retrained[100:])


def _result_rows(references: int) -> dict:
    def row(method, kind, test_acc, forget_acc):
        return {
            "method": method,
            "kind": kind,
            "status": "ok",
            "scenario": "backdoor",
            "forget_size": 50,
            "test_acc": test_acc,
            "forget_acc": forget_acc,
            "retain_acc": 0.99,
            "mia_yeom": 0.5,
            "backdoor_asr": 0.05 if method.startswith("retrain") else 0.95,
            "recovery_rounds": None,
            "cost": {
                "rounds": 4,
                "client_epochs": 4,
                "bytes_up": 0,
                "bytes_down": 0,
                "server_storage_bytes": 0,
                "wall_s": 1.0,
            },
        }

    rows = [row("original", "federated", 0.95, 0.99), row("retrain", "federated", 0.95, 0.80)]
    rows += [row(f"retrain-{k}", "reference", 0.96, 0.84) for k in range(1, references)]
    return {"rows": rows, "references": references, "provenance": provenance()}


def test_the_terminal_table_marks_gaps_within_the_floor():
    table = format_table(_result_rows(2))
    original = next(line for line in table.splitlines() if line.startswith("original"))
    # test_acc: floor 0.01, gap |0.95 - 0.955| = 0.005: within; forget_acc: gap 0.17: not
    assert "0.950 (gap 0.005*)" in original and "0.990 (gap 0.170 )" in original
    assert "backdoor_asr" in table.splitlines()[1]
    assert "references (the same data, other training seeds):" in table
    assert "largest difference among the 2 references" in table
    assert "computed on: " in table and "torch" in table
    single = format_table(_result_rows(1))
    assert "*" not in single.split("gap = ")[0]
    assert "retraining noise floor: needs references >= 2 (--references K)" in single
