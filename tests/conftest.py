"""Test-wide settings."""

import os
import tempfile

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# References cached by `fedforget run` / `compare` go to a folder of this test session
# alone: a cache left by an earlier run must not stand in for a reference a test computes.
os.environ["FEDFORGET_CACHE"] = tempfile.mkdtemp(prefix="fedforget-test-cache-")
