"""The report's "How each method was set": the tuning behind an experiment's settings.

When an experiment ran with ``settings-from`` (:mod:`fedforget.experiment.tune`),
its results folder keeps a copy of that ``tuned.toml``; the report then adds
a table (each method's space, budget, chosen values, validation score and the
paper-default score on the same validation cells) and a figure of the best
feasible score against the number of trials, per method, so that a reader
sees whether the budget was enough.
"""

from __future__ import annotations

import html
import math
import tomllib
from pathlib import Path
from typing import Any

TUNED_FILE = "tuned.toml"
FIGURE = "tuning.png"
HEADER = ["method", "space", "budget", "chosen", "validation score", "paper-default score"]


def _number(value: Any) -> str:
    return "-" if not isinstance(value, float | int) or math.isnan(value) else f"{value:.4f}"


def _values(settings: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in settings.items()
    )


def tuning_rows(tuned: dict[str, Any]) -> list[list[str]]:
    """One row per tuned method (a centralised one marked ``(c)``)."""
    rows = []
    for kind in ("federated", "centralised"):
        for name, entry in tuned.get(kind, {}).items():
            space = "; ".join(f"{k}: {v}" for k, v in entry["space"].items()) or "nothing to tune"
            score = _number(entry["score"])
            if math.isnan(entry["score"]):  # no trial finished: the first reason says why
                first = entry["failed"][0] if entry.get("failed") else "no trial ran"
                score = f"no result ({first})"
            elif not entry["feasible"]:
                score += " (infeasible: no trial kept test accuracy)"
            failed = len(entry.get("failed", []))
            budget = f"{entry['budget']}" + (f" ({failed} failed)" if failed else "")
            default = _number(entry["default-score"])
            if not entry.get("default-feasible", True):
                default += " (infeasible)"
            label = name if kind == "federated" else f"{name} (c)"
            rows.append(
                [label, space, budget, _values(entry["settings"]) or "defaults", score, default]
            )
    return rows


def best_so_far(scores: list[float], feasible: list[bool], minimize: bool) -> list[float]:
    """The best feasible score after each trial (nan until a feasible one)."""
    best, curve = math.nan, []
    for score, ok in zip(scores, feasible, strict=True):
        if ok and not math.isnan(score):
            better = score < best if minimize else score > best
            best = score if math.isnan(best) or better else best
        curve.append(best)
    return curve


def _figure(out_dir: Path, tuned: dict[str, Any], folder_name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minimize = tuned["tune"]["direction"] == "minimize"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for kind in ("federated", "centralised"):
        for name, entry in tuned.get(kind, {}).items():
            if entry["budget"] < 2:
                continue  # nothing to tune: its one trial is its defaults
            curve = best_so_far(entry["trial-scores"], entry["trial-feasible"], minimize)
            label = name if kind == "federated" else f"{name} (c)"
            ax.plot(range(1, len(curve) + 1), curve, marker=".", label=label)
    values = [v for line in ax.lines for v in line.get_ydata() if not math.isnan(v)]
    if values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")  # scores an order of magnitude apart: each curve stays readable
    ax.set_xlabel("trials")
    ax.set_ylabel(f"best feasible validation {tuned['tune']['objective']}")
    ax.set_title("Best score against the number of trials (flat: the budget sufficed)")
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    folder = out_dir / folder_name
    folder.mkdir(exist_ok=True)
    fig.savefig(folder / FIGURE, dpi=110)
    plt.close(fig)
    return f"{folder_name}/{FIGURE}"


CONSTRAINT_HEADER = ["method", "test accuracy Δ to retraining [95 % CI]", "why"]
REFERENCE_ROWS = {("federated", "retrain"), ("federated", "original")}
"""Summary rows that are the references the constraint is measured against, not methods."""


def below_constraint(summary: list[dict[str, Any]], tuned: dict[str, Any]) -> list[list[str]]:
    """The methods whose mean test accuracy on the test cells breaks the tuning's constraint.

    One row per method whose mean signed test-accuracy difference to the
    retrained model (the experiment's ``delta_mean`` of ``test_acc``) falls
    more than ``max-test-drop`` below it, with the reason read from
    ``tuned.toml``: no setting in its space kept test accuracy on the
    validation cells; or its chosen setting kept it there but not on the test
    cells; or it was not tuned.
    """
    drop = tuned["tune"]["max-test-drop"]
    rows = []
    for row in summary:
        key = (row["kind"], row["method"])
        if row["metric"] != "test_acc" or key in REFERENCE_ROWS or row["delta_mean"] is None:
            continue
        if row["delta_mean"] >= -drop:
            continue
        entry = tuned.get(row["kind"], {}).get(row["method"])
        if entry is None:
            why = "not tuned: its paper's settings"
        elif not entry["feasible"]:
            why = "no setting in its space kept test accuracy on the validation cells"
        else:
            why = (
                "its chosen setting kept test accuracy on the validation cells, "
                "not on these test cells"
            )
        label = row["method"] if row["kind"] == "federated" else f"{row['method']} (c)"
        low, high = row["delta_ci_low"], row["delta_ci_high"]
        interval = f"{row['delta_mean']:+.3f} " + (
            "(one cell: no interval)" if low is None else f"[{low:+.3f}, {high:+.3f}]"
        )
        rows.append([label, interval, why])
    return rows


def _constraint_part(summary: list[dict[str, Any]], tuned: dict[str, Any]) -> tuple[list[str], str]:
    """The Markdown lines and HTML of the test cells against the tuning's constraint."""
    drop = tuned["tune"]["max-test-drop"]
    rows = below_constraint(summary, tuned)
    title = "### Test accuracy against the tuning's constraint"
    if not rows:
        text = (
            f"On the test cells, every method's mean test accuracy is within {drop:g} of the "
            "retrained model's."
        )
        return ["", title, "", text], f"<h3>{title[4:]}</h3><p>{html.escape(text)}</p>"
    text = (
        f"On the test cells, these methods' mean test accuracy falls more than {drop:g} below "
        "the retrained model's (Δ: the mean signed difference over target sets and seeds):"
    )
    markdown = ["", title, "", text, "", *_markdown_table(CONSTRAINT_HEADER, rows)]
    page = f"<h3>{title[4:]}</h3><p>{html.escape(text)}</p>" + _html_table(CONSTRAINT_HEADER, rows)
    return markdown, page


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + f"</tr>{cells}</table>"
    )


def tuning_section(
    out_dir: Path, figures_dir: str = "figures", summary: list[dict[str, Any]] | None = None
) -> tuple[list[str], str, list[Path]]:
    """The section's Markdown lines, its HTML and the files written ('' and [] without tuning).

    With the experiment's ``summary`` (its test cells), the section also lists
    the methods whose test accuracy there breaks the tuning's constraint, and why.
    """
    path = out_dir / TUNED_FILE
    if not path.is_file():
        return [], "", []
    tuned = tomllib.loads(path.read_text())
    protocol = tuned["tune"]
    intro = (
        f"Each method's settings were chosen by `fedforget tune` (Optuna TPE, seeded) on "
        f"validation cells outside the test cells: target sets "
        f"{protocol['validation-targets']}, seeds {protocol['validation-seeds']}"
        + (
            f", {protocol['validation-references']} retrained references each"
            if "validation-references" in protocol
            else ""
        )
        + ". Score: the "
        f"mean {protocol['objective']} over those cells ({protocol['direction']}); a trial is "
        f"infeasible when its test accuracy falls more than {protocol['max-test-drop']:g} below "
        "the retrained references'. Trial 0 of each method is its paper defaults."
    )
    rows = tuning_rows(tuned)
    figure = _figure(out_dir, tuned, figures_dir)
    title = "Best score against trials"
    markdown = ["", "## How each method was set", "", intro, "", *_markdown_table(HEADER, rows)]
    markdown += ["", f"![{title}]({figure})"]
    constraint_md, constraint_html = _constraint_part(summary, tuned) if summary else ([], "")
    markdown += constraint_md
    page = (
        f"<h2>How each method was set</h2><p>{html.escape(intro)}</p>"
        + _html_table(HEADER, rows)
        + f"<img src='{html.escape(figure)}' alt='{title}'>"
        + constraint_html
    )
    return markdown, page, [out_dir / figure]
