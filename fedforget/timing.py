"""Opt-in timestamps of ClientApp and grid work, for the deployment benchmarks.

With ``FEDFORGET_TIMING_LOG=<file>`` in a process's environment (SuperNodes
pass it on to every ClientApp process they start, the SuperLink to the
ServerApp, Ray to its actors), each ClientApp action appends one JSON line to
the file: wall-clock times (``time.time()``) of the process's start, of the
end of the ClientApp module's import, and of each phase the action marks
(``imports``, ``config``, ``data``, ``arrays-in``, ``train``, ``reply``); the
process appends an ``exit`` line when it ends (after Flower has pushed the
reply). The ServerApp's grid (:class:`fedforget.grid.PromptGrid`) appends when
it pushed each batch of messages and when their replies were in. Without the
variable nothing is recorded and a phase costs one dictionary lookup.
``benchmarks/deploy_breakdown.py`` and ``benchmarks/flower_overhead.py`` read
the file.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TIMING_ENV = "FEDFORGET_TIMING_LOG"

Mark = Callable[[str], None]


def process_start_time() -> float:
    """Wall-clock time at which this process started (NaN where ``/proc`` is missing)."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(after_name[19])  # field 22, starttime, in clock ticks since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return float("nan")
    return time.time() - age


def enabled() -> bool:
    """Whether this process records phase timestamps."""
    return bool(os.environ.get(TIMING_ENV))


def append(record: dict[str, object]) -> None:
    """Append one JSON line to the timing log (one ``write``: lines from processes never mix)."""
    path = os.environ.get(TIMING_ENV)
    if not path:
        return
    line = (json.dumps({"pid": os.getpid(), **record}) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


_exit_registered: list[bool] = []


def _record_exit() -> None:
    append({"event": "exit", "t": time.time()})


@contextlib.contextmanager
def phases(action: str, **about: object) -> Iterator[Mark]:
    """Time the phases of one ClientApp action; ``mark(name)`` ends the phase ``name``.

    Parameters
    ----------
    action : str
        The Flower action (``train``, ``evaluate``, ``query``, ``train.<method>``).
    **about : object
        What else identifies the call (partition id, round), written as given.

    """
    if not enabled():
        yield lambda name: None
        return
    marks: list[tuple[str, float]] = [("start", time.time())]
    try:
        yield lambda name: marks.append((name, time.time()))
    finally:
        marks.append(("end", time.time()))
        if not _exit_registered:
            atexit.register(_record_exit)
            _exit_registered.append(True)
        append(
            {
                "event": "action",
                "action": action,
                **about,
                "process_start": process_start_time(),
                "marks": marks,
            }
        )
