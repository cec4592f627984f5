"""Helpers of the unlearning API tests: reach a live API, follow its rounds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedforget.api.client import UnlearningClient
from fedforget.api.constants import ENDPOINT_FILE, TOKEN_FILE


def wait_for_api(state_dir: Path, timeout: float = 180.0) -> UnlearningClient:
    """A client of the API a federation on ``state_dir`` serves, once it is up."""
    deadline = time.monotonic() + timeout
    while not (state_dir / ENDPOINT_FILE).is_file() or not (state_dir / TOKEN_FILE).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no API came up on {state_dir}")
        time.sleep(0.05)
    return UnlearningClient.from_state_dir(state_dir)


def wait_for_round_start(
    client: UnlearningClient, at_least: int, settle: float = 0.3, timeout: float = 180.0
) -> int:
    """Wait until a round >= ``at_least`` has just started; return it.

    Returns ``settle`` seconds after the status first shows the new round, so
    the round's boundary (where due requests are taken) has passed and the
    round's training is still running.
    """
    deadline = time.monotonic() + timeout
    last = client.status()["current_round"]
    while True:
        current = client.status()["current_round"]
        if current != last and current >= at_least:
            time.sleep(settle)
            return current
        last = current
        if time.monotonic() > deadline:
            raise TimeoutError(f"round {at_least} did not start (at round {current})")
        time.sleep(0.02)


class Driver(threading.Thread):
    """Runs a scenario against the API while the simulation runs in the main thread."""

    def __init__(self, scenario: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.scenario = scenario
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.scenario()
        except BaseException as error:  # re-raised in the test thread by outcome()
            self.error = error

    def outcome(self, timeout: float = 60.0) -> Any:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert not self.is_alive(), "the API scenario did not finish"
        return self.result
