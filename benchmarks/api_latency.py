"""Latency of live unlearning requests: from the API's 202 to the PUF step, in rounds and seconds.

Runs the default simulation (``FederationConfig()``: digits, 10 clients, 10 local
epochs) with the API up and no configured request, submits one request per
client in ``--clients`` over HTTP on loopback, each a moment after round
``--every``, ``2 * --every``, ... has started, and waits for each to be applied.
Reported per request: rounds (applied round - round running at submission)
and seconds (applied time - submission time, both server-side), plus the
client-observed seconds until ``GET`` showed it applied (0.1 s polling).

    python benchmarks/api_latency.py                      # 20 rounds, clients 1,2,3
    python benchmarks/api_latency.py --run-config "num-server-rounds=70" --out benchmarks/results
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from api_support import wait_for_api, wait_for_round_start  # noqa: E402
from record import report  # noqa: E402

from fedforget.cli import parse_run_config  # noqa: E402
from fedforget.config import FederationConfig  # noqa: E402
from fedforget.simulation import simulate  # noqa: E402


def measure(config: FederationConfig, clients: list[str], every: int) -> list[dict[str, Any]]:
    """Run the simulation; submit and time one request per client."""
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def scenario() -> None:
        try:
            api = wait_for_api(Path(config.state_dir), timeout=600)
            for index, client_id in enumerate(clients, start=1):
                wait_for_round_start(api, at_least=index * every, timeout=600)
                sent = time.time()
                request = api.submit([client_id])
                applied = api.wait(request["request_id"], timeout=600, poll=0.1)
                results.append(
                    {
                        "client": client_id,
                        "submitted_round": request["submitted_round"],
                        "applied_round": applied["applied_round"],
                        "rounds": applied["applied_round"] - request["submitted_round"],
                        "seconds": applied["applied_at"] - request["submitted_at"],
                        "observed_seconds": time.time() - sent,
                        "status": applied["status"],
                    }
                )
        except BaseException as error:
            errors.append(error)

    driver = threading.Thread(target=scenario, daemon=True)
    driver.start()
    simulate(config)
    driver.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", action="append", help="overrides of the default config")
    parser.add_argument("--clients", default="1,2,3", help="one request per client (default 1,2,3)")
    parser.add_argument("--every", type=int, default=5, help="rounds between requests (default 5)")
    parser.add_argument("--out", type=Path, help="folder to write api_latency.json to")
    args = parser.parse_args()
    overrides = {"num-server-rounds": 20, "unlearn-at-round": 0, "progress": False}
    overrides.update(parse_run_config(args.run_config))
    with tempfile.TemporaryDirectory() as state_dir:
        overrides.update({"api-enabled": True, "state-dir": state_dir})
        config = FederationConfig.from_run_config(overrides)
        started = time.monotonic()
        rows = measure(config, args.clients.split(","), args.every)
    total = time.monotonic() - started
    print(f"{'client':>6} {'submitted':>9} {'applied':>7} {'rounds':>6} {'seconds':>8} {'seen':>6}")
    for row in rows:
        print(
            f"{row['client']:>6} {row['submitted_round']:>9} {row['applied_round']:>7} "
            f"{row['rounds']:>6} {row['seconds']:>8.2f} {row['observed_seconds']:>6.2f}"
        )
    summary = {
        "config": {k: v for k, v in config.to_run_config().items() if k != "state-dir"},
        "requests": rows,
        "median_rounds": statistics.median(r["rounds"] for r in rows),
        "median_seconds": statistics.median(r["seconds"] for r in rows),
        "total_s": round(total, 1),
    }
    print(
        f"median: {summary['median_rounds']} round(s), {summary['median_seconds']:.2f} s "
        f"(run {total:.0f} s)"
    )
    report("api_latency", summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
