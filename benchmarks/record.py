"""How every benchmark reports: print the record, and write it as JSON on request."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def set_lines(text: str, items: list[str], source: Path) -> str:
    """``text`` (an experiment file) with each ``KEY=VALUE`` of ``items`` replacing ``KEY = ...``.

    The ``--set`` option of the benchmarks that time a reduced experiment file.
    A key must name one line of the file; ``TABLE.KEY=VALUE`` names the line of
    ``[TABLE]`` (``tune.references=1``) when more than one table has the key.
    """
    for item in items:
        name, _, value = item.partition("=")
        sections = re.split(r"(?m)^(?=\[)", text)  # the preamble, then one part per table
        table, _, key = name.rpartition(".")
        for wanted, within in ((name, None), (key, table)):
            line = re.compile(rf"(?m)^{re.escape(wanted)} = .*$")
            where = [
                (i, len(line.findall(part)))
                for i, part in enumerate(sections)
                if line.search(part) and (within is None or part.startswith(f"[{within}]"))
            ]
            if len(where) == 1 and where[0][1] == 1:
                i = where[0][0]
                sections[i] = line.sub(f"{wanted} = {value}", sections[i])
                break
        else:
            raise SystemExit(
                f"{source} has no single line {name} = ...: --set names one key of the file "
                "(TABLE.KEY for a key that more than one table has)"
            )
        text = "".join(sections)
    return text


def report(name: str, record: dict[str, Any], out: Path | None) -> None:
    """Print ``record`` (plus the machine) and write ``<out>/<name>.json`` if ``out`` is set."""
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    record = {"benchmark": name, **record, "machine": machine}
    text = json.dumps(record, indent=2)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(text + "\n")


def time_fedforget(*arguments: str) -> tuple[float, dict[str, Any]]:
    """Wall seconds of ``fedforget ARGUMENTS --out TMP`` as a user runs it, and its results.

    The reference cache is empty (a first run: the retrained reference is
    trained too, the worst case).
    """
    with tempfile.TemporaryDirectory() as run_dir, tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fedforget.cli", *arguments, "--out", run_dir],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "FEDFORGET_CACHE": cache},
        )
        wall = time.perf_counter() - start
        return wall, json.loads((Path(run_dir) / "results.json").read_text())
