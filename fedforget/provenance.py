"""Where a result was computed: what every results file records beside its numbers.

A run repeats exactly on the same machine with the same library versions
(seeded generators, aggregation in client-id order), but not across machines:
torch picks its CPU kernels by the instruction set it finds (AVX2, AVX-512,
...), and those round differently, so after tens of rounds two machines part
ways. Each results file therefore records the CPU capability torch uses, the
torch, flwr and numpy versions and the thread count.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def provenance() -> dict[str, Any]:
    """The computing environment of the calling process, as a JSON-ready dict.

    ``threads`` is torch's intra-op thread count in this process (the one that
    evaluates the models and writes the results); Flower's simulation gives
    each virtual client one CPU.
    """
    import numpy as np
    import torch

    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "flwr": _version("flwr"),
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def provenance_label(record: dict[str, Any]) -> str:
    """A provenance as one short text (a CSV column, a report line)."""
    cpu = " ".join(str(record[k]) for k in ("cpu_capability", "machine") if record.get(k))
    return (
        f"{cpu or '?'}, torch {record.get('torch', '?')}, flwr {record.get('flwr', '?')}, "
        f"numpy {record.get('numpy', '?')}, {record.get('threads', '?')} thread(s)"
    )
