"""What ``store-dtype = "float16"`` does to the PUF update and to the unlearning metrics.

Trains a federation (digits by default) with the disk store in a temporary
state-dir, then takes the final global model ``w`` and every client's stored
pseudo-gradient (float32, exact) and forgets ``--targets`` twice from the same
``w``: once with the float32 pseudo-gradients, once with the same ones written
to and read back from a float16 disk store. Reported:

* the pseudo-gradients: ``||Delta16 - Delta32|| / ||Delta32||`` per client (max, mean);
* the PUF update (PUF-Special, eta 2, and PUF-Regular, eta 20, with every other
  client as the remaining ones): ``||w'16 - w'32||`` against ``||w'32 - w||``;
* the unlearning metrics (test, forget, retain accuracy, Yeom MIA) of ``w'32``
  and ``w'16``, and the stored bytes of each store.

    python benchmarks/store_dtype.py                          # 10 rounds, 2 local epochs
    python benchmarks/store_dtype.py --run-config "num-server-rounds=40" --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from record import report  # noqa: E402

from fedforget.arrays import Arrays, difference, norm  # noqa: E402
from fedforget.cli import parse_run_config  # noqa: E402
from fedforget.config import FederationConfig  # noqa: E402
from fedforget.data.datasets import load_federated_data  # noqa: E402
from fedforget.methods.puf import Contribution, puf_update  # noqa: E402
from fedforget.metrics import evaluate_unlearning  # noqa: E402
from fedforget.models import statistic_keys  # noqa: E402
from fedforget.simulation import simulate  # noqa: E402
from fedforget.state.checkpoint import load_checkpoint  # noqa: E402
from fedforget.state.disk_store import PSEUDO_GRADIENT_DIR, DiskPseudoGradientStore  # noqa: E402
from fedforget.task import model_with  # noqa: E402

DEFAULTS = {"num-server-rounds": 10, "local-epochs": 2, "unlearn-at-round": 0}


def stores(state_dir: Path, scratch: Path) -> tuple[dict[str, Any], dict[str, Any], int, int]:
    """Each client's entry from the run's float32 store and through a float16 store; bytes."""
    exact = DiskPseudoGradientStore(state_dir / PSEUDO_GRADIENT_DIR)
    half = DiskPseudoGradientStore(scratch, "float16")
    entries32, entries16 = {}, {}
    for client_id in exact.client_ids():
        entry = exact.latest(client_id)
        assert entry is not None
        half.put(client_id, entry)
        entries32[client_id], entries16[client_id] = entry, half.latest(client_id)
    return entries32, entries16, exact.nbytes(), half.nbytes()


def forget(
    global_arrays: Arrays,
    entries: dict[str, Any],
    targets: list[str],
    mode: str,
    statistic_keys: frozenset[str],
) -> Arrays:
    """PUF's update of ``global_arrays`` forgetting ``targets`` with ``entries``."""
    contribution = {c: Contribution(e.pseudo_gradient, e.num_examples) for c, e in entries.items()}
    return puf_update(
        global_arrays,
        {c: contribution[c] for c in targets},
        mode=mode,
        eta=2.0 if mode == "special" else 20.0,
        remaining={c: v for c, v in contribution.items() if c not in targets}
        if mode == "regular"
        else None,
        statistic_keys=statistic_keys,
    )


def measure(config: FederationConfig, targets: list[str]) -> dict[str, Any]:
    """Train, then compare PUF with float32 and float16 pseudo-gradients."""
    with tempfile.TemporaryDirectory() as folder:
        state_dir = Path(folder) / "state"
        run = config.replace(state_dir=str(state_dir), store="disk", store_dtype="float32")
        simulate(run)
        global_arrays = load_checkpoint(state_dir).arrays
        entries32, entries16, bytes32, bytes16 = stores(state_dir, Path(folder) / "half")
    relative = [
        norm(difference(entries16[c].pseudo_gradient, entries32[c].pseudo_gradient))
        / norm(entries32[c].pseudo_gradient)
        for c in entries32
    ]
    federated = load_federated_data(config)
    statistics = frozenset(statistic_keys(model_with(config, global_arrays)))
    record: dict[str, Any] = {
        "config": {k: v for k, v in config.to_run_config().items() if "." not in k},
        "targets": targets,
        "stored_bytes": {"float32": bytes32, "float16": bytes16},
        "pseudo_gradient_relative_error": {
            "max": max(relative),
            "mean": float(np.mean(relative)),
        },
        "original": evaluate_unlearning(
            model_with(config, global_arrays), federated, tuple(targets)
        ).as_dict(),
    }
    for mode in ("special", "regular"):
        exact = forget(global_arrays, entries32, targets, mode, statistics)
        half = forget(global_arrays, entries16, targets, mode, statistics)
        update = norm(difference(exact, global_arrays))
        gap = norm(difference(half, exact))
        metrics32 = evaluate_unlearning(model_with(config, exact), federated, tuple(targets))
        metrics16 = evaluate_unlearning(model_with(config, half), federated, tuple(targets))
        record[f"puf_{mode}"] = {
            "update_norm": update,
            "float16_difference_norm": gap,
            "relative_difference": gap / update,
            "metrics_float32": metrics32.as_dict(),
            "metrics_float16": metrics16.as_dict(),
        }
    return record


def main() -> None:
    """Parse arguments, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-config", action="append", help="key=value pairs, as fedforget run")
    parser.add_argument("--targets", default="0", help="clients to forget (default: 0)")
    parser.add_argument("--out", type=Path, help="write store_dtype.json here")
    args = parser.parse_args()
    config = FederationConfig.from_run_config(
        {**DEFAULTS, **parse_run_config(args.run_config), "progress": False}
    )
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    report("store_dtype", measure(config, targets), args.out)


if __name__ == "__main__":
    main()
