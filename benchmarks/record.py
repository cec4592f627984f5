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
    """
    for item in items:
        key, _, value = item.partition("=")
        text, found = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text)
        if found != 1:
            raise SystemExit(f"{source} has no line {key} = ...: --set names a key of the file")
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
