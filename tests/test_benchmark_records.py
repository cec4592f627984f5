"""The benchmarks' reduced runs: ``--set`` names one line of the file, and each committed
record's reduction still applies to the experiment file it names."""

from __future__ import annotations

import json
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from record import set_lines  # noqa: E402

FILE = """\
[experiment]
methods = "all"
references = 1
[config]
lr = 0.05
centralised.ft.epochs = 5
[tune]
references = 3
"""


def test_set_replaces_one_line_and_a_table_key_names_its_table():
    text = set_lines(FILE, ["lr=0.1", "tune.references=2", "centralised.ft.epochs=1"], Path("f"))
    document = tomllib.loads(text)
    assert document["config"]["lr"] == 0.1
    assert document["tune"]["references"] == 2 and document["experiment"]["references"] == 1
    assert document["config"]["centralised"]["ft"]["epochs"] == 1
    assert set_lines(FILE, ["experiment.references=4"], Path("f")).count("references = 4") == 1


@pytest.mark.parametrize("item", ["references=2", "batch-size=8", "config.references=2"])
def test_set_refuses_a_key_that_names_no_single_line(item):
    with pytest.raises(SystemExit, match=f"no single line {item.split('=')[0]} ="):
        set_lines(FILE, [item], Path("f"))


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in sorted((ROOT / "benchmarks" / "results").glob("*.json"))
        if "reduced" in json.loads(p.read_text())
    ],
    ids=lambda p: p.name,
)
def test_each_reduced_record_still_applies_to_its_experiment_file(path):
    record = json.loads(path.read_text())
    arguments = shlex.split(record["command"])
    spec = ROOT / arguments[arguments.index("--spec") + 1]
    text = set_lines(spec.read_text(), record["reduced"], spec)
    tomllib.loads(text)  # still a valid file
    assert text != spec.read_text()
