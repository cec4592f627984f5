"""Many clients: 10, 1,000 and 10,000 simulated clients, 10 of them training a round.

Each configuration runs fedforget's ServerApp on Flower's Ray simulation
(``num_supernodes`` = clients, one CPU per virtual client, as many Ray
actors as CPUs) in a process of its own, with the disk pseudo-gradient store
(``store = "disk"``) in a temporary ``state-dir`` and a checkpoint after every
round. Measured per round: wall seconds, the nodes asked for their client id,
the resident memory of the ServerApp's process (``VmRSS`` at the round's end,
its maximum sampled every 50 ms during the round, ``VmHWM``), the disk store's
files and bytes, the checkpoint's bytes. In simulation that process also
holds Flower's simulation engine (its SuperLink state: every node, every
node's context) and the Ray driver; the clients run in the Ray actors.

After ``--rounds`` ordinary rounds an unlearning request (PUF-Special,
pseudo-gradient source "stored") names the client whose latest training is
the oldest: the step must read that client's file of that round from the
disk store; the run checks that the model after the step is exactly
``puf_update`` of the model before it and of that stored entry, and that the
client's file is gone afterwards.

Data and model, the same in every configuration: Fashion-MNIST's 60,000
training images split iid into 10,000 partitions of 6 images (a federation of
N clients uses partitions 0..N-1, so every client's local work is the same
whatever N; digits' 1,437 training images cannot give 10,000 clients one
each), the ``mlp`` model (25,450 parameters, a 102 KB update), one local
epoch, the server evaluating on the 10,000 test images every round.
Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``
(``apt-get install dataset-fashion-mnist``). Running on 2 CPUs shared with
other work, start it with ``nice``::

    nice -n 5 .venv/bin/python benchmarks/many_clients.py --out benchmarks/results
    python benchmarks/many_clients.py --clients 10,1000 --rounds 6   # a quicker look

A configuration that does not finish within ``--timeout-s`` is stopped and
reported as far as it got (never dropped). ``--ask-all-clients`` runs the
same federations asking every new node for its client id in round 1, as
fedforget did before a round asked only the new nodes it draws
(``IDENTIFY_ALL_MAX`` in :mod:`fedforget.federated.strategy`). To show where
a round's time goes, the calls of Flower's in-memory SuperLink state that
scale with the nodes are timed (``flower_state``); that wrapping itself costs
well under a microsecond a call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import report  # noqa: E402

PARTITIONS = 10_000
"""Partitions of the training set in every configuration (6 Fashion-MNIST images each)."""
TARGET_REQUEST = "many-clients-oldest"
SAMPLE_INTERVAL_S = 0.05
MIB = 1 << 20


def federation_config(clients: int, per_round: int, rounds: int, state_dir: str) -> Any:
    """The run config of one configuration: ``rounds`` ordinary rounds, the step, one more."""
    from fedforget.config import FederationConfig

    return FederationConfig(
        dataset="fashion-mnist",
        partitioner="iid",
        num_partitions=PARTITIONS,
        model="mlp",
        local_epochs=1,
        num_server_rounds=rounds + 2,
        fraction_train=min(1.0, per_round / clients),
        unlearn_at_round=0,
        method="puf-special",
        store="disk",
        state_dir=state_dir,
        progress=False,
    )


# ------------------------------------------------------------------ one run
def memory_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class RssSampler(threading.Thread):
    """Samples this process's VmRSS every ``SAMPLE_INTERVAL_S``; the maximum since a reset."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0
        self._stop = threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop`."""
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, memory_mib()[0])

    def take_peak(self) -> float:
        """The maximum since the last call (the current RSS included); starts a new period."""
        peak, self.peak = max(self.peak, memory_mib()[0]), 0.0
        return peak

    def stopped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; whether :meth:`stop` was called."""
        return self._stop.wait(timeout)

    def stop(self) -> None:
        """End the sampling."""
        self._stop.set()


class CountingGrid:
    """The simulation's grid, counting the nodes each kind of message went to."""

    def __init__(self, grid: Any) -> None:
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "sent", {})
        object.__setattr__(self, "seconds", {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.grid, name, value)  # e.g. run_rounds' pull_interval

    def send_and_receive(self, messages: Iterable[Any], timeout: float | None = None) -> Any:
        """The grid's ``send_and_receive``, counting the messages and seconds by type."""
        messages = list(messages)
        for message in messages:
            kind = message.metadata.message_type
            self.sent[kind] = self.sent.get(kind, 0) + 1
        start = time.monotonic()
        replies = self.grid.send_and_receive(messages, timeout=timeout)
        if messages:
            kind = messages[0].metadata.message_type
            self.seconds[kind] = self.seconds.get(kind, 0.0) + time.monotonic() - start
        return replies

    def take(self, kind: str) -> tuple[int, float]:
        """Messages of ``kind`` sent, and seconds waiting for their replies, since the last call."""
        return int(self.sent.pop(kind, 0)), float(self.seconds.pop(kind, 0.0))


class StateTimer:
    """Times the calls of Flower's in-memory SuperLink state that scale with the nodes.

    The simulation engine's polling thread calls ``get_message_ins`` once per
    node every 0.1 s, and each call scans every message in flight; the
    ServerApp's ``grid.get_node_ids()`` calls ``get_nodes``, which lists every
    node. Both run in the ServerApp's process (another thread, same GIL).
    ``store_message_res`` is called once per reply (its count shows how far a
    run stopped mid-round had got).
    """

    METHODS = ("get_message_ins", "get_nodes", "store_message_res")

    def __init__(self) -> None:
        self.calls = dict.fromkeys(self.METHODS, 0)
        self.seconds = dict.fromkeys(self.METHODS, 0.0)
        self.total_calls = dict.fromkeys(self.METHODS, 0)
        self.total_seconds = dict.fromkeys(self.METHODS, 0.0)
        self.first_poll: float | None = None
        """When the engine first polled for messages: its nodes registered, Ray's actors up."""

    def install(self) -> None:
        """Wrap the methods of ``InMemoryLinkState`` (this process only)."""
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

        for name in self.METHODS:
            setattr(InMemoryLinkState, name, self._timed(name, getattr(InMemoryLinkState, name)))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.first_poll is None and name == "get_message_ins":
                self.first_poll = time.monotonic()
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.calls[name] += 1
                self.seconds[name] += elapsed
                self.total_calls[name] += 1
                self.total_seconds[name] += elapsed

        return timed

    def take(self) -> dict[str, Any]:
        """Calls and seconds per method since the last call."""
        taken = {
            name: {"calls": self.calls[name], "s": round(self.seconds[name], 3)}
            for name in self.METHODS
        }
        self.calls = dict.fromkeys(self.METHODS, 0)
        self.seconds = dict.fromkeys(self.METHODS, 0.0)
        return taken

    def totals(self) -> dict[str, Any]:
        """Calls and seconds per method since :meth:`install`."""
        return {
            name: {"calls": self.total_calls[name], "s": round(self.total_seconds[name], 3)}
            for name in self.METHODS
        }


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(files, bytes) of the regular files in ``folder``."""
    sizes = [p.stat().st_size for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return len(sizes), sum(sizes)


def run_one(
    clients: int, per_round: int, rounds: int, result_path: Path, ask_all: bool = False
) -> None:
    """Run one configuration; keep ``result_path`` up to date (it survives a stop).

    ``ask_all``: ask every new node for its client id in round 1, as fedforget
    did before it asked only the nodes a round draws (for comparison).
    """
    import numpy as np

    from fedforget.arrays import to_arrays
    from fedforget.federated import strategy as strategy_module
    from fedforget.federated.federation import build_strategy, checkpointer, run_rounds
    from fedforget.methods.puf import Contribution, puf_update
    from fedforget.simulation import simulate_app
    from fedforget.state.checkpoint import checkpoint_path
    from fedforget.state.disk_store import PSEUDO_GRADIENT_DIR
    from fedforget.task import load_federated_data, model_arrays, new_model

    state_dir = Path(tempfile.mkdtemp(prefix="fedforget-many-clients-"))
    store_dir = state_dir / PSEUDO_GRADIENT_DIR
    config = federation_config(clients, per_round, rounds, str(state_dir))
    if ask_all:
        strategy_module.IDENTIFY_ALL_MAX = sys.maxsize
    result: dict[str, Any] = {
        "clients": clients,
        "per_round": per_round,
        "first_contact": "ask every new node" if ask_all else "ask the drawn new nodes",
        "rounds": [],
    }
    lock = threading.Lock()

    def save(**changes: Any) -> None:
        with lock:
            result.update(changes)
            result["flower_state_total"] = flower_state.totals()
            result["load_average_1min"] = round(os.getloadavg()[0], 1)
            result["rss_max_mib"] = max(result.get("rss_max_mib", 0.0), sampler.peak)
            result["vm_hwm_mib"] = memory_mib()[1]
            result_path.write_text(json.dumps(result, indent=1))

    sampler = RssSampler()
    sampler.start()
    flower_state = StateTimer()
    flower_state.install()
    result["load_average_1min_at_start"] = round(os.getloadavg()[0], 1)
    load_federated_data(config)
    save(rss_before_simulation_mib=memory_mib()[0])

    def beat() -> None:  # the memory figures survive a run stopped mid-round
        while not sampler.stopped(5.0):
            save()

    threading.Thread(target=beat, daemon=True).start()
    started = time.monotonic()

    def server_main(grid: Any) -> dict[str, Any]:
        entered = time.monotonic()
        save(rss_server_start_mib=memory_mib()[0])
        counting = CountingGrid(grid)
        strategy = build_strategy(config)
        history: list[dict[str, Any]] = []
        write_checkpoint = checkpointer(config, strategy, history)
        puf = strategy.methods["puf-special"]
        store = puf.store
        served: list[tuple[int, str, int | None]] = []  # (round, client, round of the entry)
        read_entry = store.latest
        in_progress = [1]

        def latest(client_id: str) -> Any:
            entry = read_entry(client_id)
            served.append((in_progress[0], client_id, entry.server_round if entry else None))
            return entry

        store.latest = latest  # type: ignore[method-assign]
        before: dict[str, Any] = {}
        last_end = [entered]
        sampler.take_peak()
        flower_state.take()

        def end_of_round(server_round: int, arrays: Any, recovered: bool) -> None:
            write_checkpoint(server_round, arrays, recovered)
            now = time.monotonic()
            in_progress[0] = server_round + 1
            record = strategy.rounds[-1]
            files, disk_bytes = folder_bytes(store_dir)
            rss, hwm = memory_mib()
            queries, query_s = counting.take("query")
            row = {
                "round": server_round,
                "phase": record.phase,
                "trained": len(record.contributors),
                "identity_queries": queries,
                "identity_query_s": round(query_s, 3),
                "wall_s": round(now - last_end[0], 3),
                "strategy_round_s": round(record.round_s, 3),
                "rss_end_mib": round(rss, 1),
                "rss_max_mib": round(sampler.take_peak(), 1),
                "vm_hwm_mib": round(hwm, 1),
                "store_clients": len(store.client_ids()),
                "store_index_bytes": store.nbytes(),
                "store_files": files,
                "store_disk_bytes": disk_bytes,
                "checkpoint_bytes": checkpoint_path(state_dir).stat().st_size,
                "clients_known": len(strategy.directory.node_clients),
                "flower_state": flower_state.take(),
            }
            last_end[0] = now
            if server_round == 1 and flower_state.first_poll is not None:
                result["engine_start_s"] = round(flower_state.first_poll - started, 2)
            with lock:
                result["rounds"].append(row)
            if server_round == rounds:
                before.update(request_oldest_client(strategy, to_arrays(arrays), read_entry))
            if server_round == rounds + 1 and before:
                after = to_arrays(arrays)
                expected = puf_update(
                    before["model"],
                    {before["client"]: Contribution(before["entry"], before["examples"])},
                    mode="special",
                    eta=float(puf.defaults["eta-special"]),
                    statistic_keys=puf.context.statistic_keys,
                )
                gap = max(float(np.max(np.abs(after[k] - expected[k]))) for k in expected)
                moved = max(float(np.max(np.abs(after[k] - before["model"][k]))) for k in after)
                step_reads = [
                    {"round": r, "client": c, "entry_round": e}
                    for r, c, e in served
                    if c == before["client"]
                ]
                save(
                    old_client_request={
                        "client": before["client"],
                        "last_trained_round": before["last_trained"],
                        "requested_after_round": rounds,
                        "stored_entry_round": before["entry_round"],
                        "reads_of_its_entry": step_reads,
                        "max_abs_model_vs_puf_update": gap,
                        "max_abs_model_change": moved,
                    }
                )
            else:
                save()

        strategy.checkpoint = end_of_round
        initial = model_arrays(new_model(config))
        _, _, wall = run_rounds(counting, config, strategy, initial, history=history)
        client = before.get("client")
        left = [p.name for p in store_dir.iterdir() if client and p.name.startswith(f"{client}.")]
        request = strategy.requests.get(TARGET_REQUEST)
        if "old_client_request" in result:
            result["old_client_request"].update(
                status=request.status if request else "missing",
                applied_round=request.applied_round if request else None,
                files_left_after_erase=left,
            )
        save(rounds_wall_s=round(wall, 2), rss_server_end_mib=memory_mib()[0])
        return {}

    try:
        simulate_app(server_main, clients, num_cpus=os.cpu_count() or 2)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    sampler.stop()
    save(completed=True, total_s=round(time.monotonic() - started, 2))


def request_oldest_client(
    strategy: Any, model: dict[str, Any], read_entry: Callable[[str], Any]
) -> dict[str, Any]:
    """Queue PUF-Special for the client whose latest training is the oldest; what it will use."""
    from fedforget.protocol import natural_order
    from fedforget.requests import UnlearningRequest

    last_trained: dict[str, int] = {}
    for record in strategy.rounds:
        for client in record.contributors:
            last_trained[client] = record.server_round
    client = min(last_trained, key=lambda c: (last_trained[c], natural_order(c)))
    entry = read_entry(client)
    strategy.requests.submit(
        UnlearningRequest(
            client_ids=(client,),
            method="puf-special",
            not_before_round=strategy.rounds[-1].server_round + 1,
            request_id=TARGET_REQUEST,
        )
    )
    return {
        "client": client,
        "last_trained": last_trained[client],
        "model": model,
        "entry": entry.pseudo_gradient,
        "examples": entry.num_examples,
        "entry_round": entry.server_round,
    }


# --------------------------------------------------------------- the driver
def prepare_data(per_round: int, rounds: int) -> float:
    """Build (first time) or read the data cache every configuration shares; seconds."""
    from fedforget.task import load_federated_data

    start = time.monotonic()
    with tempfile.TemporaryDirectory() as state_dir:
        load_federated_data(federation_config(PARTITIONS, per_round, rounds, state_dir))
    return round(time.monotonic() - start, 1)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of ``process`` (its Ray included), SIGKILL after 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_configuration(
    clients: int, per_round: int, rounds: int, timeout_s: float, logs: Path, ask_all: bool = False
) -> dict[str, Any]:
    """One configuration in its own process, stopped after ``timeout_s``."""
    name = f"clients-{clients}{'-ask-all' if ask_all else ''}"
    result_path, log_path = logs / f"{name}.json", logs / f"{name}.log"
    command = [
        sys.executable,
        __file__,
        "--one",
        str(clients),
        "--per-round",
        str(per_round),
        "--rounds",
        str(rounds),
        "--result",
        str(result_path),
        *(["--ask-all"] if ask_all else []),
    ]
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        stopped = True
        try:
            returncode = process.wait(timeout=timeout_s)
            stopped = False
        except subprocess.TimeoutExpired:
            pass
        finally:  # past the limit, or this driver stopped: the run and its Ray go too
            if stopped:
                stop_group(process)
        returncode = process.returncode
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    result.setdefault("clients", clients)
    result.setdefault("per_round", per_round)
    result.setdefault("completed", False)
    result["process_wall_s"] = round(time.monotonic() - started, 1)
    if stopped:
        result["stopped"] = f"stopped after the {timeout_s:.0f} s limit"
    if returncode and not stopped:
        result["error"] = log_path.read_text(errors="replace")[-3000:]
    return result


def median_of(values: Iterable[float]) -> float | None:
    """The median, rounded to ms (None if there are no values)."""
    values = list(values)
    return round(statistics.median(values), 3) if values else None


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The table row of one configuration."""
    rows = result.get("rounds", [])
    ordinary = [r for r in rows if r["phase"] != "unlearn"]
    later = [r["wall_s"] for r in ordinary[1:]]
    rss_end = [r["rss_end_mib"] for r in rows]
    return {
        "clients": result["clients"],
        "clients_per_round": result["per_round"],
        "first_contact": result.get("first_contact"),
        "rounds_done": len(rows),
        "completed": result.get("completed", False),
        "engine_start_s": result.get("engine_start_s"),
        "load_average_1min": [
            result.get("load_average_1min_at_start"),
            result.get("load_average_1min"),
        ],
        "round_s_first": ordinary[0]["wall_s"] if ordinary else None,
        "round_s_median_later": median_of(later),
        "round_s_max_later": max(later) if later else None,
        "identity_queries_first_round": ordinary[0]["identity_queries"] if ordinary else None,
        "identity_query_s_first_round": ordinary[0]["identity_query_s"] if ordinary else None,
        "identity_queries_total": sum(r["identity_queries"] for r in rows),
        "updates_aggregated_per_round": [r["trained"] for r in rows],
        "flower_poll_s_median_later": median_of(
            r["flower_state"]["get_message_ins"]["s"] for r in ordinary[1:]
        ),
        "flower_get_nodes_s_median_later": median_of(
            r["flower_state"]["get_nodes"]["s"] for r in ordinary[1:]
        ),
        "rss_server_start_mib": result.get("rss_server_start_mib"),
        "rss_after_round_1_mib": rss_end[0] if rss_end else None,
        "rss_end_mib": rss_end[-1] if rss_end else None,
        "rss_peak_mib": round(max(r["rss_max_mib"] for r in rows), 1) if rows else None,
        "rss_peak_whole_process_mib": round(result.get("rss_max_mib", 0.0), 1) or None,
        "rss_growth_round_1_to_end_mib": round(rss_end[-1] - rss_end[0], 1) if rss_end else None,
        "store_disk_bytes_max": max((r["store_disk_bytes"] for r in rows), default=None),
        "store_files_max": max((r["store_files"] for r in rows), default=None),
        "checkpoint_bytes_end": rows[-1]["checkpoint_bytes"] if rows else None,
        "old_client_request": result.get("old_client_request"),
    }


def main() -> None:
    """Parse arguments; run one configuration (``--one``) or all of them and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", default="10,1000,10000", help="comma-separated counts")
    parser.add_argument("--per-round", type=int, default=10, help="clients training a round")
    parser.add_argument("--rounds", type=int, default=8, help="ordinary rounds before the step")
    parser.add_argument("--timeout-s", type=float, default=480.0, help="limit per configuration")
    parser.add_argument(
        "--ask-all-clients",
        default="1000,10000",
        help="also run these counts asking every new node who it is in round 1 (the behaviour "
        "before; '' for none)",
    )
    parser.add_argument("--ask-all-timeout-s", type=float, default=240.0)
    parser.add_argument("--out", type=Path, default=None, help="write many_clients.json here")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ask-all", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.per_round, args.rounds, args.result, args.ask_all)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the cleanup of a run
    runs = [(int(c), False, args.timeout_s) for c in args.clients.split(",") if c.strip()]
    runs += [(int(c), True, args.ask_all_timeout_s) for c in args.ask_all_clients.split(",") if c]
    if max(clients for clients, _, _ in runs) > PARTITIONS:
        parser.error(f"at most {PARTITIONS} clients: the data has {PARTITIONS} partitions")
    data_s = prepare_data(args.per_round, args.rounds)
    results: list[dict[str, Any]] = []

    def record(complete: bool) -> dict[str, Any]:
        return {
            "command": " ".join(["python", "benchmarks/many_clients.py", *sys.argv[1:]]),
            "complete": complete,
            "setup": {
                "dataset": "fashion-mnist, iid, 10,000 partitions of 6 images; "
                "N clients use partitions 0..N-1",
                "model": "mlp (25,450 parameters)",
                "store": "disk (safetensors, one file per client), checkpoint every round",
                "rounds": f"{args.rounds} ordinary, then PUF-Special (stored) for the client "
                f"that trained longest ago, then one more",
                "data_prepare_s": data_s,
                "ray": "private instance, one CPU per virtual client, an actor per CPU",
            },
            "summary": [summary(r) for r in results],
            "runs": results,
        }

    with tempfile.TemporaryDirectory(prefix="many-clients-logs-") as logs:
        for clients, ask_all, timeout_s in runs:
            print(f"{clients} clients (ask all: {ask_all}) ...", file=sys.stderr, flush=True)
            result = run_configuration(
                clients, args.per_round, args.rounds, timeout_s, Path(logs), ask_all
            )
            results.append(result)
            print(json.dumps(summary(result)), file=sys.stderr, flush=True)
            if args.out is not None:  # what is done so far survives an interrupted run
                args.out.mkdir(parents=True, exist_ok=True)
                text = json.dumps({"benchmark": "many_clients", **record(False)}, indent=2)
                (args.out / "many_clients.json").write_text(text + "\n")
    report("many_clients", record(True), args.out)


if __name__ == "__main__":
    main()
