"""The Evaluator's rows share the references' outputs and keep the values of fresh contexts."""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

from fedforget.config import FederationConfig
from fedforget.experiment.evaluation import Evaluator
from fedforget.metrics import MetricContext, MetricOptions, evaluate_metrics
from fedforget.task import model_arrays, model_with, new_model

CONFIG = FederationConfig(num_partitions=3, unlearn_clients="0", progress=False)


def count_images(models: dict[str, nn.Module]) -> Counter[str]:
    """Images each named module runs forward (not its copies: relearning runs a deep copy)."""
    seen: Counter[str] = Counter()
    for name, model in models.items():

        def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if module is models[name]:
                seen[name] += int(args[0].shape[0])

        model.register_forward_pre_hook(hook)
    return seen


def test_rows_run_each_reference_once_per_split_and_equal_a_fresh_context_per_row():
    """Two method rows and reference 0's own row: each reference runs forget, retain and test
    once in all, the original its forget set once; every value is the one a fresh context
    per row (the former way) gives."""
    # Prepare
    arrays = [model_arrays(new_model(CONFIG.replace(seed=s))) for s in (1, 2, 3, 4, 5)]
    references, original, methods = arrays[:2], arrays[2], arrays[3:]
    evaluate = Evaluator(CONFIG, references, original)
    seen = count_images(
        {"reference 0": evaluate.references[0], "reference 1": evaluate.references[1]}
        | {"original": evaluate.original}
    )

    def fresh_context(model: dict[str, Any], names: list[str], leave_out: int | None) -> dict:
        context = MetricContext(
            unlearned=model_with(CONFIG, model),
            retrained=tuple(
                model_with(CONFIG, r) for i, r in enumerate(references) if i != leave_out
            ),
            original=model_with(CONFIG, original),
            options=MetricOptions(seed=CONFIG.seed),
        )
        return evaluate_metrics(context, evaluate.splits, names)

    # Execute
    rows = [(evaluate.values(m), m, None) for m in methods]
    rows.append((evaluate.values(references[0], leave_out=0), references[0], 0))
    # Assert
    splits = evaluate.splits
    every_split = len(splits.forget_x) + len(splits.retain_x) + len(splits.test_x)
    forget = len(splits.forget_x)  # the original runs the forget set only: relearn's target
    assert seen == {"reference 0": every_split, "reference 1": every_split, "original": forget}
    assert "ulira_auc" in rows[0][0] and "relearn_steps" in rows[0][0]
    for values, model, leave_out in rows:
        assert values == fresh_context(model, list(values), leave_out)
    held = {id(m) for m in evaluate.cache.models()}
    assert held <= {id(m) for m in [*evaluate.references, evaluate.original]}
