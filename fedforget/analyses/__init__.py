"""Stand-alone analyses behind ``fedforget analyse NAME``.

Each analysis is one module with the same interface: ``run(config=None, seed=0)``
returns a typed result (a frozen dataclass), ``write(result, out_dir)`` saves
``NAME.png`` and ``NAME.json`` (strict JSON) and returns their paths, and
``summary(result)`` gives a few lines of text. Modules are imported on use, so
that the command line starts without numpy or matplotlib.

- ``ascent-fails`` (:mod:`fedforget.analyses.ascent_fails`): descent-ascent
  unlearning on L2 logistic regression ends further from the retrained model than
  the original model when the forget and retain sets are correlated, and not when
  they are independent ("Ascent Fails to Forget").
- ``dual-influence`` (:mod:`fedforget.analyses.dual_influence`): the influence of
  removing training examples from ridge regression in the primal (p x p Hessian)
  and the dual (n x n Gram matrix) form, against retraining, for parameter counts
  p below and above n ("Extending Kernel Trick to Influence Functions").
"""

from __future__ import annotations

import importlib
from pathlib import Path

DEFAULT_OUT_ROOT = Path("experiments/results/analyses")

ANALYSES: dict[str, str] = {
    "ascent-fails": "fedforget.analyses.ascent_fails",
    "dual-influence": "fedforget.analyses.dual_influence",
}


def default_out_dir(name: str) -> Path:
    """Where ``fedforget analyse NAME`` writes by default: ``experiments/results/analyses/NAME``."""
    return DEFAULT_OUT_ROOT / name


def run_analysis(name: str, out_dir: Path | None = None, seed: int = 0) -> tuple[Path, Path, str]:
    """Run the analysis ``name`` at its default sizes and write its PNG and JSON.

    The files go into ``out_dir`` (default :func:`default_out_dir`). Returns the PNG
    path, the JSON path, and a short text summary of the numbers.
    """
    if name not in ANALYSES:
        raise KeyError(f"unknown analysis {name!r}; choose one of {', '.join(ANALYSES)}")
    module = importlib.import_module(ANALYSES[name])
    result = module.run(seed=seed)
    png, json_path = module.write(result, out_dir or default_out_dir(name))
    return png, json_path, module.summary(result)


__all__ = ["ANALYSES", "DEFAULT_OUT_ROOT", "default_out_dir", "run_analysis"]
