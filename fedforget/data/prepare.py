"""Build a run's data split and client partitions into the on-disk cache, once.

    python -m fedforget.data.prepare [--run-config "num-partitions=3 dataset='digits'"]

The run config is read as ``flwr run --run-config`` reads it, on top of the
defaults (those of ``[tool.flwr.app.config]``). Container images run this at
build time and ``fedforget deploy app`` before ``flwr run``, so that no
ClientApp process builds them (:mod:`fedforget.data.cache`).
"""

from __future__ import annotations

import argparse
import time

from fedforget.config import FederationConfig


def parse_run_config(run_config: str) -> FederationConfig:
    """The config a ``--run-config`` string gives on top of the defaults."""
    from flwr.common.config import parse_config_args

    values = parse_config_args([run_config]) if run_config.strip() else {}
    return FederationConfig.from_run_config(values)


def main(argv: list[str] | None = None) -> int:
    """Prepare the data of one run config; print where it went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", default="", help="flwr run --run-config value")
    args = parser.parse_args(argv)
    config = parse_run_config(args.run_config)
    from fedforget.data.cache import cache_root
    from fedforget.data.datasets import load_federated_data

    start = time.perf_counter()
    federated = load_federated_data(config)
    sizes = ", ".join(str(len(p)) for p in federated.partitions)
    print(
        f"{config.dataset}: {len(federated.partitions)} partitions ({sizes} examples) "
        f"ready in {cache_root()} ({time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
