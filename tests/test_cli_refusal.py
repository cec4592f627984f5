"""A `fedforget run` whose configured request is refused ends with one line, quietly."""

from __future__ import annotations

import pytest
from test_main_job import fedforget

pytestmark = pytest.mark.slow


def test_a_refused_request_ends_with_its_reason_in_one_line_without_rays_warning(tmp_path):
    """NoT needs a convolution; the MLP has none: the run ends with that reason, exit code 1."""
    done = fedforget(
        "run",
        "--out",
        str(tmp_path / "out"),
        "--run-config",
        "num-partitions=2 num-server-rounds=2 unlearn-at-round=1 local-epochs=1 model='mlp' "
        "method='not'",
        env={"FEDFORGET_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "fedforget: error: the unlearning request was not applied: not negates the first "
        "convolution's weights, and this model has none (see "
    ), last
    assert last.endswith("requests.json)"), last
    # Ray's FutureWarning on accelerator variables is not printed on a machine without GPUs
    assert "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO" not in done.stdout + done.stderr
