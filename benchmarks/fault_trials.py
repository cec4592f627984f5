"""Fault trials: kill -9 the whole server process tree at chosen moments, restart, check.

Each trial is one small federation (digits, ``--clients`` clients, ``--rounds``
rounds, 1 local epoch, PUF-Special, live API on loopback, a state-dir; the
disk store in odd trials, the memory store in even ones) run by
``benchmarks/fault_job.py`` as a process group of its own: the ServerApp, the
API server thread, and the private Ray instance with its client actors. The
group is killed with SIGKILL 1-3 times at moments chosen by a seeded RNG and
restarted with the same command and state-dir until the run finishes.

Kill moments (the first kill of trial ``i`` cycles through them, later kills
are drawn at random):

* ``after-202``: the benchmark's client submits a request and the group is
  killed as soon as the 202 arrives (the answer counts as lost: the request is
  resubmitted after the restart with the same idempotency key);
* ``mid-round``: a moment (0.05-0.5 s) after the API's status shows a round
  has started;
* ``random-time``: a uniformly random moment within a typical run (2-90 %
  of the median time of the runs that ended by themselves so far): it can
  land in Ray's start-up, before the API is up, or anywhere later;
* ``checkpoint-write``, ``after-checkpoint``, ``puf-step``, ``store-write``
  (disk store only): the job pauses at that point (half of the new
  checkpoint written; checkpoint durable but the round's request outcomes not
  yet committed to the queue; PUF's unlearned model computed but not
  recorded; half of a pseudo-gradient file written), writes a marker file and
  is killed when the marker appears (``fault_job.py`` explains the hooks).

Where each kill landed is read from the job's trace (the last event before
the kill). Requests: every trial plans 1-3 requests (clients 1.. of the
federation, some with ``eta-special`` 3, some a second requester of an
already requested client under its own key), each submitted over HTTP with
its own idempotency key once the API shows its trigger round; a request
whose POST got no answer (the server died) is retried after the restart
with the same key, as are those whose 202 came just before an ``after-202``
kill, and a random 30 % of the others (all must return the request id they
first got).

After the last run of a trial, from its state-dir (SQLite queue, read
only), its out-dir (``events.json``, ``history.json``, ``final_model.npz``)
and the traces:

* **lost**: an accepted request (a 202) that is neither applied nor rejected
  with a reason (still queued, missing, or another id under its key);
* **applied twice**: a request id in more than one completed step, or a
  client forgotten by more than one step; and any disagreement between the
  steps and the queue's applied requests (the audit log) is counted apart;
* **forgotten back**: a client sent a training message or heard from in a
  reply after it was forgotten: in the final history (rounds after its step),
  and in every run's trace (clients the state-dir held as forgotten when the
  run started, or forgotten earlier in that run);
* **final model differs**: the final model is not bit-identical (same names,
  dtypes and values) to an uninterrupted run of the same configuration given
  the same request schedule: the trial's applied requests, each due at the
  round in which its step began in the trial (``not_before_round``), in the
  same order. Request arrival times depend on timing, so the uninterrupted
  run replays the schedule the trial actually had rather than racing the
  clock again; rejected requests change no model and are left out. These
  uninterrupted runs share one simulation (``fault_job.py baselines``),
  checked against a standalone uninterrupted process by a control trial.

A run that fails unplanned (Ray's node start-up times out on an overloaded
machine and Flower's simulation runtime crashes, leaving the process hung; a
run that exits with an error; a run over 420 s) is killed the same way,
restarted, and reported in ``failed_launches``; its planned kill moves to the
next run.

Trials run ``--parallel`` at a time, each run with its own Ray instance,
beside the one simulation of the baselines. The benchmark stops starting
trials when the next one would not fit in ``--budget-s`` (trials in flight
finish, with their remaining kills dropped) and reports how many ran. The
record (``--out``) is rewritten after every trial with ``"complete": false``,
so a benchmark stopped by SIGTERM or Ctrl-C (which kills its process groups
and stops) leaves the trials it finished.

    python benchmarks/fault_trials.py --trials 50 --budget-s 1500 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import report  # noqa: E402

from fedforget.api.client import ApiError, UnlearningClient  # noqa: E402
from fedforget.api.constants import DATABASE_FILE, ENDPOINT_FILE, TOKEN_FILE  # noqa: E402
from fedforget.federated.federation import (  # noqa: E402
    EVENTS_FILE,
    FINAL_MODEL_FILE,
    HISTORY_FILE,
    read_arrays,
)
from fedforget.state.checkpoint import STATE_KEY, checkpoint_path  # noqa: E402
from fedforget.state.disk_store import PSEUDO_GRADIENT_DIR, client_of_file  # noqa: E402
from fedforget.state.files import is_temporary, read_tensors  # noqa: E402

JOB = Path(__file__).with_name("fault_job.py")
MOMENTS = (
    "after-202",
    "mid-round",
    "checkpoint-write",
    "after-checkpoint",
    "puf-step",
    "random-time",
    "store-write",
)
HOOKED = frozenset({"checkpoint-write", "after-checkpoint", "puf-step", "store-write"})
POLL_S = 0.2
LAUNCH_TIMEOUT_S = 420.0
MAX_FAILED_LAUNCHES = 3
RUNTIME_CRASHED = b"Simulation Runtime crashed"
GROUP_EXIT_TIMEOUT_S = 15.0
BASELINE_TIMEOUT_S = 900.0
FIRST_TRIAL_ESTIMATE_S = 150.0
RANDOM_KILL_SHARE = (0.02, 0.9)
"""A random-time kill lands at this share (drawn uniformly) of a typical whole run."""
TYPICAL_RUN_S = 60.0
"""A typical whole run until the first runs of this benchmark have been timed."""
WHOLE_RUNS_S: list[float] = []
"""Wall seconds of the runs that ended by themselves (the machine's pace now; resumed runs
are shorter than whole ones, so a random kill lands early rather than after the end)."""
RESUBMIT_SHARE = 0.3
API_TIMEOUT_S = 10.0
STOP = threading.Event()
"""Set when the benchmark is told to stop (SIGTERM, SIGINT): no new trial or run starts."""
LIVE: set[subprocess.Popen[bytes]] = set()
"""Process groups this benchmark started and that are still running."""
LIVE_LOCK = threading.Lock()


DEFINITIONS = {
    "kill": "SIGKILL to the process group of fault_job.py: ServerApp, API thread, private Ray "
    "instance (GCS, raylet, agents, the client actor); a process of the tree found outside the "
    "group is killed by pid and counted in stray_processes",
    "lost": "accepted (202) but, after the last run, not applied and not rejected with a reason",
    "applied_twice": "a request id in more than one completed step, or a client forgotten by "
    "more than one step",
    "forgotten_back": "a forgotten client sent a training message or heard from after it was "
    "forgotten: final history, and each run's trace against the clients its state-dir held as "
    "forgotten when it started",
    "baseline": "an uninterrupted run (same config and seed) given the trial's applied requests, "
    "each due at the round its step began in the trial, in the same order",
    "differs": "the final model is not bit-identical to the baseline's (names, dtypes, values)",
}


# ------------------------------------------------------------------ records
@dataclass
class Submission:
    """One request the benchmark's client sends (and may resend) under one idempotency key."""

    key: str
    client_ids: list[str]
    options: dict[str, float]
    trigger_round: int
    kind: str  # "planned", "second-requester" or "extra"
    request_id: str = ""
    accepted: bool = False  # a 202 came back at least once
    refused: str = ""  # why the API refused it (409, 422), if it did
    attempts: int = 0
    unanswered: bool = False  # the last attempt got no answer: retried after the restart
    answer_lost: bool = False  # a 202 right before an after-202 kill: resent after the restart
    resubmits: int = 0
    id_mismatches: int = 0  # a resubmission returned another request id
    final_status: str = ""
    applied_round: int | None = None
    reason: str = ""


@dataclass
class Kill:
    """A planned kill: its moment and the round (or delay) that triggers it.

    A random-time kill has a ``share`` of a typical whole run (timed while the
    benchmark runs, so that the kill lands within a run however loaded the
    machine is); its ``delay_s`` is set when its run starts.
    """

    moment: str
    round: int = 0
    delay_s: float = 0.0
    share: float = 0.0


@dataclass
class Launch:
    """One start of the trial's server process group."""

    index: int
    kill: Kill | None
    wall_s: float = 0.0
    killed: bool = False
    exit_code: int | None = None
    landed: str = ""  # phase the kill landed in (from the trace)
    landed_round: int | None = None
    stray_processes: int = 0  # processes of the tree that outlived the group kill
    failed: str = ""  # why the run failed unplanned (it was then killed and restarted)
    got_202_then_killed: bool = False
    forgotten_at_start: list[str] = field(default_factory=list)


@dataclass
class Settings:
    """The benchmark's command-line settings."""

    trials: int
    budget_s: float
    parallel: int
    seed: int
    clients: int
    rounds: int
    work: Path
    started: float


# ------------------------------------------------------------ processes
def proc_table() -> dict[int, tuple[int, int, int]]:
    """Map pid -> (parent pid, process group, start time) of every live process (from /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields_ = stat[stat.rindex(")") + 2 :].split()
        if fields_[0] == "Z":
            continue
        table[int(entry.name)] = (int(fields_[1]), int(fields_[2]), int(fields_[19]))
    return table


def tree_of(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of the process group ``pid`` and of every descendant of ``pid``."""
    table = proc_table()
    members = {p for p, (_, group, _) in table.items() if group == pid}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _, _) in table.items():
            if ppid == parent and child not in members:
                members.add(child)
                frontier.append(child)
    return {(p, table[p][2]) for p in members if p in table}


def kill_tree(process: subprocess.Popen[bytes]) -> int:
    """SIGKILL the process group; kill what escaped it; return how many processes escaped."""
    before = tree_of(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + GROUP_EXIT_TIMEOUT_S
    while time.monotonic() < deadline:
        if not any(group == process.pid for _, group, _ in proc_table().values()):
            break
        time.sleep(0.1)
    table = proc_table()
    strays = [pid for pid, start in before if pid in table and table[pid][2] == start]
    for pid in strays:  # started by this trial (same pid and start time): end them too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(strays)


# ------------------------------------------------------------- the state
def read_queue(state: Path) -> list[dict[str, Any]]:
    """The request rows of the state-dir's SQLite queue, read only (no recovery, no writes)."""
    path = state / DATABASE_FILE
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute("SELECT * FROM requests ORDER BY seq")]
    finally:
        db.close()


def read_checkpoint_state(state: Path) -> dict[str, Any] | None:
    """The checkpoint's JSON document, read without touching the state-dir (None if none)."""
    path = checkpoint_path(state)
    if not path.exists():
        return None
    _, metadata = read_tensors(path)
    return dict(json.loads(metadata[STATE_KEY]))


def forgotten_in(state: Path) -> set[str]:
    """Clients the state-dir holds as forgotten: applied requests and the checkpoint's set."""
    applied = {
        client
        for row in read_queue(state)
        if row["status"] == "applied"
        for client in json.loads(row["client_ids"])
    }
    document = read_checkpoint_state(state)
    saved = set(document["state"]["directory"]["forgotten"]) if document else set()
    return applied | saved


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The events of a trace file (a line cut by the kill is skipped)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


PHASES = {
    "start": "start-up (simulation, Ray, data)",
    "api-up": "start-up (API up, waiting for round 1)",
    "replies": "aggregation and evaluation",
    "store-write": "disk-store write",
    "forgot": "step completed, before the checkpoint",
    "puf-step": "PUF step",
    "checkpoint-write": "checkpoint write",
    "checkpoint-durable": "after the checkpoint, before the queue commit",
    "committed": "between rounds",
    "end": "shut-down",
}
PAUSED = {
    "checkpoint-write": "checkpoint write (half written)",
    "after-checkpoint": "after the checkpoint, before the queue commit",
    "puf-step": "PUF step (model unlearned, nothing recorded)",
    "store-write": "disk-store write (half written)",
}


def landed_phase(events: list[dict[str, Any]], killed_at: float) -> tuple[str, int | None]:
    """The phase a kill at ``killed_at`` interrupted, and its round, from the trace."""
    before = [e for e in events if e["t"] <= killed_at]
    if not before:
        return "start-up (Python imports)", None
    last = before[-1]
    rounds = [e["round"] for e in before if "round" in e and e["ev"] != "store-write"]
    current = rounds[-1] if rounds else None
    if last["ev"] == "paused":
        return PAUSED[last["point"]], last["round"]
    if last["ev"] == "round":
        kind = "unlearning round" if last["phase"] == "unlearn" else "training round"
        return f"{kind} (clients training)", last["round"]
    return PHASES.get(last["ev"], last["ev"]), current


# -------------------------------------------------------------- the trial
class Trial:
    """One trial: its plan, its launches, its requests and what was checked afterwards."""

    def __init__(self, index: int, settings: Settings, baselines: Baselines) -> None:
        self.index = index
        self.settings = settings
        self.baselines = baselines
        self.rng = random.Random(f"fault-trials-{settings.seed}-{index}")
        self.control = index < 0
        self.store = "disk" if index % 2 else "memory"
        self.folder = settings.work / (f"trial-{index:03d}" if index >= 0 else "control")
        self.state = self.folder / "state"
        self.out = self.folder / "out"
        self.kills = [] if self.control else self._plan_kills()
        self.submissions = self._plan_requests()
        self.launches: list[Launch] = []
        self.wall_s = 0.0
        self.error = ""
        self.interrupted = False  # the benchmark was stopped while this trial ran
        self.checks: dict[str, Any] = {}
        self.baseline_id = ""

    # ---------------------------------------------------------------- plan
    @property
    def targets(self) -> list[str]:
        """Clients a request may name: all but client 0, which always stays."""
        return [str(c) for c in range(1, self.settings.clients)]

    @property
    def last_submit_round(self) -> int:
        """New requests go out only while a boundary is still ahead (rounds <= this)."""
        return self.settings.rounds - 2

    def run_config(self) -> dict[str, Any]:
        """The trial's run config."""
        return {
            **base_run_config(self.settings),
            "store": self.store,
            "state-dir": str(self.state),
            "out-dir": str(self.out),
        }

    def _plan_kills(self) -> list[Kill]:
        moments = [m for m in MOMENTS if self.store == "disk" or m != "store-write"]
        first = MOMENTS[self.index % len(MOMENTS)]
        if first not in moments:
            first = "mid-round"
        count = 1 + (self.rng.random() < 0.3) + (self.rng.random() < 0.1)
        chosen = [first] + [self.rng.choice(moments) for _ in range(count - 1)]
        return [self._kill(moment) for moment in chosen]

    def _kill(self, moment: str) -> Kill:
        rounds = self.settings.rounds
        if moment == "random-time":
            return Kill(moment, share=round(self.rng.uniform(*RANDOM_KILL_SHARE), 3))
        if moment == "after-202":
            return Kill(moment, round=self.rng.randint(1, self.last_submit_round))
        if moment == "mid-round":
            return Kill(
                moment, round=self.rng.randint(1, rounds), delay_s=self.rng.uniform(0.05, 0.5)
            )
        if moment == "puf-step":
            return Kill(moment)
        return Kill(moment, round=self.rng.randint(1, rounds))

    def _plan_requests(self) -> list[Submission]:
        count = self.rng.choice([1, 2, 2, 3])
        chosen = self.rng.sample(self.targets, min(count, len(self.targets)))
        plan = []
        for number, client in enumerate(chosen):
            options = {"eta-special": 3.0} if self.rng.random() < 0.2 else {}
            trigger = self.rng.randint(1, self.last_submit_round)
            plan.append(Submission(self.key(number), [client], options, trigger, "planned"))
        if self.rng.random() < 0.2:
            trigger = self.rng.randint(1, self.last_submit_round)
            again = plan[0]
            plan.append(
                Submission(self.key(len(plan)), again.client_ids, {}, trigger, "second-requester")
            )
        return sorted(plan, key=lambda s: s.trigger_round)

    def key(self, number: int) -> str:
        """The idempotency key of the trial's ``number``-th request."""
        return f"s{self.settings.seed}-t{self.index}-r{number}"

    # ----------------------------------------------------------------- run
    def run(self) -> None:
        """Launch, kill, restart until the run finishes; then check its outcome."""
        started = time.monotonic()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        try:
            pending = list(self.kills)
            while True:
                if STOP.is_set():
                    raise RuntimeError("the benchmark was stopped during this trial")
                if pending and over_budget(self.settings, 0.0):
                    pending = []  # out of time: this run is the last
                launch = Launch(len(self.launches), pending.pop(0) if pending else None)
                launch.forgotten_at_start = sorted(forgotten_in(self.state))
                self.launches.append(launch)
                self._launch(launch)
                if launch.failed:
                    # an unplanned crash (e.g. Ray timed out starting on a loaded machine):
                    # killed like the planned ones and restarted; its planned kill comes next
                    if sum(bool(x.failed) for x in self.launches) > MAX_FAILED_LAUNCHES:
                        raise RuntimeError(f"{launch.failed}:\n{self.log_tail(launch.index)}")
                    if launch.kill is not None:
                        pending.insert(0, launch.kill)
                elif not launch.killed:
                    break
            self.check()
        except Exception as error:  # one failed trial is recorded, the others go on
            self.error = f"{type(error).__name__}: {error}"[-4000:]
            self.interrupted = STOP.is_set()
        self.wall_s = time.monotonic() - started

    def log_tail(self, launch: int) -> str:
        """The end of a launch's log."""
        path = self.folder / f"launch-{launch}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _launch(self, launch: Launch) -> None:
        """Start the group, drive requests, kill it at the planned moment or let it finish."""
        kill = launch.kill
        trace = self.folder / f"launch-{launch.index}.trace"
        marker = self.folder / f"launch-{launch.index}.paused"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FEDFORGET_FAULT_TRACE": str(trace),
            "FEDFORGET_FAULT_MARKER": str(marker),
            "FEDFORGET_FAULT_PAUSE": f"{kill.moment}:{kill.round}"
            if kill and kill.moment in HOOKED
            else "",
        }
        if kill is not None and kill.moment == "random-time":
            typical = statistics.median(WHOLE_RUNS_S[-20:]) if WHOLE_RUNS_S else TYPICAL_RUN_S
            kill.delay_s = round(kill.share * typical, 2)
        started = time.monotonic()
        with (self.folder / f"launch-{launch.index}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, str(JOB), "run", json.dumps(self.run_config())],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with LIVE_LOCK:
            LIVE.add(process)
        driver = RequestDriver(self, launch, process.pid)
        killed_at = 0.0
        try:
            while process.poll() is None:
                elapsed = time.monotonic() - started
                launch.failed = self._failure(launch, elapsed)
                if launch.failed:
                    killed_at = time.time()
                    launch.stray_processes = kill_tree(process)
                    break
                if self._kill_due(kill, driver, marker, elapsed):
                    killed_at = time.time()
                    launch.stray_processes = kill_tree(process)
                    launch.killed = True
                    break
                time.sleep(POLL_S)
        finally:
            driver.close()
            if process.poll() is None:
                kill_tree(process)
            with LIVE_LOCK:
                LIVE.discard(process)
        launch.exit_code = process.returncode
        launch.wall_s = round(time.monotonic() - started, 2)
        if not launch.killed and launch.exit_code == 0:
            WHOLE_RUNS_S.append(launch.wall_s)  # a run that went to the end (some resumed)
        if not launch.killed and not launch.failed and launch.exit_code != 0:
            launch.failed = f"the run exited with {launch.exit_code}"
            killed_at = time.time()
        if launch.killed or launch.failed:
            launch.landed, launch.landed_round = landed_phase(read_trace(trace), killed_at)

    def _failure(self, launch: Launch, elapsed: float) -> str:
        """Why a running launch must be given up ('' while it is fine)."""
        if elapsed > LAUNCH_TIMEOUT_S:
            return f"no end after {LAUNCH_TIMEOUT_S:.0f} s"
        log = self.folder / f"launch-{launch.index}.log"
        if RUNTIME_CRASHED in log.read_bytes():
            return "Flower's simulation runtime crashed (see the launch log); the process hung"
        return ""

    def _kill_due(
        self, kill: Kill | None, driver: RequestDriver, marker: Path, elapsed: float
    ) -> bool:
        """Drive the API one step; whether the group must be killed now."""
        current = driver.step(kill)
        if kill is None:
            return False
        if kill.moment in HOOKED:
            return marker.exists()
        if kill.moment == "random-time":
            return elapsed >= kill.delay_s
        if current is None or current < kill.round:
            return False
        if kill.moment == "mid-round":
            if current == driver.first_round:
                return False  # a round must have started in this run
            time.sleep(kill.delay_s)
            return True
        # after-202: send a request now and kill the moment its answer is in
        return driver.submit_for_kill()

    # --------------------------------------------------------------- checks
    def check(self) -> None:
        """Lost, doubled, forgotten-back, erasure and history checks; queue the baseline."""
        rows = read_queue(self.state)
        by_key = {row["idempotency_key"]: row for row in rows if row["idempotency_key"]}
        events = json.loads((self.out / EVENTS_FILE).read_text())
        history = json.loads((self.out / HISTORY_FILE).read_text())
        lost = unanswered_stored = 0
        for submission in self.submissions:
            row = by_key.get(submission.key)
            if row is not None:
                submission.final_status = row["status"]
                submission.applied_round = row["applied_round"]
                submission.reason = row["reason"]
            resolved = row is not None and (
                row["status"] == "applied" or (row["status"] == "rejected" and row["reason"])
            )
            if submission.accepted:
                same = row is not None and row["request_id"] == submission.request_id
                lost += not (same and resolved)
            elif row is not None:
                unanswered_stored += 1
                lost += not resolved
        ids_per_event = Counter(rid for e in events for rid in e["request_ids"])
        steps_per_client = Counter(c for e in events for c in e["clients"])
        applied_rows = {row["request_id"]: row for row in rows if row["status"] == "applied"}
        event_round = {rid: e["server_round"] for e in events for rid in e["request_ids"]}
        audit_mismatches = sum(
            event_round.get(rid) != row["applied_round"] for rid, row in applied_rows.items()
        ) + sum(rid not in applied_rows for rid in event_round)
        forgotten_at = {c: e["server_round"] for e in events for c in e["clients"]}
        self.checks = {
            "accepted": sum(s.accepted for s in self.submissions),
            "applied": sum(s.accepted and s.final_status == "applied" for s in self.submissions),
            "rejected_with_reason": sum(
                s.accepted and s.final_status == "rejected" and bool(s.reason)
                for s in self.submissions
            ),
            "refused_by_api": sum(bool(s.refused) for s in self.submissions),
            "unanswered_but_stored": unanswered_stored,
            "lost": lost,
            "applied_twice": sum(n - 1 for n in ids_per_event.values() if n > 1)
            + sum(n - 1 for n in steps_per_client.values() if n > 1),
            "audit_mismatches": audit_mismatches,
            "forgotten_back": self._forgotten_back(history, forgotten_at),
            "forgotten_data_left": self._forgotten_data_left(set(forgotten_at)),
            "history_rounds_ok": [h["round"] for h in history]
            == list(range(self.settings.rounds + 1)),
            "resubmissions": sum(s.resubmits for s in self.submissions),
            "idempotency_mismatches": sum(s.id_mismatches for s in self.submissions),
            "steps": [
                {
                    "first_round": e["first_round"],
                    "round": e["server_round"],
                    "clients": e["clients"],
                }
                for e in events
            ],
        }
        self.baseline_id = self.baselines.submit(self, events, rows)

    def _forgotten_back(self, history: list[dict[str, Any]], forgotten_at: dict[str, int]) -> int:
        """Clients asked to train, or heard from, after they were forgotten."""
        seen = sum(
            1
            for entry in history
            for client in set(entry.get("participants", [])) - set(entry.get("actions", {}))
            if client in forgotten_at and entry["round"] > forgotten_at[client]
        )
        for launch in self.launches:
            forgotten = set(launch.forgotten_at_start)
            for event in read_trace(self.folder / f"launch-{launch.index}.trace"):
                if event["ev"] == "round":
                    trained = set(event["trained"])
                    seen += len(trained & (forgotten | set(event["forgotten"])))
                elif event["ev"] == "replies":
                    seen += len(set(event["identities"]) & forgotten)
                elif event["ev"] == "forgot":
                    forgotten |= set(event["clients"])
        return seen

    def _forgotten_data_left(self, forgotten: set[str]) -> int:
        """Stored updates of forgotten clients: in the checkpoint, or files of the disk store."""
        document = read_checkpoint_state(self.state)
        left = 0
        if document is not None:
            for method in document["state"]["methods"].values():
                entries = method.get("store", {}).get("entries", {}) if method else {}
                left += len(set(entries) & forgotten)
        folder = self.state / PSEUDO_GRADIENT_DIR
        if folder.is_dir():
            left += sum(
                client_of_file(p.name) in forgotten for p in folder.iterdir() if not is_temporary(p)
            )
        return left

    def record(self) -> dict[str, Any]:
        """The trial as the benchmark reports it."""
        comparison = self.baselines.compare(self)
        return {
            "trial": self.index if not self.control else "control",
            "store": self.store,
            "wall_s": round(self.wall_s, 1),
            "kills": sum(launch.killed for launch in self.launches),
            "failed_launches": sum(bool(launch.failed) for launch in self.launches),
            "launches": [
                {
                    "moment": launch.kill.moment if launch.kill else "none (ran to the end)",
                    "planned": asdict(launch.kill) if launch.kill else None,
                    "killed": launch.killed,
                    "landed": launch.landed,
                    "landed_round": launch.landed_round,
                    "wall_s": launch.wall_s,
                    "exit_code": launch.exit_code,
                    "stray_processes": launch.stray_processes,
                    "failed": launch.failed,
                    "got_202_then_killed": launch.got_202_then_killed,
                    "forgotten_at_start": launch.forgotten_at_start,
                }
                for launch in self.launches
            ],
            "requests": [
                {
                    "key": s.key,
                    "kind": s.kind,
                    "clients": s.client_ids,
                    "options": s.options,
                    "trigger_round": s.trigger_round,
                    "accepted": s.accepted,
                    "refused": s.refused,
                    "attempts": s.attempts,
                    "resubmits": s.resubmits,
                    "status": s.final_status,
                    "applied_round": s.applied_round,
                    "reason": s.reason,
                }
                for s in self.submissions
                if s.attempts
            ],
            **self.checks,
            **comparison,
            "error": self.error,
        }


class RequestDriver:
    """The benchmark's API client during one launch: submits, retries, reads the round."""

    def __init__(self, trial: Trial, launch: Launch, pid: int) -> None:
        self.trial = trial
        self.launch = launch
        self.pid = pid
        self.api: UnlearningClient | None = None
        self.resent = False
        self.first_round: int | None = None  # the round the API showed first in this launch

    def close(self) -> None:
        """Close the HTTP client."""
        if self.api is not None:
            self.api.close()

    def connect(self) -> UnlearningClient | None:
        """A client of this launch's API once its endpoint file names this process."""
        state = self.trial.state
        endpoint, token = state / ENDPOINT_FILE, state / TOKEN_FILE
        if not endpoint.is_file() or not token.is_file():
            return None
        try:
            if json.loads(endpoint.read_text())["pid"] != self.pid:
                return None  # left by a killed run
            return UnlearningClient.from_state_dir(state, timeout=API_TIMEOUT_S)
        except (ApiError, ValueError, KeyError, OSError):
            return None

    def step(self, kill: Kill | None) -> int | None:
        """Submit what is due; return the current round (None while the API is not up)."""
        if self.api is None:
            self.api = self.connect()
            if self.api is None:
                return None
        try:
            current = int(self.api.status()["current_round"])
        except ApiError:
            return None
        if self.first_round is None:
            self.first_round = current
        if not self.resent:
            self.resent = True
            self.resend(current)
            if kill is not None and kill.moment == "puf-step":
                self.make_a_step_due(current)
        for submission in self.trial.submissions:
            if (
                submission.attempts == 0
                and max(1, submission.trigger_round) <= current <= self.trial.last_submit_round
            ):
                self.send(submission)
        return current

    def resend(self, current: int) -> None:
        """After a restart: resend unanswered requests, lost answers, and some others."""
        rng = self.trial.rng
        for submission in self.trial.submissions:
            if submission.unanswered and current <= self.trial.last_submit_round:
                self.send(submission, again=True)
            elif submission.answer_lost or (submission.accepted and rng.random() < RESUBMIT_SHARE):
                self.send(submission, again=True)
                submission.answer_lost = False

    def make_a_step_due(self, current: int) -> None:
        """For a puf-step kill: send the next planned request now, or an extra one."""
        if current > self.trial.last_submit_round:
            return
        for submission in self.trial.submissions:
            if submission.attempts == 0:
                submission.trigger_round = max(1, min(submission.trigger_round, current))
                return
        extra = self.extra_submission(current)
        if extra is not None:
            self.send(extra)

    def extra_submission(self, current: int) -> Submission | None:
        """A request for a client no submission names yet (None if every client is named)."""
        named = {c for s in self.trial.submissions for c in s.client_ids}
        free = [c for c in self.trial.targets if c not in named]
        if not free:
            return None
        submission = Submission(
            self.trial.key(len(self.trial.submissions)),
            [self.trial.rng.choice(free)],
            {},
            current,
            "extra",
        )
        self.trial.submissions.append(submission)
        return submission

    def submit_for_kill(self) -> bool:
        """Send one request (the next planned, an extra one, or a resubmission); then kill."""
        assert self.api is not None
        try:
            current = int(self.api.status()["current_round"])
        except ApiError:
            return False
        waiting = [s for s in self.trial.submissions if s.attempts == 0]
        accepted = [s for s in self.trial.submissions if s.accepted]
        submission = (
            waiting[0]
            if waiting and current <= self.trial.last_submit_round
            else self.extra_submission(current)
            if current <= self.trial.last_submit_round
            else None
        )
        if submission is None and accepted:
            submission = accepted[0]
        if submission is None:
            return True  # nothing left to send: kill now all the same
        if self.send(submission, again=submission.attempts > 0) == "accepted":
            submission.answer_lost = True
            self.launch.got_202_then_killed = True
        return True  # answered or not, the group dies now

    def send(self, submission: Submission, again: bool = False) -> str:
        """POST the request with its idempotency key: "accepted", "refused" or "no-answer"."""
        assert self.api is not None
        submission.attempts += 1
        submission.resubmits += again
        try:
            answer = self.api.submit(
                submission.client_ids,
                options=submission.options or None,
                idempotency_key=submission.key,
            )
        except ApiError as error:
            if error.status_code == 0:
                submission.unanswered = True
                return "no-answer"
            submission.unanswered = False
            submission.refused = f"{error.status_code}: {error.detail}"[:300]
            return "refused"
        submission.unanswered = False
        if submission.request_id and answer["request_id"] != submission.request_id:
            submission.id_mismatches += 1
        submission.request_id = submission.request_id or answer["request_id"]
        submission.accepted = True
        return "accepted"


# ------------------------------------------------------------- baselines
class Baselines:
    """Uninterrupted runs of the trials' request schedules, in one ``fault_job.py baselines``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = settings.work / "baselines"
        (self.folder / "jobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "baselines.log"

    def start(self) -> None:
        """Start the simulation that runs the baselines (it waits for jobs)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(JOB),
                    "baselines",
                    str(self.folder),
                    str(self.settings.clients),
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def submit(self, trial: Trial, events: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
        """Queue the uninterrupted run of ``trial``'s schedule (once per distinct one); its id."""
        by_id = {row["request_id"]: row for row in rows}
        requests = [
            {
                "client_ids": json.loads(by_id[rid]["client_ids"]),
                "method": by_id[rid]["method"],
                "options": json.loads(by_id[rid]["options"]),
                "not_before_round": event["first_round"],
                "request_id": rid,
            }
            for event in events
            for rid in event["request_ids"]
        ]
        schedule = [{k: v for k, v in r.items() if k != "request_id"} for r in requests]
        identity = json.dumps({"store": trial.store, "schedule": schedule}, sort_keys=True)
        job_id = hashlib.sha256(identity.encode()).hexdigest()[:16]
        with self.lock:
            path = self.folder / "jobs" / f"{job_id}.json"
            if not path.exists():
                run = self.folder / "runs" / job_id
                config = {
                    **trial.run_config(),
                    "state-dir": str(run / "state"),
                    "out-dir": str(run / "out"),
                    "api-enabled": False,
                    "progress": False,
                }
                partial = path.with_suffix(".partial")
                partial.write_text(json.dumps({"config": config, "requests": requests}))
                partial.rename(path)
        return job_id

    def finish(self, wait: bool = True) -> None:
        """Let the baseline simulation end once every job is done; wait for it (or kill it)."""
        (self.folder / "stop").touch()
        if self.process is None:
            return
        try:
            self.process.wait(timeout=BASELINE_TIMEOUT_S if wait else 0.1)
        except subprocess.TimeoutExpired:
            kill_tree(self.process)

    def compare(self, trial: Trial) -> dict[str, Any]:
        """Whether the trial's final model is bit-identical to its baseline's."""
        if not trial.baseline_id:
            return {"final_model": "not compared"}
        done = self.folder / "done" / f"{trial.baseline_id}.json"
        if not done.exists():
            return {"final_model": "not compared (baseline did not run)"}
        result = json.loads(done.read_text())
        if "error" in result:
            return {
                "final_model": "not compared (baseline failed)",
                "baseline_error": result["error"],
            }
        expected = read_arrays(self.folder / "runs" / trial.baseline_id / "out" / FINAL_MODEL_FILE)
        actual = read_arrays(trial.out / FINAL_MODEL_FILE)
        same_names = list(expected) == list(actual)
        same_dtypes = same_names and all(actual[k].dtype == v.dtype for k, v in expected.items())
        identical = same_dtypes and all(np.array_equal(actual[k], v) for k, v in expected.items())
        difference = (
            max(
                float(np.max(np.abs(actual[k].astype(np.float64) - v.astype(np.float64))))
                for k, v in expected.items()
                if v.size
            )
            if same_names
            else float("inf")
        )
        steps = [
            {"first_round": e["first_round"], "round": e["server_round"], "clients": e["clients"]}
            for e in result["events"]
        ]
        return {
            "final_model": "identical" if identical else "differs",
            "max_abs_difference": difference,
            "baseline": trial.baseline_id,
            "baseline_steps_match": steps == trial.checks.get("steps"),
        }


# ------------------------------------------------------------------ main
def base_run_config(settings: Settings) -> dict[str, Any]:
    """The federation every trial runs (the store and folders are the trial's)."""
    return {
        "dataset": "digits",
        "num-partitions": settings.clients,
        "local-epochs": 1,
        "num-server-rounds": settings.rounds,
        "fraction-train": 0.75,
        "seed": settings.seed,
        "method": "puf-special",
        "unlearn-at-round": 0,
        "api-enabled": True,
        "api-port": 0,
        "progress": True,
    }


def over_budget(settings: Settings, needed_s: float) -> bool:
    """Whether ``needed_s`` more seconds would overrun the time budget."""
    return time.monotonic() - settings.started + needed_s > settings.budget_s


def run_lanes(
    settings: Settings,
    baselines: Baselines,
    control: bool,
    trials: list[Trial],
    finished: Callable[[], None],
) -> bool:
    """Run trials on ``settings.parallel`` lanes until the count or the budget is reached.

    Trials are appended to ``trials`` as they start; ``finished`` is called after each
    one. With ``control``, the first lane free runs the control trial (index -1) first.
    Returns whether the budget stopped the benchmark.
    """
    lock = threading.Lock()
    next_index = [-1 if control else 0]
    stopped_by_budget = [False]

    def estimate() -> float:
        finished = [t.wall_s for t in trials if t.wall_s and not t.control]
        return statistics.median(finished) if finished else FIRST_TRIAL_ESTIMATE_S

    def lane() -> None:
        while True:
            with lock:
                if next_index[0] >= settings.trials or STOP.is_set():
                    return
                if over_budget(settings, estimate()):
                    stopped_by_budget[0] = True
                    return
                trial = Trial(next_index[0], settings, baselines)
                next_index[0] += 1
                trials.append(trial)
            trial.run()
            print(progress_line(trial, settings), flush=True)
            finished()

    threads = [threading.Thread(target=lane, daemon=True) for _ in range(settings.parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=1.0)  # a short wait, so that a signal is handled at once
    return stopped_by_budget[0]


def progress_line(trial: Trial, settings: Settings) -> str:
    """One line per finished trial."""
    kills = ", ".join(f"{x.kill.moment}->{x.landed}" for x in trial.launches if x.killed and x.kill)
    checks = {
        k: trial.checks.get(k) for k in ("accepted", "lost", "applied_twice", "forgotten_back")
    }
    elapsed = time.monotonic() - settings.started
    return (
        f"[{elapsed:6.0f}s] trial {trial.index} ({trial.store}) {trial.wall_s:.0f}s "
        f"kills: {kills or 'none'}; {checks}"
        + (f" ERROR {trial.error[:300]}" if trial.error else "")
    )


def totals(records: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """The sums over the trials."""
    done = [r for r in records if not r["error"]]

    def total(key: str) -> int:
        return sum(int(r.get(key, 0)) for r in done)

    killed = [launch for r in records for launch in r["launches"] if launch["killed"]]
    walls = [r["wall_s"] for r in records]
    return {
        "trials": len(records),
        "trials_failed": len(records) - len(done),
        "kills": len(killed),
        "failed_launches": [
            launch["failed"] for r in records for launch in r["launches"] if launch["failed"]
        ],
        "launches": sum(len(r["launches"]) for r in records),
        "requests_accepted": total("accepted"),
        "requests_applied": total("applied"),
        "requests_rejected_with_reason": total("rejected_with_reason"),
        "requests_refused_by_api": total("refused_by_api"),
        "requests_unanswered_but_stored": total("unanswered_but_stored"),
        "lost": total("lost"),
        "applied_twice": total("applied_twice"),
        "audit_mismatches": total("audit_mismatches"),
        "forgotten_back": total("forgotten_back"),
        "restarts_with_forgotten_clients": sum(
            bool(x["forgotten_at_start"]) for r in done for x in r["launches"]
        ),
        "forgotten_data_left": total("forgotten_data_left"),
        "history_not_ok": sum(not r.get("history_rounds_ok", True) for r in done),
        "resubmissions": total("resubmissions"),
        "idempotency_mismatches": total("idempotency_mismatches"),
        "final_models_compared": sum(r["final_model"] in ("identical", "differs") for r in done),
        "final_models_differ": sum(r["final_model"] == "differs" for r in done),
        "stray_processes": sum(x["stray_processes"] for r in records for x in r["launches"]),
        "kills_by_moment": dict(Counter(launch["moment"] for launch in killed)),
        "kills_by_landed_phase": dict(Counter(launch["landed"] for launch in killed)),
        "kills_per_trial": dict(Counter(r["kills"] for r in records)),
        "trial_wall_s": {
            "mean": round(statistics.mean(walls), 1) if walls else 0,
            "median": round(statistics.median(walls), 1) if walls else 0,
            "max": round(max(walls), 1) if walls else 0,
        },
        "wall_s": round(wall_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="fault trials (default 50)")
    parser.add_argument(
        "--budget-s", type=float, default=1500.0, help="no trial starts past this (default 1500)"
    )
    parser.add_argument("--parallel", type=int, default=3, help="trials at a time (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="federation and trial seed (default 0)")
    parser.add_argument("--clients", type=int, default=4, help="clients (default 4)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per run (default 8)")
    parser.add_argument("--no-control", action="store_true", help="skip the uninterrupted control")
    parser.add_argument("--keep", type=Path, help="keep the trials' folders (logs, traces) here")
    parser.add_argument("--out", type=Path, help="folder to write fault_trials.json to")
    args = parser.parse_args()
    if args.clients < 3 or args.rounds < 4:
        parser.error("use at least 3 clients and 4 rounds")

    work = Path(tempfile.mkdtemp(prefix="fft", dir="/tmp")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    # Ray's sessions in a folder of their own, short enough for its socket paths
    ray_tmp = tempfile.mkdtemp(prefix="fftray", dir="/tmp")
    os.environ["RAY_TMPDIR"] = ray_tmp
    settings = Settings(
        args.trials,
        args.budget_s,
        args.parallel,
        args.seed,
        args.clients,
        args.rounds,
        work,
        time.monotonic(),
    )
    baselines = Baselines(settings)
    trials: list[Trial] = []
    outcome = {"stopped_by_budget": False, "interrupted": ""}
    lock = threading.Lock()

    def write(complete: bool) -> None:
        with lock:
            record = benchmark_record(args, settings, trials, outcome, complete)
            if complete:
                report("fault_trials", record, args.out)
            elif args.out is not None:  # a partial record after each trial, printed at the end
                with contextlib.redirect_stdout(io.StringIO()):
                    report("fault_trials", record, args.out)

    def terminate(signum: int, frame: object) -> None:
        STOP.set()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, terminate)
    baselines.start()
    try:
        outcome["stopped_by_budget"] = run_lanes(
            settings, baselines, not args.no_control, trials, lambda: write(complete=False)
        )
    except KeyboardInterrupt as interruption:
        STOP.set()
        outcome["interrupted"] = str(interruption) or "SIGINT"
        with LIVE_LOCK:
            for process in list(LIVE):
                kill_tree(process)
    finally:
        baselines.finish(wait=not STOP.is_set())
    write(complete=not STOP.is_set())
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def benchmark_record(
    args: argparse.Namespace,
    settings: Settings,
    trials: list[Trial],
    outcome: dict[str, Any],
    complete: bool,
) -> dict[str, Any]:
    """The record of the trials finished so far (all of them once ``complete``)."""
    finished = sorted(
        (t for t in list(trials) if t.wall_s and not t.interrupted), key=lambda t: t.index
    )
    control = next((trial for trial in finished if trial.control), None)
    records = [trial.record() for trial in finished if not trial.control]
    command = "python benchmarks/fault_trials.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return {
        "command": command,
        "complete": complete,
        "interrupted": outcome["interrupted"],
        "trials_interrupted": sum(t.interrupted for t in list(trials)),
        "config": base_run_config(settings),
        "settings": {
            "trials": args.trials,
            "budget_s": args.budget_s,
            "parallel": args.parallel,
            "seed": args.seed,
        },
        "stopped_by_budget": outcome["stopped_by_budget"],
        "definitions": DEFINITIONS,
        "totals": totals(records, time.monotonic() - settings.started),
        "control": control.record() if control else None,
        "trials": records,
    }


if __name__ == "__main__":
    main()
