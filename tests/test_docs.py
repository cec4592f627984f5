"""The docs site builds with `mkdocs build --strict`, its generated tables follow the code and
the records, and the README's commands, numbers and links hold."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from fedforget.config import KEY_HELP, FederationConfig
from fedforget.methods import method_class, method_names, method_tables

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def page(site: Path, name: str) -> str:
    return html.unescape((site / name / "index.html").read_text())


@pytest.mark.slow
def test_the_site_builds_strictly_with_the_generated_tables(site):
    configuration = page(site, "configuration")
    for f in fields(FederationConfig):
        if f.name != "method_settings":
            assert f"<code>{FederationConfig.key(f.name)}</code>" in configuration
    methods = page(site, "methods")
    for name in method_names():
        assert f"<code>{name}</code>" in methods
        assert method_class(name).summary in methods
    metrics = page(site, "metrics")
    assert "<code>svc_mia_m_entropy</code>" in metrics and "<code>ulira_acc</code>" in metrics
    main_job = json.loads((ROOT / "benchmarks/results/main_job.json").read_text())
    assert f"{main_job['wall_s']:.0f} s of wall time" in page(site, "getting-started")
    assert "<!-- table:" not in "".join(p.read_text() for p in site.rglob("*.html"))
    # the committed report is linked (a page of the site), not copied into docs/
    assert (site / "results" / "digits-each" / "report" / "index.html").is_file()
    assert (ROOT / "docs" / "results").is_symlink()


def test_every_config_key_has_a_meaning_and_nothing_else_does():
    keys = {FederationConfig.key(f.name) for f in fields(FederationConfig)} - {"method-settings"}
    assert set(KEY_HELP) == keys


def test_tables_follow_the_code_and_unknown_markers_stop_the_build(monkeypatch):
    hooks = load_hooks()
    keys = hooks.render("<!-- table: config-keys -->")
    assert "| `lr` | `0.05` | Client learning rate in round 1. |" in keys
    settings = hooks.render("<!-- table: method-settings -->")
    for table, defaults in method_tables().items():
        assert f"| `{table}` |" in settings
        assert all(f"`{key}` =" in settings for key in defaults)
    monkeypatch.setattr(
        method_class("natural"), "deviations", "recovery is not capped", raising=False
    )
    deviations = hooks.render("<!-- table: method-deviations -->").splitlines()
    assert "- **`natural`**: recovery is not capped" in deviations
    assert len(deviations) == sum(1 for name in method_names() if method_class(name).deviations)
    with pytest.raises(hooks.UnknownTable, match="no table named 'nope'"):
        hooks.render("text\n<!-- table: nope -->\n")


@pytest.mark.slow
def test_benchmark_tables_come_from_the_records(monkeypatch, tmp_path):
    hooks = load_hooks()
    record = json.loads((ROOT / "benchmarks/results/deploy_overhead.json").read_text())
    record["deployment_round_s"] = 12.345
    (tmp_path / "deploy_overhead.json").write_text(json.dumps(record))
    monkeypatch.setattr(hooks, "RESULTS", tmp_path)
    assert "| 12.3 s |" in hooks.render("<!-- table: deploy-overhead -->")


def test_benchmark_records_store_keys_the_config_accepts():
    valid = {FederationConfig.key(f.name) for f in fields(FederationConfig)}
    valid |= {f"{table}.{key}" for table, keys in method_tables().items() for key in keys}
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        config = json.loads(path.read_text()).get("config")
        if isinstance(config, dict):
            assert set(config) <= valid, (path.name, sorted(set(config) - valid))


def test_readme_is_short_and_starts_with_the_two_setup_commands():
    lines = README.splitlines()
    assert len(lines) <= 160
    commands = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1).splitlines()
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/fedforget run "
        "--out runs/demo",
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m "
        "pytest",
    ]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()  # CI runs it verbatim
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11,<3.13"
    assert "Python 3.11 or 3.12" in README
    main_job = json.loads((ROOT / "benchmarks/results/main_job.json").read_text())
    assert f"takes {main_job['wall_s']:.0f} s on a 2-core CPU" in README
    docs = {
        name: " ".join((ROOT / "docs" / f"{name}.md").read_text().split())
        for name in ("getting-started", "api")
    }
    assert f"default data: {main_job['wall_s']:.0f} s on a 2-core" in docs["getting-started"]
    retrain = next(r for r in main_job["rows"] if r["method"] == "retrain")
    assert f"({retrain['cost']['wall_s']:.0f} s for the default job" in docs["api"]


def test_readme_result_table_is_the_committed_experiments_summary():
    summary = json.loads((ROOT / "experiments/results/digits-each/summary.json").read_text())
    value = {(r["kind"], r["method"], r["metric"]): r for r in summary}
    rows = re.findall(r"^\| `([a-z-]+)`[^|]* \|(.*)\|$", README, re.MULTILINE)
    assert len(rows) == 9
    for method, cells in rows:
        forget, mia, test, rounds, wall = (c.strip() for c in cells.split("|"))
        v = {
            m: value[("federated", method, m)]
            for m in ("forget_acc", "mia_yeom", "test_acc", "recovery_rounds", "cost_wall_s")
        }
        assert forget == f"{v['forget_acc']['delta_mean']:+.3f}", method
        assert mia == f"{v['mia_yeom']['delta_mean']:+.3f}", method
        assert test == f"{v['test_acc']['delta_mean']:+.3f}", method
        assert rounds == f"{v['recovery_rounds']['mean']:.1f}", method
        assert wall == f"{v['cost_wall_s']['mean']:.1f}", method
    retrain = value[("federated", "retrain", "cost_wall_s")]["mean"]
    assert f"(retraining: {retrain:.1f} s)" in " ".join(README.split())


def test_readme_links_point_to_files_of_the_repository():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
