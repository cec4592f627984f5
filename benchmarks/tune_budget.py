"""Seconds of a tuning budget of `fedforget tune`, per trial and per method.

Runs ``fedforget tune`` on an experiment file with a ``[tune]`` table
(default ``experiments/digits-each-tuned.toml``) into a temporary folder with
an empty reference cache, and records the seconds outside the trials (the
validation cells' references and originals, the simulation's start), of each
trial by method, the
median trial per method and, from them, the estimated time of the file's own
budget (``trials`` per method: the one-trial methods once), with where it ran
(:func:`fedforget.provenance.provenance`).

    python benchmarks/tune_budget.py [--out benchmarks/results]

A file too large to time whole on this machine is timed at a reduced size,
written into the record: ``--set KEY=VALUE`` replaces a line of the file, as
in ``experiment_cells.py`` (``--set local-epochs=1 --set trials=3 --set
'methods=["puf-special"]' --set 'validation-targets=[["0"]]'``). The record's
estimate is then of the reduced file's trials at the full ``trials`` of the
original file; the full size's time is an estimate, not a measurement. The
estimate adds the trials as if they ran one after another; the centralised
studies run in parallel (``centralised_workers`` of the record), so
``total_s`` is the measured time of the reduced run with that parallelism.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

from record import report, set_lines

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "experiments" / "digits-each-tuned.toml"


def main() -> None:
    """Tune the (reduced) experiment file once; record seconds per trial and method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--spec", type=Path, default=SPEC, help="the experiment file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace the file's line KEY = ... (a smaller run of a large tuning)",
    )
    args = parser.parse_args()
    original = args.spec.read_text()
    full_trials = tomllib.loads(original).get("tune", {}).get("trials", 20)
    text = set_lines(original, args.set, args.spec)
    text = re.sub(r"(?m)^settings-from = .*$\n", "", text)  # the tuning leaves it out anyway
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        os.environ["FEDFORGET_CACHE"] = str(Path(folder) / "cache")
        from fedforget.experiment.spec import load_experiment
        from fedforget.experiment.tune import Tuner, bind, load_tune
        from fedforget.provenance import provenance

        spec_path = Path(folder) / "tune.toml"
        spec_path.write_text(text)
        spec = load_experiment(spec_path, settings_from=False)
        tune = load_tune(spec_path, spec)
        out = Path(folder) / "out"
        bind(spec_path, out)
        started = time.monotonic()
        tuner = Tuner(spec, tune, out, progress=False)
        entries = tuner.run()
        total_s = time.monotonic() - started
    # the validation cells' references and originals, and starting the simulation (the
    # centralised trials overlap in their workers: their phase counts by its wall time)
    federated_s = sum(s for kind, _, s in tuner.trial_seconds if kind == "federated")
    outside_s = total_s - federated_s - tuner.centralised_s
    methods = {}
    for entry in entries:
        kind, name = entry["kind"], entry["method"]
        times = [s for k, n, s in tuner.trial_seconds if (k, n) == (kind, name)]
        budget = entry["budget"] if entry["budget"] == 1 else full_trials
        methods[f"{kind} {name}"] = {
            "trials": len(times),
            "trial_s": [round(s, 2) for s in times],
            "median_trial_s": round(statistics.median(times), 2),
            "failed": len(entry["failed"]),
            "estimated_budget_s": round(statistics.median(times) * budget, 1),
        }
    spec_name = args.spec.resolve().relative_to(ROOT) if args.spec.is_absolute() else args.spec
    record = {
        "command": f"python benchmarks/tune_budget.py --spec {spec_name}"
        + "".join(f" --set '{item}'" for item in args.set),
        "reduced": args.set,
        "experiment": f"{spec_name}: validation targets "
        f"{[list(t) for t in tune.validation_targets]}, seeds {list(tune.validation_seeds)}, "
        f"{len(entries)} method(s)",
        "provenance": provenance(),
        "load_average_at_start": load_at_start,
        "centralised_workers": tuner.workers(sum(1 for e in entries if e["kind"] == "centralised")),
        "total_s": round(total_s, 1),
        "centralised_s": round(tuner.centralised_s, 1),
        "outside_trials_s": round(outside_s, 1),
        "full_trials": full_trials,
        "estimated_full_budget_s": round(
            outside_s + sum(m["estimated_budget_s"] for m in methods.values()), 1
        ),
        "methods": methods,
    }
    name = "tune_budget" if args.spec.stem == SPEC.stem else f"tune_budget-{args.spec.stem}"
    report(name, record, args.out)


if __name__ == "__main__":
    main()
