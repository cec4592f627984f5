"""The slow-read attack on the unlearning API: whether the token holder is still served.

A local user without the token opens ``--connections`` connections on loopback,
each with a 2 KiB receive buffer; each pipelines ``--pipelined`` requests for
the public ``GET /view`` page (15 KB each) and never reads. A connection the
server closes is opened again at once, for ``--seconds``. Meanwhile the token
holder calls ``GET /v1/status`` every 0.25 s (new connection, 5 s timeout).
Reported per flood size: authorised calls served and sent, their latency
(median, max), the most connections the server held, and the seconds the
server took to let go of every connection once the flood stopped (nobody ever
reads).

    python benchmarks/api_slow_read.py                               # 70 connections, 40 s
    python benchmarks/api_slow_read.py --connections 70 300 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import report  # noqa: E402

from fedforget.api.server import live_api  # noqa: E402
from fedforget.config import FederationConfig  # noqa: E402
from fedforget.federated.federation import build_strategy  # noqa: E402

RECEIVE_BUFFER = 2048
CALL_EVERY_S = 0.25
CALL_TIMEOUT_S = 5.0
RELEASE_TIMEOUT_S = 60.0


def flood_once(address: tuple[str, int], pipelined: int) -> socket.socket | None:
    """One connection that pipelines ``pipelined`` GET /view and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.settimeout(5)
    try:
        sock.connect(address)
        sock.sendall(b"GET /view HTTP/1.1\r\nHost: attacker\r\n\r\n" * pipelined)
    except OSError:
        sock.close()
        return None
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (seen without reading: MSG_PEEK)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def measure(connections: int, pipelined: int, seconds: float) -> dict[str, Any]:
    """Run one flood against a live API of an idle federation; what the token holder saw."""
    os.environ.pop("FEDFORGET_API_TOKEN", None)
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder) / "state"
        config = FederationConfig(
            num_partitions=3,
            unlearn_at_round=0,
            api_enabled=True,
            progress=False,
            state_dir=str(state),
        )
        with live_api(config, build_strategy(config)) as server:
            assert server is not None
            token = (state / "api-token").read_text().strip()
            address = (server.host, server.port)
            flood: list[socket.socket] = []
            stop = threading.Event()
            held: list[int] = []

            def attack() -> None:
                while not stop.is_set():
                    for sock in [s for s in flood if closed_by_server(s)]:
                        flood.remove(sock)
                        sock.close()
                    while len(flood) < connections and not stop.is_set():
                        sock = flood_once(address, pipelined)
                        if sock is not None:
                            flood.append(sock)
                    held.append(server.open_connections)
                    time.sleep(0.05)

            attacker = threading.Thread(target=attack, daemon=True)
            attacker.start()
            time.sleep(1.0)
            latencies: list[float] = []
            failures: list[str] = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    answer = httpx.get(
                        f"{server.url}/v1/status",
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=CALL_TIMEOUT_S,
                    )
                    if answer.status_code == 200:
                        latencies.append(time.monotonic() - started)
                    else:
                        failures.append(f"HTTP {answer.status_code}")
                except httpx.HTTPError as error:
                    failures.append(type(error).__name__)
                time.sleep(CALL_EVERY_S)
            stop.set()
            stopped = time.monotonic()
            attacker.join(timeout=30)
            while server.open_connections and time.monotonic() - stopped < RELEASE_TIMEOUT_S:
                time.sleep(0.1)
            released_s = time.monotonic() - stopped
            for sock in flood:
                sock.close()
    return {
        "connections": connections,
        "pipelined": pipelined,
        "seconds": seconds,
        "calls_sent": len(latencies) + len(failures),
        "calls_served": len(latencies),
        "failures": sorted(set(failures)),
        "latency_median_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "connections_held_max": max(held, default=0),
        "released_after_flood_s": round(released_s, 1),
    }


def main() -> None:
    """Run the flood for each ``--connections`` and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[70])
    parser.add_argument("--pipelined", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--out", type=Path, help="write api_slow_read.json here")
    args = parser.parse_args()
    floods = [measure(n, args.pipelined, args.seconds) for n in args.connections]
    report("api_slow_read", {"floods": floods}, args.out)


if __name__ == "__main__":
    main()
