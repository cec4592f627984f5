"""MkDocs hook: tables made from the code and the committed records when the site is built.

A page asks for a table with a marker on a line of its own::

    <!-- table: config-keys -->

and :func:`on_page_markdown` replaces it with the table :data:`TABLES` names.
Configuration keys come from :class:`fedforget.config.FederationConfig` (its
fields, defaults and ``KEY_HELP``), methods from the registries' class
attributes, metrics from the metric registry, and benchmark and experiment
tables from ``benchmarks/results/*.json`` and the committed experiment's
``summary.json``: nothing in them is typed by hand, so they cannot go stale.
An unknown marker stops the build.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout's fedforget, also when another one is installed
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
EXPERIMENT = ROOT / "experiments" / "results" / "digits-each"
MARKER = re.compile(r"^<!-- table: ([a-z0-9-]+) -->$", re.MULTILINE)
LEGEND = "gap = |value - retrain value|"

Row = Sequence[object]


class UnknownTable(KeyError):
    """A page asks for a table no renderer makes."""


# ------------------------------------------------------------------ helpers
def markdown_table(header: Sequence[str], rows: Iterable[Row]) -> str:
    """A Markdown table; ``|`` inside cells is escaped."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def code(value: object) -> str:
    """``value`` as inline code, written as a run-config value would be."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def seconds(value: float) -> str:
    """Seconds with the precision the records carry for them."""
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def signed(value: float) -> str:
    """A signed difference to three decimals."""
    return f"{value:+.3f}"


@cache
def record(name: str) -> dict[str, Any]:
    """The benchmark record ``benchmarks/results/<name>.json``."""
    loaded: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return loaded


def machine(data: Mapping[str, Any]) -> str:
    """The machine a record was measured on, as the record states it."""
    return str(data.get("machine", "not recorded"))


# ----------------------------------------------------------- configuration
def key_choices() -> dict[str, Sequence[str]]:
    """The values a key accepts, where the code lists them."""
    from fedforget import config
    from fedforget.methods import method_names
    from fedforget.registry import DATASET_REGISTRY, MODEL_REGISTRY

    return {
        "dataset": tuple(DATASET_REGISTRY.names()),
        "partitioner": config.PARTITIONERS,
        "model": tuple(MODEL_REGISTRY.names()),
        "method": method_names(),
        "forget-scenario": config.FORGET_SCENARIOS,
        "optimizer": config.OPTIMIZERS,
        "device": (*config.DEVICES, "cuda:<index>"),
        "store": config.STORE_KINDS,
        "store-dtype": config.STORE_DTYPES,
    }


def config_keys() -> str:
    """Every ``FederationConfig`` key: its default and meaning (``KEY_HELP``) and its values."""
    from fedforget.config import KEY_HELP, FederationConfig

    defaults = FederationConfig()
    choices = key_choices()
    rows = []
    for f in fields(FederationConfig):
        if f.name == "method_settings":
            continue
        key = FederationConfig.key(f.name)
        meaning = KEY_HELP[key]
        if key in choices:
            meaning += f" One of {', '.join(f'`{c}`' for c in choices[key])}."
        rows.append((f"`{key}`", code(getattr(defaults, f.name)), meaning))
    return markdown_table(("key", "default", "meaning"), rows)


def method_settings() -> str:
    """Every method table with its keys' defaults, and the methods that read it."""
    from fedforget.methods import method_class, method_names, method_tables
    from fedforget.methods.centralised import centralised_class, centralised_names

    users: dict[str, list[str]] = {}
    for name in method_names():
        users.setdefault(method_class(name).table, []).append(f"`{name}`")
    for name in centralised_names():
        users.setdefault(centralised_class(name).table, []).append(f"`{name}` (centralised)")
    rows = [
        (
            f"`{table}`",
            ", ".join(users.get(table, [])),
            ", ".join(f"`{key}` = {code(value)}" for key, value in settings.items()),
        )
        for table, settings in method_tables().items()
    ]
    return markdown_table(("table", "read by", "keys and defaults"), rows)


def search_spaces() -> str:
    """Every method's search space (``space``): what ``fedforget tune`` may vary."""
    from fedforget.methods import method_class, method_names
    from fedforget.methods.centralised import centralised_class, centralised_names
    from fedforget.methods.space import describe_space

    classes = [
        *((f"`{n}`", method_class(n)) for n in method_names()),
        *((f"`{n}` (centralised)", centralised_class(n)) for n in centralised_names()),
    ]
    rows = [
        (
            label,
            "; ".join(
                f"`{key}`: {text} (default {code(cls.defaults[key])})"
                for key, text in describe_space(cls.space).items()
            )
            or "nothing to tune",
        )
        for label, cls in classes
    ]
    return markdown_table(("method", "search space"), rows)


# ------------------------------------------------------------------ methods
def describe_needs(needs: Any) -> str:
    """A method's :class:`~fedforget.methods.base.Needs` in words."""
    parts = []
    if needs.history:
        parts.append(f"keeps {needs.history}")
    if needs.target_online:
        parts.append("the targets online")
    if needs.client_step:
        parts.append(f"a client step: {needs.client_step}")
    if tuple(needs.tasks) != ("classification", "segmentation"):
        parts.append(f"{' and '.join(needs.tasks)} only")
    if not needs.concurrent:
        parts.append("one client per step")
    return "; ".join(parts) or "nothing"


def federated_methods() -> str:
    """The federated registry: what each step does, what it needs, its paper."""
    from fedforget.methods import FEDERATED_METHODS, method_class

    rows = []
    for name in FEDERATED_METHODS:
        cls = method_class(name)
        any_client = "yes" if cls.client_step is None else "no"
        rows.append(
            (f"`{name}`", cls.summary, describe_needs(cls.needs), any_client, cls.reference)
        )
        # fedforget.UnlearningFedAvg serves the methods without a client step
    return markdown_table(
        ("name", "what its step does", "needs", "any ClientApp", "reference"), rows
    )


def method_deviations() -> str:
    """Where each federated method departs from its paper (class attribute ``deviations``)."""
    from fedforget.methods import FEDERATED_METHODS, method_class

    lines = []
    for name in FEDERATED_METHODS:
        text = str(getattr(method_class(name), "deviations", "") or "").strip()
        if text:
            lines.append(f"- **`{name}`**: {text}")
    return "\n".join(lines) or "No federated method declares a deviation from its paper."


def centralised_methods() -> str:
    """The centralised registry: what each does, where it applies, its paper."""
    from fedforget.methods.centralised import ALL_SCENARIOS, centralised_class, centralised_names

    rows = []
    for name in centralised_names():
        cls = centralised_class(name)
        applies = (
            "every scenario"
            if cls.scenarios == ALL_SCENARIOS
            else f"{', '.join(sorted(cls.scenarios))} only"
            + (f": {cls.scenarios_why}" if cls.scenarios_why else "")
        )
        rows.append((f"`{name}`", cls.summary, applies, ", ".join(cls.tasks), cls.reference))
    return markdown_table(("name", "what it does", "scenarios", "tasks", "reference"), rows)


# ------------------------------------------------------------------ metrics
def metrics() -> str:
    """The metric registry: kind, ideal, what each measures, where it applies."""
    from fedforget.metrics import METRICS
    from fedforget.metrics.base import SCENARIOS, TASKS

    rows = []
    for name, metric in METRICS.items():
        info = metric.info
        limits = []
        if tuple(info.tasks) != TASKS:
            limits.append(" / ".join(info.tasks))
        if tuple(info.scenarios) != SCENARIOS:
            limits.append(f"{' / '.join(info.scenarios)} scenario")
        if info.requires:
            limits.append(f"needs {', '.join(info.requires)}")
        rows.append(
            (f"`{name}`", info.kind, info.ideal, info.description, "; ".join(limits) or "all")
        )
    return markdown_table(("metric", "kind", "ideal", "what it measures", "applies to"), rows)


# ------------------------------------------------------------- benchmarks
def method_table(rows: list[dict[str, Any]]) -> str:
    """``fedforget run`` / ``compare``'s terminal table of ``rows``, without its legend."""
    from fedforget.experiment.tables import format_table

    lines = [
        line for line in format_table({"rows": rows}).splitlines() if not line.startswith(LEGEND)
    ]
    return "```\n" + "\n".join(lines) + "\n```"


def main_job() -> str:
    """The default ``fedforget run`` (``main_job.json``)."""
    data = record("main_job")
    return (
        f"{method_table(data['rows'])}\n\n"
        f"`{data['command']}`: {data['wall_s']:.0f} s of wall time in all (target: at most "
        f"{data['target_s']:.0f} s), on {machine(data)}."
    )


def compare(scenario: str) -> Callable[[], str]:
    """The renderer of one scenario of ``compare.json``."""

    def render() -> str:
        data = record("compare")[scenario]
        target = f" (target: at most {data['target_s']:.0f} s)" if data["target_s"] else ""
        return (
            f"{method_table(data['rows'])}\n\n"
            f"`{data['command']}`: {data['wall_s']:.0f} s of wall time{target}, on "
            f"{machine(record('compare'))}."
        )

    return render


def flower_overhead() -> str:
    """Flower + Ray against plain local training (``flower_overhead.json``)."""
    data = record("flower_overhead")
    rows = [
        (i + 1, seconds(f), seconds(local), f"{pct:.1f} %")
        for i, (f, local, pct) in enumerate(
            zip(data["flower_round_s"], data["local_round_s"], data["overhead_pct"], strict=True)
        )
    ]
    spread = data["overhead_pct_spread"]
    where = data["where_the_round_goes_s (per process, median of repeats)"]
    beside = data["cpu_beside_the_actors (cores busy, whole simulation, median of repeats)"]
    earlier = (
        f"before the 0.01 s reply poll: median "
        f"{data['before_simulation_reply_poll_change']['median_overhead_pct']:.1f} %; an "
        f"earlier run of the same code: median "
        f"{data['previous_run_same_code']['median_overhead_pct']:.1f} %"
    )
    parts = markdown_table(
        ("per process and round (median)", "Flower", "local"),
        [
            (part.replace("_", " "), seconds(where["flower"][part]), seconds(where["local"][part]))
            for part in where["flower"]
        ],
    )
    cores = markdown_table(
        ("beside the actors", "cores busy"), [(k, f"{v:.3f}") for k, v in beside.items()]
    )
    return (
        markdown_table(("repeat", "Flower round", "local round", "overhead"), rows)
        + f"\n\nMedian overhead {spread['median']:.1f} % (from {spread['min']:.1f} to "
        f"{spread['max']:.1f} %; target: at most {data['target_pct']:.0f} %, "
        f"{'met' if spread['median'] <= data['target_pct'] else 'not met'}); {earlier}. "
        f"{data['config']}, rounds {data['rounds_measured']}, {data['repeats']} repeats, on "
        f"{machine(data)}.\n\n{parts}\n\n{cores}"
    )


def api_latency() -> str:
    """Live requests over HTTP, from the 202 to the applied step (``api_latency.json``)."""
    data = record("api_latency")
    rows = [
        (
            r["client"],
            r["submitted_round"],
            r["applied_round"],
            r["rounds"],
            seconds(r["seconds"]),
            seconds(r["observed_seconds"]),
        )
        for r in data["requests"]
    ]
    return (
        markdown_table(
            (
                "client",
                "submitted in round",
                "applied in round",
                "rounds",
                "202 to applied",
                "seen applied by the client",
            ),
            rows,
        )
        + f"\n\nMedian: {data['median_rounds']} round, {seconds(data['median_seconds'])}; the "
        f"run took {data['total_s']:.0f} s ({data['config']['num-server-rounds']} rounds), on "
        f"{machine(data)}."
    )


def deploy_overhead() -> str:
    """Seconds per round, simulation against a local deployment (``deploy_overhead.json``)."""
    data = record("deploy_overhead")
    return markdown_table(
        ("task", "simulated round", "deployed round", "difference"),
        [
            (
                data["task"],
                seconds(data["simulation_round_s"]),
                seconds(data["deployment_round_s"]),
                seconds(data["overhead_s_per_round"]),
            )
        ],
    ) + (f"\n\nOn {machine(data)}.")


def deploy_breakdown() -> str:
    """One round's critical path, deployed / floor / simulated (``deploy_breakdown.json``)."""
    data = record("deploy_breakdown")
    columns = ("deployed", "floor", "simulated")
    segments: dict[str, None] = {}
    for column in columns:
        segments.update(dict.fromkeys(data[column]["critical_path_median_s"]))
    rows: list[Row] = []
    for segment in segments:
        values = [data[c]["critical_path_median_s"].get(segment) for c in columns]
        rows.append((segment, *("-" if v is None else f"{v:.2f}" for v in values)))
    rows.append(("**round (median)**", *(f"**{data[c]['median_round_s']:.2f}**" for c in columns)))
    target = data["target"]
    return (
        markdown_table(("seconds per round", *columns), rows)
        + f"\n\n{data['task']}, on {machine(data)}. Target: {target['binding']} = "
        f"{target['target_s']:.1f} s; the deployed round took {target['deployed_s']:.1f} s "
        f"({target['deployed_over_floor']:.2f} times the floor): "
        f"{'met' if target['met'] else 'not met'}."
    )


def clientapp_process() -> str:
    """Where a fresh ClientApp process spends its time (``deploy_breakdown.json``)."""
    data = record("deploy_breakdown")["clientapp_process"]
    names = {
        "flower_runtime_import_s": "importing Flower's runtime",
        "clientapp_module_import_s": "importing the ClientApp module",
        "task_code_import_s": "importing torch and fedforget's task code",
        "data_cache_read_s": "reading its partition from the cache",
        "train_handler_s": "the first training call",
        "train_handler_again_s": "the same call a second time in the same process",
        "state_dict_to_arrayrecord_s": "the model into an ArrayRecord",
        "reply_deflate_s": "serialising the reply",
    }
    rows = [(text, seconds(data[key])) for key, text in names.items()]
    imports = data["imports_by_package_s (-X importtime, self time)"]
    return (
        markdown_table(("a fresh ClientApp process", "seconds"), rows)
        + f"\n\nThe reply is {data['reply_bytes']:,} bytes. Import time by package "
        f"(`python -X importtime`, self time): "
        + ", ".join(f"{name} {value:.2f} s" for name, value in imports.items())
        + "."
    )


def gpu_client_training() -> str:
    """The paper's CIFAR-10 ResNet-18 clients on a GPU (``gpu_client_training.json``)."""
    data = record("gpu_client_training")
    rows = [
        (r["round"], seconds(r["round_s"]), f"{r['steps']:,}", f"{r['ms_per_step']:.1f} ms")
        for r in data["rounds"]
    ]
    return (
        markdown_table(
            ("round", "10 clients, one after the other", "optimiser steps", "per step"), rows
        )
        + f"\n\nMedian after round 1: {seconds(data['round_s_median_after_round_1'])}; one "
        f"round without augmentation: {seconds(data['no_augmentation_round_s'])} "
        f"({data['no_augmentation_ms_per_step']:.1f} ms per step). {data['config']}, "
        f"{data['data']}, through {data['training_path']}; {data['gpu']}, torch "
        f"{data['torch']}, Python {data['python']} ({machine(data)})."
    )


def store_dtype() -> str:
    """float16 against float32 pseudo-gradient stores (``store_dtype.json``)."""
    data = record("store_dtype")
    metric_names = list(data["puf_special"]["metrics_float32"])
    rows: list[Row] = []
    for method in ("puf_special", "puf_regular"):
        part = data[method]
        for dtype in ("float32", "float16"):
            values = part[f"metrics_{dtype}"]
            rows.append(
                (method.replace("_", "-"), dtype, *(f"{values[m]:.4f}" for m in metric_names))
            )
    stored = data["stored_bytes"]
    error = data["pseudo_gradient_relative_error"]
    return (
        markdown_table(("method", "store", *metric_names), rows)
        + f"\n\nStored: {stored['float32']:,} bytes in float32, {stored['float16']:,} in "
        f"float16. Relative error of the stored pseudo-gradients: at most {error['max']:.1e}; "
        f"of the PUF-Special update: {data['puf_special']['relative_difference']:.1e}. "
        f"{data['config']['num-partitions']} clients, {data['config']['num-server-rounds']} "
        f"rounds of {data['config']['local-epochs']} local epochs, on {machine(data)}."
    )


def experiment_cells() -> str:
    """Seconds per cell of ``fedforget experiment`` (``experiment_cells.json``)."""
    data = record("experiment_cells")
    rows = [(c["kind"], f"`{c['method']}`", seconds(c["seconds"])) for c in data["per_cell"]]
    medians = data["median_cell_s_by_kind"]
    return (
        markdown_table(("kind", "method", "seconds"), rows)
        + f"\n\n{data['experiment']}: {data['cells']} cells in {data['total_s']:.0f} s; median "
        f"cell: federated {seconds(medians['federated'])}, centralised "
        f"{seconds(medians['centralised'])}; the first cell also trains the original "
        f"federation and the retrained reference. On {machine(data)}."
    )


def tune_budget() -> str:
    """Seconds per trial of ``fedforget tune`` (``tune_budget.json``)."""
    data = record("tune_budget")
    rows = [
        (
            name,
            str(m["trials"]),
            seconds(m["median_trial_s"]),
            f"{m['estimated_budget_s'] / 60:.1f} min",
        )
        for name, m in data["methods"].items()
    ]
    reduced = " ".join(f"`{item}`" for item in data["reduced"]) or "none"
    count = data.get("centralised_workers", 1)
    workers = (
        f" (the centralised studies {data['centralised_s']:.0f} s, in {count} worker processes)"
        if count > 1
        else ""
    )
    return (
        markdown_table(
            ("method", "trials run", "median trial", f"estimate at {data['full_trials']} trials"),
            rows,
        )
        + f"\n\n`{data['command']}` ({data['experiment']}; reductions: {reduced}): "
        f"{data['total_s']:.0f} s in all{workers}, of which {data['outside_trials_s']:.0f} s "
        f"outside the trials (the validation cells' references and originals, the "
        f"simulation's start). Estimate of these methods' budget at {data['full_trials']} "
        f"trials: {data['estimated_full_budget_s'] / 60:.0f} min (an estimate from the median "
        f"trials, added as if one after another, not a measurement). Load average at the "
        f"start: {data['load_average_at_start']:.1f}. "
        f"On {machine(data)}."
    )


def many_clients() -> str:
    """10 to 10,000 simulated clients with the disk store (``many_clients.json``)."""
    data = record("many_clients")

    def measured(value: float | None, text: Callable[[float], str]) -> str:
        return "-" if value is None else text(value)

    rows = [
        (
            f"{s['clients']:,}",
            s["first_contact"],
            measured(s["round_s_first"], seconds) if s["completed"] else "did not finish",
            measured(s["round_s_median_later"], seconds),
            measured(s["flower_poll_s_median_later"], seconds),
            s["identity_queries_total"] if s["completed"] else "-",
            (
                f"{s['rss_after_round_1_mib']:.0f} -> {s['rss_end_mib']:.0f} MiB"
                if s["completed"]
                else "-"
            ),
            measured(s["store_files_max"], str),
        )
        for s in data["summary"]
    ]
    setup = data["setup"]
    return (
        markdown_table(
            (
                "clients",
                "first contact",
                "first round",
                "later rounds (median)",
                "of which polling Flower's grid",
                "identity queries",
                "server RSS after round 1 -> end",
                "files in the store",
            ),
            rows,
        )
        + f"\n\n{setup['dataset']}; {setup['model']}; {setup['store']}; {setup['rounds']}. "
        f"On {machine(data)}."
    )


def fault_trials() -> str:
    """Kill -9 of the server in every phase, resumed (``fault_trials.json``)."""
    data = record("fault_trials")
    t = data["totals"]
    summary = markdown_table(
        (
            "trials",
            "kills",
            "launches",
            "requests accepted",
            "applied",
            "rejected with a reason",
            "lost",
            "applied twice",
            "forgotten clients seen again",
            "final models differing from the uninterrupted run",
        ),
        [
            (
                t["trials"],
                t["kills"],
                t["launches"],
                t["requests_accepted"],
                t["requests_applied"],
                t["requests_rejected_with_reason"],
                t["lost"],
                t["applied_twice"],
                t["forgotten_back"],
                f"{t['final_models_differ']} of {t['final_models_compared']}",
            )
        ],
    )
    phases = markdown_table(
        ("where the kill landed", "kills"),
        sorted(t["kills_by_landed_phase"].items(), key=lambda item: -item[1]),
    )
    return (
        f"{summary}\n\n{phases}\n\n`{data['command']}`: {t['wall_s']:.0f} s in all; "
        f"{t['restarts_with_forgotten_clients']} restarts began with forgotten clients; on "
        f"{machine(data)}."
    )


# -------------------------------------------------------------- experiment
@cache
def experiment_summary() -> list[dict[str, Any]]:
    """The committed experiment's ``summary.json`` rows."""
    loaded: list[dict[str, Any]] = json.loads((EXPERIMENT / "summary.json").read_text())
    return loaded


def summary_value(kind: str, method: str, metric: str) -> dict[str, Any]:
    """One (kind, method, metric) row of the committed experiment's summary."""
    for row in experiment_summary():
        if (row["kind"], row["method"], row["metric"]) == (kind, method, metric):
            return row
    raise KeyError(f"{kind} {method} {metric} is not in {EXPERIMENT / 'summary.json'}")


def experiment_table() -> str:
    """The committed experiment, narrow: Δ to retrain of the headline metrics, cost."""
    methods: dict[tuple[str, str], None] = {}
    for row in experiment_summary():
        methods[(row["kind"], row["method"])] = None
    rows: list[Row] = []
    for kind, method in methods:
        if method == "retrain" and kind == "federated":
            continue  # the reference every Δ is taken against

        def delta(metric: str, kind: str = kind, method: str = method) -> str:
            v = summary_value(kind, method, metric)
            return (
                f"{signed(v['delta_mean'])} [{signed(v['delta_ci_low'])}, "
                f"{signed(v['delta_ci_high'])}]"
            )

        recovery = (
            f"{summary_value(kind, method, 'recovery_rounds')['mean']:.1f}"
            if kind == "federated" and method != "original"
            else "-"
        )
        label = f"`{method}`" + (" (c)" if kind == "centralised" else "")
        rows.append(
            (
                label,
                summary_value(kind, method, "forget_acc")["n"],
                delta("forget_acc"),
                delta("mia_yeom"),
                delta("test_acc"),
                recovery,
                f"{summary_value(kind, method, 'cost_wall_s')['mean']:.1f}",
            )
        )
    reference = summary_value("federated", "retrain", "cost_wall_s")["mean"]
    return markdown_table(
        (
            "method",
            "cells",
            "forget acc Δ [95 % CI]",
            "Yeom MIA Δ",
            "test acc Δ",
            "recovery rounds",
            "wall s",
        ),
        rows,
    ) + (
        f"\n\nΔ is taken against the federated `retrain` of the same target set and seed "
        f"(the reference: {reference:.1f} s per cell)."
    )


TABLES: dict[str, Callable[[], str]] = {
    "config-keys": config_keys,
    "method-settings": method_settings,
    "search-spaces": search_spaces,
    "federated-methods": federated_methods,
    "method-deviations": method_deviations,
    "centralised-methods": centralised_methods,
    "metrics": metrics,
    "main-job": main_job,
    "compare-client": compare("client"),
    "compare-class": compare("class"),
    "compare-random": compare("random"),
    "flower-overhead": flower_overhead,
    "api-latency": api_latency,
    "deploy-overhead": deploy_overhead,
    "deploy-breakdown": deploy_breakdown,
    "clientapp-process": clientapp_process,
    "gpu-client-training": gpu_client_training,
    "store-dtype": store_dtype,
    "experiment-cells": experiment_cells,
    "many-clients": many_clients,
    "tune-budget": tune_budget,
    "fault-trials": fault_trials,
    "experiment-digits-each": experiment_table,
}


def render(markdown: str) -> str:
    """``markdown`` with every table marker replaced by its table.

    Raises
    ------
    UnknownTable
        For a marker no renderer makes; the message lists the known ones.

    """

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise UnknownTable(
                f"no table named {name!r}: docs/hooks.py makes {', '.join(sorted(TABLES))}"
            )
        return TABLES[name]()

    return MARKER.sub(table, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: replace the page's table markers before it is rendered."""
    del kwargs
    return render(markdown)
