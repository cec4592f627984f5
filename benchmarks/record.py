"""How every benchmark reports: print the record, and write it as JSON on request."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def report(name: str, record: dict[str, Any], out: Path | None) -> None:
    """Print ``record`` (plus the machine) and write ``<out>/<name>.json`` if ``out`` is set."""
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    record = {"benchmark": name, **record, "machine": machine}
    text = json.dumps(record, indent=2)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(text + "\n")
