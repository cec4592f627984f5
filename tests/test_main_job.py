"""The main job and the Flower apps, run as a user runs them (reduced size)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedforget.deploy import executables_first_on_path
from fedforget.metrics import METRIC_NAMES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMALL = "num-partitions=3 num-server-rounds=5 unlearn-at-round=2 local-epochs=1"


def fedforget(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedforget.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


@pytest.mark.ray
def test_main_job_writes_results_json_and_csv(tmp_path):
    out = tmp_path / "out"
    done = fedforget(
        "run", "--out", str(out), "--run-config", SMALL, env={"FEDFORGET_CACHE": str(tmp_path)}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert (
        results["config"]["num-server-rounds"] == 5 and results["config"]["unlearn-clients"] == "0"
    )
    rows = {row["method"]: row for row in results["rows"]}
    assert list(rows) == ["original", "puf-special", "retrain"]
    for row in rows.values():
        assert row["status"] == "ok" and row["targets"] == ["0"]
        for metric in METRIC_NAMES:
            assert 0.0 <= row[metric] <= 1.0
    puf = rows["puf-special"]
    assert puf["unlearning_round"] == 3
    assert 1 <= puf["recovery_rounds"] <= 3
    assert puf["recovered"] == (puf["test_acc"] >= rows["retrain"]["test_acc"])
    assert puf["cost"]["step_rounds"] == 1 and puf["cost"]["rounds"] == puf["recovery_rounds"]
    runs = [r["run"] for r in results["history"]]
    assert runs.count("retrain") == 3  # round 0 (initial) + 2 rounds
    puf_rounds = [r for r in results["history"] if r["run"] == "puf-special"]
    assert [r["phase"] for r in puf_rounds[:4]] == ["initial", "train", "train", "unlearn"]
    assert all("0" not in r["participants"] for r in results["history"] if r["run"] == "retrain")
    assert all("0" not in r["participants"] for r in puf_rounds[3:])
    lines = (out / "methods.csv").read_text().splitlines()
    assert lines[0].startswith(
        "method,kind,status,forget_size,test_acc,forget_acc,retain_acc,mia_yeom"
    )
    gap = abs(rows["original"]["forget_acc"] - rows["retrain"]["forget_acc"])
    original = next(csv.DictReader(lines))  # quoted fields (the machine) may hold commas
    assert float(original["gap_forget_acc"]) == pytest.approx(gap, abs=1e-6)
    assert len((out / "history.csv").read_text().splitlines()) == 1 + len(results["history"])
    assert "[reference] round   1/2" in done.stdout and "round   3/5 unlearn" in done.stdout
    assert "original" in done.stdout and "gap" in done.stdout


def test_flwr_run_runs_the_apps_with_a_client_step_method(tmp_path):
    """`flwr run .` with FedQUIT: its client step travels as the Flower action train.fedquit.

    A test-local FLWR_HOME; the SuperLink it started is stopped.
    """
    flwr_home = tmp_path / "flwr-home"
    out = tmp_path / "flwr-out"
    env = {
        **os.environ,
        "PATH": executables_first_on_path(),  # flwr starts flower-superlink by name
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    flwr = str(Path(sys.executable).with_name("flwr"))
    try:
        done = subprocess.run(
            [
                flwr,
                "run",
                ".",
                "--run-config",
                f"num-partitions=3 num-server-rounds=3 unlearn-at-round=2 "
                f"local-epochs=1 unlearn-clients='2' method='fedquit' out-dir='{out}'",
                "--federation-config",
                "num-supernodes=3",
                "--stream",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        _stop_processes_using(flwr_home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = json.loads((out / "events.json").read_text())
    assert [(e["server_round"], e["clients"], e["method"]) for e in events] == [
        (3, ["2"], "fedquit")
    ]
    history = json.loads((out / "history.json").read_text())
    assert [r["phase"] for r in history] == ["initial", "train", "train", "unlearn"]
    # the target answered its distillation step: a valid reply, not an error
    assert history[3]["actions"] == {"2": "fedquit"} and history[3]["contributors"] == ["2"]
    assert (out / "original_model.npz").is_file() and (out / "final_model.npz").is_file()


def _stop_processes_using(path: Path) -> None:
    """Terminate processes (the detached local SuperLink) whose command line names path."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGTERM)
