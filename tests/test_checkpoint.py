"""Checkpoints: written atomically, never loaded half-written, resumed to the same final model.

The resume tests run real federations (Flower's Ray simulation) as separate
processes (``tests/resume_job.py``), kill one with SIGKILL right after the
checkpoint of its unlearning round, start it again on the same state-dir and
compare its final model with an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedforget.api.sqlite_queue import SQLiteRequestQueue
from fedforget.config import FederationConfig
from fedforget.federated.federation import build_strategy, read_arrays
from fedforget.requests import UnlearningRequest
from fedforget.state.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatch,
    checkpoint_path,
    config_differences,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)
from fedforget.state.files import read_tensors, temporary_path

ROOT = Path(__file__).resolve().parents[1]
JOB = Path(__file__).with_name("resume_job.py")
# seed 2 samples clients {0, 2} in round 1, {0, 1} in round 2, then one of {0, 2} per round
SMALL = {
    "num-partitions": 3,
    "local-epochs": 1,
    "num-server-rounds": 5,
    "unlearn-at-round": 2,
    "unlearn-clients": "1",
    "fraction-train": 0.67,
    "seed": 2,
    "progress": False,
}
STEP_ROUND = 3  # the request after round 2 takes effect in round 3 (PUF-Special, stored)
RUN_TIMEOUT_S = 420


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(2, 1, 3, 3)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),  # 0-d, integer
        "fc.bias": rng.normal(size=3).astype(np.float32),
    }


def checkpoint(server_round: int = 4, seed: int = 0) -> Checkpoint:
    return Checkpoint(
        server_round=server_round,
        arrays=model(seed),
        state={
            "methods": {"puf-special": {"store": {"entries": {"0": {"arrays": model(seed + 1)}}}}},
            "rng": [3, [1, 2, 3], None],
        },
        history=[{"round": 1, "test_loss": float("nan")}],
    )


# ------------------------------------------------------------------ the file
def test_checkpoint_round_trips_arrays_order_dtypes_and_state(tmp_path):
    config = FederationConfig(state_dir=str(tmp_path))
    saved = checkpoint()

    save_checkpoint(tmp_path, saved, config)
    loaded = load_checkpoint(tmp_path)

    assert loaded.server_round == 4 and not loaded.recovered
    assert list(loaded.arrays) == list(saved.arrays)  # state-dict order kept
    for name, value in saved.arrays.items():
        assert loaded.arrays[name].dtype == value.dtype
        assert loaded.arrays[name].shape == value.shape
        np.testing.assert_array_equal(loaded.arrays[name], value)
    entry = loaded.state["methods"]["puf-special"]["store"]["entries"]["0"]["arrays"]
    np.testing.assert_array_equal(entry["fc.bias"], model(1)["fc.bias"])
    assert loaded.state["rng"] == [3, [1, 2, 3], None]
    assert np.isnan(loaded.history[0]["test_loss"])
    assert oct(checkpoint_path(tmp_path).stat().st_mode & 0o777) == "0o600"


def test_an_interrupted_save_never_replaces_the_last_checkpoint(tmp_path, monkeypatch):
    """A crash before the rename leaves the previous checkpoint; its partial file is ignored."""
    config = FederationConfig(state_dir=str(tmp_path))
    save_checkpoint(tmp_path, checkpoint(3, seed=0), config)
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError("power cut")))
        with pytest.raises(OSError, match="power cut"):
            save_checkpoint(tmp_path, checkpoint(4, seed=1), config)
    # what a SIGKILL during the write leaves: half of the new file under the temporary name
    save_checkpoint(tmp_path / "scratch", checkpoint(4, seed=1), config)
    new_bytes = checkpoint_path(tmp_path / "scratch").read_bytes()
    temporary_path(checkpoint_path(tmp_path)).write_bytes(new_bytes[: len(new_bytes) // 2])

    loaded = load_checkpoint(tmp_path)

    assert loaded.server_round == 3
    np.testing.assert_array_equal(loaded.arrays["fc.bias"], model(0)["fc.bias"])
    assert not temporary_path(checkpoint_path(tmp_path)).exists()  # removed, never read


def test_a_partial_first_checkpoint_means_a_fresh_start(tmp_path):
    """Killed during its first save: no checkpoint, so the run starts from round 1."""
    temporary_path(checkpoint_path(tmp_path)).write_bytes(b"\x10\x00\x00\x00half a header")
    assert load_checkpoint(tmp_path) is None
    assert resume_point(FederationConfig(state_dir=str(tmp_path))) is None


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_checkpoint_is_refused_with_what_to_do(tmp_path, damage):
    save_checkpoint(tmp_path, checkpoint(), FederationConfig(state_dir=str(tmp_path)))
    path = checkpoint_path(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:-100]
    else:
        data[-3] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match=r"damaged.*restore it from a backup, or delete it"):
        load_checkpoint(tmp_path)


def test_resuming_with_another_configuration_names_the_keys(tmp_path):
    """Training keys must match; outputs, the API's port and the round cap may change."""
    config = FederationConfig(state_dir=str(tmp_path), lr=0.05)
    save_checkpoint(tmp_path, checkpoint(), config)

    moved = config.replace(out_dir="elsewhere", api_port=8123, num_server_rounds=90)
    assert resume_point(moved).server_round == 4
    with pytest.raises(CheckpointMismatch, match=r"lr: 0\.05 in the checkpoint, 0\.1 now.*fresh"):
        resume_point(config.replace(lr=0.1))
    with pytest.raises(CheckpointMismatch, match=r"puf\.eta-special: 2\.0 in the checkpoint, 3\.0"):
        resume_point(config.replace(method_settings=(("puf.eta-special", 3.0),)))


def test_keys_another_fedforget_version_added_do_not_block_a_resume():
    """A new option (or a new method's table) at its default is not a configuration change."""
    saved = {"lr": 0.05, "seed": 0}
    assert config_differences(saved, {**saved, "new-method.lr": 0.1}) == []
    assert config_differences(saved, {"lr": 0.1, "seed": 0}) == [
        "lr: 0.05 in the checkpoint, 0.1 now"
    ]


def test_outcomes_recorded_by_a_checkpoint_reach_the_queue_on_resume(tmp_path):
    """Killed after the checkpoint of a step but before the queue's commit: resuming commits."""
    config = FederationConfig(
        num_partitions=3, unlearn_at_round=0, state_dir=str(tmp_path), progress=False
    )
    queue = SQLiteRequestQueue.in_state_dir(tmp_path)
    queue.submit(UnlearningRequest(("1",), request_id="forget-1"))
    queue.submit(UnlearningRequest(("2",), request_id="refused-2"))
    state = build_strategy(config, queue).state_dict()
    state["directory"]["forgotten"] = ["1"]
    state["outcomes"] = [
        {
            "request_ids": ["forget-1"],
            "status": "applied",
            "server_round": 3,
            "update_norm": 0.5,
        },
        {"request_ids": ["refused-2"], "status": "rejected", "reason": "because"},
    ]

    strategy = build_strategy(config, queue, resume=Checkpoint(3, model(), state))

    applied, rejected = queue.get("forget-1"), queue.get("refused-2")
    assert (applied.status, applied.applied_round, applied.update_norm) == (
        "applied",
        3,
        0.5,
    )
    assert (rejected.status, rejected.reason) == ("rejected", "because")
    assert strategy.directory.forgotten == {"1"}
    queue.close()


# ------------------------------------------------------- kill -9 and resume
@dataclass
class Runs:
    uninterrupted: Path
    resumed: Path
    at_kill: Path  # a copy of the killed run's state-dir, taken while it waited to be killed
    target_update: dict[str, np.ndarray]  # client 1's stored pseudo-gradient before the step


def job(run_config: dict, logs: Path, pause_round: int | None = None) -> subprocess.Popen:
    """Start ``resume_job.py`` in its own process group (Ray's processes included)."""
    marker = logs.with_suffix(".paused")
    extra = [str(pause_round), str(marker)] if pause_round else []
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    with logs.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, str(JOB), json.dumps(run_config), *extra],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(process: subprocess.Popen, logs: Path, marker: Path | None = None) -> None:
    """Wait until ``marker`` exists (or, without one, the process ends well)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if marker is not None and marker.exists():
            return
        code = process.poll()
        if code is not None:
            if marker is None and code == 0:
                return
            pytest.fail(f"the federation process exited with {code}:\n{logs.read_text()[-3000:]}")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"the federation process timed out:\n{logs.read_text()[-3000:]}")


def kill_tree(process: subprocess.Popen) -> None:
    """kill -9 the job and every process of its group (Ray's daemons and workers included)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # until the group's last process is gone
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """An uninterrupted run (memory store) and one killed after its step's checkpoint (disk)."""
    root = tmp_path_factory.mktemp("resume")
    a, b = root / "uninterrupted", root / "killed"
    run_a = {**SMALL, "state-dir": str(a / "state"), "out-dir": str(a / "out")}
    run_b = {
        **SMALL,
        "store": "disk",
        "state-dir": str(b / "state"),
        "out-dir": str(b / "out"),
    }
    logs_a, logs_b = root / "uninterrupted.log", root / "killed.log"
    uninterrupted = job(run_a, logs_a)
    killed = job(run_b, logs_b, pause_round=STEP_ROUND)
    try:
        wait_for(killed, logs_b, logs_b.with_suffix(".paused"))
        shutil.copytree(b / "state", root / "at-kill")
    finally:
        kill_tree(killed)
    target_file = b / "state" / "pseudo-gradients" / "1.r2.safetensors"
    target_update, _ = read_tensors(target_file)
    resumed = job(run_b, logs_b)
    wait_for(resumed, logs_b)
    wait_for(uninterrupted, logs_a)
    return Runs(a, b, root / "at-kill", target_update)


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_ends_with_the_uninterrupted_final_model(runs):
    """Bit-identical: same arrays, dtypes and values (memory store vs disk store, too)."""
    expected = read_arrays(runs.uninterrupted / "out" / "final_model.npz")
    actual = read_arrays(runs.resumed / "out" / "final_model.npz")
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype
        assert np.array_equal(actual[name], value), name
    history = json.loads((runs.resumed / "out" / "history.json").read_text())
    assert [h["round"] for h in history] == [0, 1, 2, 3, 4, 5]  # each round once
    assert [h["participants"] for h in history[1:]] == [
        ["0", "2"],
        ["0", "1"],
        [],
        ["0"],
        ["2"],
    ]  # the sampling generator went on where it was
    original = read_arrays(runs.uninterrupted / "out" / "original_model.npz")
    for name, value in read_arrays(runs.resumed / "out" / "original_model.npz").items():
        assert np.array_equal(value, original[name])


@pytest.mark.slow
def test_a_resumed_run_reports_its_whole_wall_time(runs):
    """Wall time goes on across the restart: never below the elapsed time the history shows.

    A method's row subtracts the elapsed seconds at the round before the
    step from the run's wall time; counted from the restart only, the
    resumed run's wall time was below it (a negative time in the table).
    """
    for folder in (runs.uninterrupted, runs.resumed):
        history = json.loads((folder / "out" / "history.json").read_text())
        wall_s = json.loads((folder / "out" / "wall.json").read_text())["wall_s"]
        elapsed = [h["elapsed_s"] for h in history]
        assert elapsed == sorted(elapsed) and elapsed[0] >= 0
        assert wall_s >= elapsed[-1]
        before_step = next(h["elapsed_s"] for h in history if h["round"] == STEP_ROUND - 1)
        assert wall_s - before_step > 0


@pytest.mark.slow
def test_the_step_recorded_only_in_the_checkpoint_is_applied_once_after_resume(runs):
    """Killed between the step's checkpoint and the queue's commit: the resumed run commits it."""
    at_kill = SQLiteRequestQueue.in_state_dir(runs.at_kill)
    assert at_kill.get(f"config-round-{STEP_ROUND - 1}").status == "queued"
    at_kill.close()
    assert load_checkpoint(runs.at_kill).state["outcomes"][0]["status"] == "applied"
    for folder in (runs.uninterrupted, runs.resumed):
        requests = json.loads((folder / "out" / "requests.json").read_text())
        assert [(r["status"], r["applied_round"]) for r in requests] == [("applied", STEP_ROUND)]


def files_holding(folder: Path, arrays: dict[str, np.ndarray]) -> list[str]:
    """Files under ``folder`` that contain the raw bytes of any of ``arrays``."""
    needles = [np.ascontiguousarray(v).tobytes() for v in arrays.values() if v.nbytes >= 64]
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and any(needle in path.read_bytes() for needle in needles)
    )


@pytest.mark.slow
def test_nothing_of_a_forgotten_client_remains_in_the_state_dir(runs):
    """No file, no checkpointed copy, no method state: only the audit record names client 1."""
    # the search finds the update where it was: the file the last checkpoint before the step named
    assert files_holding(runs.at_kill, runs.target_update) == ["pseudo-gradients/1.r2.safetensors"]
    for folder in (runs.resumed / "state", runs.uninterrupted / "state"):
        assert files_holding(folder, runs.target_update) == []
        saved = load_checkpoint(folder)
        stored = saved.state["methods"]["puf-special"]["store"]["entries"]
        assert sorted(stored) == ["0", "2"]
        assert saved.state["directory"]["forgotten"] == ["1"]
        queue = SQLiteRequestQueue.in_state_dir(folder)
        assert [r.request.client_ids for r in queue.applied()] == [("1",)]  # the audit record
        queue.close()
    assert sorted(p.name for p in (runs.resumed / "state" / "pseudo-gradients").iterdir()) == [
        "0.r4.safetensors",
        "2.r5.safetensors",
    ]
