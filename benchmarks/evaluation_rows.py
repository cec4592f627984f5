"""Seconds to evaluate one row of an experiment at full size, and relearning's worst case.

Builds the :class:`~fedforget.experiment.evaluation.Evaluator` of an
experiment file's first (target set, seed) (default
``experiments/fashion-mnist-backdoor.toml``: 60,000 Fashion-MNIST training
images, 10,000 test images) with K freshly initialised references and a
freshly initialised original (evaluation cost does not depend on the weights,
except relearning's steps), then times ``Evaluator.values`` on ``--rows``
further fresh models, as a method's cells are evaluated: the first row also
computes the references' outputs, the next ones reuse them. Each row records
its seconds, the images its models ran forward (evaluation and relearning,
counted by a forward hook: independent of the machine's load) and its
relearn steps.

Relearning's worst case, a model that does not recover within the cap, runs
an evaluation of the whole forget set after every step: ``--relearn-steps S``
times :func:`~fedforget.metrics.relearn_time` of a fresh model to a forget
accuracy of ``--relearn-target`` it does not reach in S steps.

    python benchmarks/evaluation_rows.py [--references K] [--rows 2] [--relearn-steps 20]
        [--relearn-target 0.9] [--out benchmarks/results]

The record is ``evaluation_rows-<file name>.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from record import report

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "experiments" / "fashion-mnist-backdoor.toml"


class ForwardCount:
    """Images run forward through models of one class (a global forward hook)."""

    def __init__(self, model_class: type) -> None:
        self.model_class, self.images = model_class, 0
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self.count)

    def count(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        """Add the batch of a forward call of the model (not of its layers)."""
        if type(module) is self.model_class:
            self.images += int(args[0].shape[0])


def main() -> None:
    """Time Evaluator rows and relearning at the experiment file's size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--spec", type=Path, default=SPEC, help="the experiment file")
    parser.add_argument(
        "--references", type=int, help="retrained references K (default: the file's)"
    )
    parser.add_argument("--rows", type=int, default=2, help="method rows to time (default: 2)")
    parser.add_argument(
        "--relearn-steps", type=int, default=20, help="relearning steps to time (0: none)"
    )
    parser.add_argument("--relearn-target", type=float, default=0.9)
    args = parser.parse_args()

    from fedforget.experiment.evaluation import Evaluator
    from fedforget.experiment.spec import load_experiment
    from fedforget.metrics import relearn_time
    from fedforget.task import model_arrays, model_with, new_model

    spec = load_experiment(args.spec)
    references = spec.references if args.references is None else args.references
    config = spec.cell_config(spec.target_sets[0], spec.seeds[0])

    def fresh(seed: int) -> dict[str, Any]:
        return model_arrays(new_model(config.replace(seed=seed)))

    load_at_start = os.getloadavg()[0]
    started = time.monotonic()
    evaluate = Evaluator(
        config, [fresh(1000 + k) for k in range(references)], fresh(999), spec.metrics
    )
    build_s = time.monotonic() - started
    counter = ForwardCount(type(evaluate.references[0]))
    rows = []
    for row in range(args.rows):
        model = fresh(2000 + row)
        counter.images, started = 0, time.monotonic()
        values = evaluate.values(model)
        rows.append(
            {
                "seconds": round(time.monotonic() - started, 2),
                "images_forward": counter.images,
                "relearn_steps": values.get("relearn_steps"),
                "metrics": len(values),
            }
        )
        print(rows[-1], flush=True)
    relearn = None
    if args.relearn_steps:
        x, y = evaluate.splits.part("forget")
        counter.images, started = 0, time.monotonic()
        result = relearn_time(
            model_with(config, fresh(3000)),
            x,
            y,
            args.relearn_target,
            max_steps=args.relearn_steps,
            seed=config.seed,
        )
        relearn = {
            "target": args.relearn_target,
            "max_steps": args.relearn_steps,
            "steps": result.steps,
            "recovered": result.recovered,
            "final_score": round(result.final_score, 4),
            "seconds": round(time.monotonic() - started, 2),
            "images_forward": counter.images,
        }
    counter.handle.remove()
    from fedforget.provenance import provenance

    splits = evaluate.splits
    command = (
        f"python benchmarks/evaluation_rows.py --spec {args.spec} --references {references} "
        f"--rows {args.rows} --relearn-steps {args.relearn_steps} "
        f"--relearn-target {args.relearn_target}"
    )
    record = {
        "command": command,
        "experiment": f"{args.spec}, seed {spec.seeds[0]}, targets {spec.target_sets[0]}, "
        f"{references} fresh reference(s), fresh original and rows",
        "sizes": {
            "forget": len(splits.forget_x),
            "retain": len(splits.retain_x),
            "test": len(splits.test_x),
            "backdoor": 0 if splits.backdoor_x is None else len(splits.backdoor_x),
        },
        "provenance": provenance(),
        "load_average_at_start": load_at_start,
        "build_s": round(build_s, 2),
        "rows": rows,
        "relearn": relearn,
    }
    report(f"evaluation_rows-{args.spec.stem}", record, args.out)


if __name__ == "__main__":
    main()
