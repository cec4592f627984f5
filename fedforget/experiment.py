"""The main job: original vs PUF vs the retrained reference, on one config.

1. Retrained reference: the same federation (same initial model, same seeds)
   for ``unlearn-at-round`` rounds, with the targets excluded from the start.
2. PUF run: train ``unlearn-at-round`` rounds with every client (the model just
   before the request is the "original"), forget the targets with PUF in the
   next round, then recover with the remaining clients until the test accuracy
   reaches the retrained model's (``--recovery-stop retrain-acc``, the paper's
   rule; Dice for segmentation) or for the whole budget (``budget``);
   ``num-server-rounds`` caps it.
3. Evaluate all three models (test / forget / retain accuracy or Dice, Yeom MIA) and
   write ``results.json``, ``methods.csv`` and ``history.csv``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fedforget.config import ConfigError, FederationConfig
from fedforget.data import load_federated_data
from fedforget.federation import (
    EVENTS_FILE,
    FINAL_MODEL_FILE,
    HISTORY_FILE,
    ORIGINAL_MODEL_FILE,
    read_arrays,
)
from fedforget.metrics import evaluate_unlearning
from fedforget.results import gaps_to_reference, write_results
from fedforget.simulation import simulate
from fedforget.task import model_with
from fedforget.training import resolve_device

RECOVERY_STOPS = ("retrain-acc", "budget")


def run_experiment(
    config: FederationConfig,
    out_dir: Path,
    recovery_stop: str = "retrain-acc",
    num_cpus: int | None = None,
    num_gpus: float | None = None,
) -> dict[str, Any]:
    """Run the main job and return (and write) its results."""
    if recovery_stop not in RECOVERY_STOPS:
        raise ConfigError(f"recovery-stop must be one of {', '.join(RECOVERY_STOPS)}")
    if not config.targets:
        raise ConfigError(
            "the main job compares unlearning methods: set unlearn-at-round and unlearn-clients"
        )
    load_federated_data(config)  # fail on missing data before any training
    started = time.monotonic()
    runs = out_dir / "runs"
    targets = config.targets

    retrain_config = config.replace(
        num_server_rounds=config.unlearn_at_round,
        unlearn_at_round=0,
        exclude_clients=",".join((*config.excluded, *targets)),
        recovery_target_acc=0.0,
        out_dir=str(runs / "retrain"),
        # the reference run must not serve the API nor share the PUF run's request queue
        api_enabled=False,
        state_dir="",
    )
    simulate(retrain_config, num_cpus, num_gpus=num_gpus)
    retrain_model = model_with(config, read_arrays(runs / "retrain" / FINAL_MODEL_FILE))
    federated = load_federated_data(config)
    device = resolve_device(config.device)
    retrain = evaluate_unlearning(retrain_model, federated, targets, config.excluded, device)
    retrain_s = time.monotonic() - started

    puf_config = config.replace(
        recovery_target_acc=retrain.test_score if recovery_stop == "retrain-acc" else 0.0,
        out_dir=str(runs / "puf"),
    )
    simulate(puf_config, num_cpus, num_gpus=num_gpus)
    puf_dir = runs / "puf"
    events = json.loads((puf_dir / EVENTS_FILE).read_text())
    if not events:
        raise RuntimeError(
            f"the unlearning request was not applied; see {puf_dir / 'requests.json'} for why"
        )
    original_model = model_with(config, read_arrays(puf_dir / ORIGINAL_MODEL_FILE))
    puf_model = model_with(config, read_arrays(puf_dir / FINAL_MODEL_FILE))
    original = evaluate_unlearning(original_model, federated, targets, config.excluded, device)
    puf = evaluate_unlearning(puf_model, federated, targets, config.excluded, device)

    puf_history = json.loads((puf_dir / HISTORY_FILE).read_text())
    retrain_history = json.loads((runs / "retrain" / HISTORY_FILE).read_text())
    last_round = puf_history[-1]["round"]
    recovered = puf.test_score >= retrain.test_score
    methods = {
        "original": original.as_dict(),
        "puf": {
            **puf.as_dict(),
            "recovery_rounds": last_round - config.unlearn_at_round,
            "recovered": recovered,
            "unlearning_round": events[0]["server_round"],
            "update_norm": events[0]["update_norm"],
        },
        "retrain": retrain.as_dict(),
    }
    results: dict[str, Any] = {
        "config": {**config.to_run_config(), "recovery-stop": recovery_stop},
        "targets": list(targets),
        "methods": methods,
        "gaps": gaps_to_reference(methods),
        "history": [{"run": "retrain", **r} for r in retrain_history]
        + [{"run": "puf", **r} for r in puf_history],
        "unlearning": events,
        "timing": {
            "retrain_s": round(retrain_s, 2),
            "total_s": round(time.monotonic() - started, 2),
        },
    }
    write_results(out_dir, results)
    return results
