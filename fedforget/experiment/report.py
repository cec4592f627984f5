"""``fedforget report DIR``: ``report.md``, ``report.html`` and PNG figures from the results files.

Everything is made from ``summary.json``, ``results-long.json`` and
``curves.csv`` (written by the runner), never from models, so a committed
results folder regenerates its report anywhere:

* ``figures/recovery.png``: test score against rounds after the request, one
  line per federated method (mean over target sets and seeds), the retrained
  reference as a band (mean +- std);
* ``figures/gaps.png``: per metric, each method's mean |value - retrained| with
  the 95 % confidence interval of the paired delta;
* ``figures/cost.png``: cost (wall seconds) against forgetting quality (mean
  gap of forget accuracy), one point per method;
* ``figures/verdicts.png`` (K >= 2 references): per method and metric, gap /
  retraining noise floor, green where the method is within retraining noise.

The verdict table sets each method's gap to the references against the
retraining noise floor (:mod:`fedforget.experiment.validity`); the report ends
with where the cells were computed (``provenance.json``).
"""

from __future__ import annotations

import csv
import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fedforget.experiment.results import (
    CURVES_CSV,
    LONG_JSON,
    PROVENANCE_JSON,
    REFUSED_JSON,
    SUMMARY_JSON,
)
from fedforget.experiment.validity import (
    DIFFERS,
    NEEDS_REFERENCES,
    REFERENCE_KIND,
    WITHIN,
    is_reference,
)
from fedforget.metrics.registry import table_metrics

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES_DIR = "figures"
GAP_COLUMNS = 4
"""Panels per line of ``gaps.png`` (one panel per metric)."""


def _load(out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    missing = [name for name in (SUMMARY_JSON, LONG_JSON) if not (out_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{out_dir} has no {', '.join(missing)}: run `fedforget experiment FILE --out "
            f"{out_dir}` first"
        )
    summary = json.loads((out_dir / SUMMARY_JSON).read_text())
    long = json.loads((out_dir / LONG_JSON).read_text())
    curves_path = out_dir / CURVES_CSV
    curves = []
    if curves_path.is_file() and curves_path.stat().st_size:
        with curves_path.open() as handle:
            curves = list(csv.DictReader(handle))
    return summary, long, curves


def _headline(summary: list[dict[str, Any]]) -> tuple[str, ...]:
    """The report's metric columns: what the registry says to show of the metrics present."""
    return table_metrics(s["metric"] for s in summary)


def _label(row: dict[str, Any]) -> str:
    return row["method"] if row["kind"] == "federated" else f"{row['method']} (c)"


def _number(value: float) -> float:
    """``value`` with a rounding residue such as -1e-17 (a divergence of 0) shown as 0."""
    return 0.0 if abs(value) < 5e-4 else value


def _cell(s: dict[str, Any]) -> str:
    text = f"{_number(s['mean']):.3f} ± {s['std']:.3f}"
    if s["gap_mean"] is not None and s["method"] != "retrain":
        text += f" (Δ {s['delta_mean']:+.3f}"
        if s["delta_ci_low"] is not None:
            text += f" [{s['delta_ci_low']:+.3f}, {s['delta_ci_high']:+.3f}]"
        text += ")"
    return text


def tables(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The report's main table: one row per method, mean ± std (Δ to retrain [95 % CI])."""
    metrics = _headline(summary)
    by_method: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for s in summary:
        if s["kind"] != REFERENCE_KIND:
            by_method[(s["kind"], s["method"])][s["metric"]] = s
    header = ["method", "n", "forget size", *metrics, "wall s", "recovery rounds"]
    order = {"original": 0, "retrain": 1}
    keys = sorted(by_method, key=lambda k: (k[0] != "federated", order.get(k[1], 2), k[1]))
    rows = []
    for kind, method in keys:
        entries = by_method[(kind, method)]
        any_entry = next(iter(entries.values()))
        wall = entries.get("cost_wall_s")
        recovery = entries.get("recovery_rounds")
        rows.append(
            [
                _label({"kind": kind, "method": method}),
                str(any_entry["n"]),
                f"{any_entry['forget_size']:.0f}",
                *(_cell(entries[m]) if m in entries else "" for m in metrics),
                f"{wall['mean']:.1f}" if wall else "",
                f"{recovery['mean']:.1f} ± {recovery['std']:.1f}" if recovery else "",
            ]
        )
    return header, rows


def _figures(
    out_dir: Path, summary: list[dict[str, Any]], curves: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out_dir / FIGURES_DIR
    folder.mkdir(exist_ok=True)
    made: list[tuple[str, str]] = []
    score = next((k for k in (curves[0] if curves else {}) if k.startswith("test_")), "")
    retrain = [s for s in summary if s["method"] == "retrain" and s["metric"] == score]
    if curves and score:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        by_method: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for point in curves:
            if point.get(score) not in ("", None):
                by_method[point["method"]][int(point["after"])].append(float(point[score]))
        for method, points in sorted(by_method.items()):
            rounds = sorted(points)
            ax.plot(rounds, [np.mean(points[r]) for r in rounds], marker=".", label=method)
        if retrain:
            mean, std = retrain[0]["mean"], retrain[0]["std"]
            ax.axhspan(mean - std, mean + std, color="grey", alpha=0.25, label="retrained ± std")
            ax.axhline(mean, color="grey", lw=1)
        ax.set_xlabel("rounds after the unlearning request")
        ax.set_ylabel(score.replace("_", " "))
        ax.set_title("Recovery: mean over target sets and seeds")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(folder / "recovery.png", dpi=110)
        plt.close(fig)
        made.append(("Recovery after the request", f"{FIGURES_DIR}/recovery.png"))

    metrics = list(_headline(summary))
    gap_rows = [s for s in summary if s["gap_mean"] is not None and s["method"] != "retrain"]
    if metrics and gap_rows:
        columns = min(len(metrics), GAP_COLUMNS)
        lines = -(-len(metrics) // columns)
        fig, axes = plt.subplots(
            lines, columns, figsize=(3.6 * columns, 4.2 * lines), sharey=False, squeeze=False
        )
        for ax in axes.flat[len(metrics) :]:
            ax.set_visible(False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            rows = [s for s in gap_rows if s["metric"] == metric]
            labels = [_label(s) for s in rows]
            means = [abs(s["delta_mean"]) for s in rows]
            errors = [
                (s["delta_ci_high"] - s["delta_ci_low"]) / 2 if s["delta_ci_low"] is not None else 0
                for s in rows
            ]
            ax.barh(labels, means, xerr=errors, color="tab:blue", alpha=0.8)
            ax.set_title(metric.replace("_", " "), fontsize=9)
            ax.set_xlabel("|mean Δ to retrain| (95 % CI)", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        fig.savefig(folder / "gaps.png", dpi=110)
        plt.close(fig)
        made.append(("Gaps to the retrained model", f"{FIGURES_DIR}/gaps.png"))

    quality = "forget_acc" if any(s["metric"] == "forget_acc" for s in summary) else "forget_dice"
    points = []
    for s in summary:
        if s["metric"] != quality or s["gap_mean"] is None or s["method"] == "retrain":
            continue
        wall = next(
            (
                w["mean"]
                for w in summary
                if w["kind"] == s["kind"]
                and w["method"] == s["method"]
                and w["metric"] == "cost_wall_s"
            ),
            None,
        )
        if wall is not None:
            points.append((_label(s), wall, s["gap_mean"]))
    if points:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for label, wall, gap in points:
            ax.scatter(wall, gap)
            ax.annotate(label, (wall, gap), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("wall seconds of the method (after the original)")
        ax.set_ylabel(f"mean |{quality} - retrained|")
        ax.set_title("Cost against forgetting quality (lower left is better)")
        fig.tight_layout()
        fig.savefig(folder / "cost.png", dpi=110)
        plt.close(fig)
        made.append(("Cost against forgetting quality", f"{FIGURES_DIR}/cost.png"))
    if _verdict_figure(folder, summary):
        made.append(("Within retraining noise", f"{FIGURES_DIR}/verdicts.png"))
    return made


VERDICT_INTRO = (
    "Retraining noise floor: {count} retrained references per target set and seed, trained "
    "on the same data with their own training seeds. Per metric, the floor is the largest "
    "difference among the references (for KL, JS and Average Gap, distances to the "
    "references, the largest distance of a reference to the others); a method's gap is "
    "|value - the references' mean| (for a distance, the distance itself). Each cell: "
    "mean gap / mean floor over target sets and seeds, [its 95 % interval], ✓ = within "
    "retraining noise (gap <= floor), ✗ = differs, and in how many (target set, seed) "
    "cells the gap is within the floor. A method within the floor on a metric cannot be "
    "told apart from retraining by that metric."
)
NO_FLOOR = (
    f"Retraining noise floor: {NEEDS_REFERENCES}. Set `references = K` (K >= 2) in the "
    "experiment file's [experiment] table to train K retrained references per target set "
    "and seed on the same data."
)
VERDICT_MARKS = {WITHIN: "✓", DIFFERS: "✗"}


def references_count(long: list[dict[str, Any]]) -> int:
    """K: the retrained references per (target set, seed) (the fewest any has)."""
    found: dict[tuple[str, int], set[str]] = defaultdict(set)
    for row in long:
        if is_reference(row):
            found[(row["targets"], row["seed"])].add(row["method"])
    return min((len(v) for v in found.values()), default=0)


def verdict_table(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per method (rows) and metric (columns): gap / floor [interval], verdict, cells within.

    The first row gives each metric's mean floor; empty when nothing has a floor.
    """
    judged = [s for s in summary if s.get("noise_floor") is not None]
    if not judged:
        return [], []
    order = [m for m in _headline(summary) if any(s["metric"] == m for s in judged)]
    by_method: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for s in judged:
        if s["kind"] != REFERENCE_KIND:
            by_method[(s["kind"], s["method"])][s["metric"]] = s
    floors = {m: [s["noise_floor"] for s in judged if s["metric"] == m] for m in order}
    rows = [["floor (mean)", *(f"{np.mean(floors[m]):.3f}" for m in order)]]
    rank = {"original": 0, "retrain": 1}
    keys = sorted(by_method, key=lambda k: (k[0] != "federated", rank.get(k[1], 2), k[1]))
    for kind, method in keys:
        entries = by_method[(kind, method)]
        rows.append(
            [
                _label({"kind": kind, "method": method}),
                *(_verdict_cell(entries[m]) if m in entries else "" for m in order),
            ]
        )
    return ["method", *order], rows


def _verdict_cell(s: dict[str, Any]) -> str:
    """``gap/floor [interval] mark k/n`` of one summary row."""
    floor, ratio = s["noise_floor"], s["gap_floor"]
    text = "inf" if ratio is None else f"{ratio:.2f}"
    if s["noise_gap_ci_low"] is not None and floor > 0:
        low, high = max(s["noise_gap_ci_low"], 0.0) / floor, s["noise_gap_ci_high"] / floor
        text += f" [{low:.2f}, {high:.2f}]"
    cells = round(s["within_share"] * s["n"]) if s.get("within_share") is not None else 0
    return f"{text} {VERDICT_MARKS.get(s['verdict'], '')} {cells}/{s['n']}"


_VERDICT_COLOURS = {
    "within (<= 0.5)": (0.30, 0.69, 0.31),
    "within (0.5-1)": (0.65, 0.84, 0.65),
    "differs (1-2)": (1.00, 0.80, 0.50),
    "differs (> 2)": (0.90, 0.22, 0.21),
}


def _shade(verdict: str, ratio: float | None) -> str:
    """The colour key of a verdict and its gap / floor."""
    if verdict == WITHIN:
        return "within (<= 0.5)" if ratio is not None and ratio <= 0.5 else "within (0.5-1)"
    return "differs (1-2)" if ratio is not None and ratio <= 2 else "differs (> 2)"


def _verdict_figure(folder: Path, summary: list[dict[str, Any]]) -> bool:
    """``verdicts.png``: gap / floor per method and metric; False when nothing has a floor."""
    header, rows = verdict_table(summary)
    if not rows[1:]:
        return False
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    metrics = header[1:]
    methods = [row[0] for row in rows[1:]]
    index = {(_label(s), s["metric"]): s for s in summary if s.get("noise_floor") is not None}
    colours = np.ones((len(methods), len(metrics), 3))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 + 0.62 * len(metrics)), 1.6 + 0.32 * len(methods)))
    for i, method in enumerate(methods):
        for j, metric in enumerate(metrics):
            s = index.get((method, metric))
            if s is None:
                continue
            ratio = s["gap_floor"]
            colours[i, j] = _VERDICT_COLOURS[_shade(s["verdict"], ratio)]
            text = ">9" if ratio is None or ratio > 9 else f"{ratio:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6)
    ax.imshow(colours, aspect="auto")
    ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics], fontsize=7)
    ax.set_yticks(range(len(methods)), methods, fontsize=7)
    plt.setp(ax.get_xticklabels(), rotation=60, ha="right")
    ax.set_title("gap / retraining noise floor per method and metric", fontsize=9)
    ax.legend(
        handles=[Patch(color=c, label=label) for label, c in _VERDICT_COLOURS.items()],
        fontsize=6,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    fig.tight_layout()
    fig.savefig(folder / "verdicts.png", dpi=110)
    plt.close(fig)
    return True


def _provenance(out_dir: Path) -> list[str]:
    """Lines naming where the cells were computed (from ``provenance.json``)."""
    path = out_dir / PROVENANCE_JSON
    if not path.is_file():
        return []
    return [f"{p['label']}: {p['cells']} cell(s)" for p in json.loads(path.read_text())]


PROVENANCE_INTRO = (
    "A run repeats exactly on the same machine with the same versions; torch's CPU kernels "
    "depend on the instruction set, so another machine gives other numbers."
)
REFUSED_INTRO = (
    "Cells a method refused or could not finish (e.g. a loss that stopped being finite); "
    "the method's means above are over its other cells."
)


def _refused(out_dir: Path) -> list[list[str]]:
    """Rows (method, cells, reason) of ``refused.json``, one per method and reason.

    Cells are listed as ``target set/seed`` when there are at most four, else
    counted; none if the file is absent.
    """
    path = out_dir / REFUSED_JSON
    if not path.is_file():
        return []
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for c in json.loads(path.read_text()):
        targets = ",".join(map(str, c.get("targets") or []))
        grouped[(_label(c), str(c.get("reason") or ""))].append(f"{targets}/{c.get('seed')}")
    return [
        [label, ", ".join(cells) if len(cells) <= 4 else f"{len(cells)} cells", reason]
        for (label, reason), cells in grouped.items()
    ]


def _html_rows(rows: list[list[str]]) -> str:
    """Table rows of escaped cells."""
    return "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )


def write_report(out_dir: Path) -> list[Path]:
    """Write ``report.md``, ``report.html`` and the figures; return the files written."""
    summary, long, curves = _load(out_dir)
    header, rows = tables(summary)
    figures = _figures(out_dir, summary, curves)
    seeds = sorted({r["seed"] for r in long})
    targets = sorted({r["targets"] for r in long})
    intro = (
        f"{len(targets)} target set(s) x {len(seeds)} seed(s) ({', '.join(map(str, seeds))}). "
        "Each cell is mean ± std over target sets and seeds; Δ is the mean signed difference "
        "to the retrained model of the same target set and seed, with its 95 % confidence "
        "interval (Student t over the paired differences); (c) marks centralised methods. "
        "MIA values are the fraction of forget examples predicted member (ideal: the "
        "retrained model's). The original row's Δ shows how much there was to forget."
    )
    markdown = [f"# Experiment report: {out_dir.name}", "", intro, ""]
    markdown.append("| " + " | ".join(header) + " |")
    markdown.append("|" + "---|" * len(header))
    markdown += ["| " + " | ".join(row) + " |" for row in rows]
    count = references_count(long)
    verdict_header, verdict_rows = verdict_table(summary)
    verdict_intro = VERDICT_INTRO.format(count=count) if verdict_rows else NO_FLOOR
    markdown += ["", "## Within retraining noise?", "", verdict_intro, ""]
    if verdict_rows:
        markdown.append("| " + " | ".join(verdict_header) + " |")
        markdown.append("|" + "---|" * len(verdict_header))
        markdown += ["| " + " | ".join(row) + " |" for row in verdict_rows]
    refused = _refused(out_dir)
    if refused:
        markdown += ["", "## Cells without a result", "", REFUSED_INTRO, ""]
        markdown += ["| method | cells (target set/seed) | reason |", "|---|---|---|"]
        markdown += ["| " + " | ".join(row) + " |" for row in refused]
    from fedforget.experiment.tune_report import tuning_section

    tuning_md, tuning_html, tuning_files = tuning_section(out_dir, FIGURES_DIR, summary)
    markdown += tuning_md
    for title, path in figures:
        markdown += ["", f"## {title}", "", f"![{title}]({path})"]
    machines = _provenance(out_dir)
    if machines:
        markdown += ["", "## Computed on", "", PROVENANCE_INTRO, ""]
        markdown += [f"- {line}" for line in machines]
    (out_dir / REPORT_MD).write_text("\n".join(markdown) + "\n")

    cells = _html_rows(rows)
    refused_html = (
        f"<h2>Cells without a result</h2><p>{html.escape(REFUSED_INTRO)}</p><table>"
        "<tr><th>method</th><th>cells (target set/seed)</th><th>reason</th></tr>"
        + _html_rows(refused)
        + "</table>"
        if refused
        else ""
    )
    verdicts_html = f"<h2>Within retraining noise?</h2><p>{html.escape(verdict_intro)}</p>" + (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in verdict_header)
        + f"</tr>{_html_rows(verdict_rows)}</table>"
        if verdict_rows
        else ""
    )
    machines_html = (
        f"<h2>Computed on</h2><p>{html.escape(PROVENANCE_INTRO)}</p><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in machines)
        + "</ul>"
        if machines
        else ""
    )
    images = "".join(
        f"<h2>{html.escape(t)}</h2><img src='{html.escape(p)}' alt='{html.escape(t)}'>"
        for t, p in figures
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(out_dir.name)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}td:first-child{text-align:left}img{max-width:100%}"
        "</style></head><body>"
        f"<h1>Experiment report: {html.escape(out_dir.name)}</h1><p>{html.escape(intro)}</p>"
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + f"</tr>{cells}</table>{verdicts_html}{refused_html}{tuning_html}{images}"
        f"{machines_html}"
        "</body></html>"
    )
    (out_dir / REPORT_HTML).write_text(page)
    return [
        out_dir / REPORT_MD,
        out_dir / REPORT_HTML,
        *(out_dir / path for _, path in figures),
        *tuning_files,
    ]
