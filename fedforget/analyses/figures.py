"""Output of the analyses: one strict-JSON file and one PNG figure each.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global
backend switch), so an analysis can run inside any process, with or without a
display, without changing how other code in that process plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_DPI = 120


def json_ready(value: Any) -> Any:
    """``value`` as plain JSON types.

    Numpy scalars and arrays become numbers and lists, tuples become lists, and
    non-finite floats (NaN, +-inf) become ``None`` (JSON ``null``), because strict
    JSON has no literal for them.
    """
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` to ``path`` as strict JSON (``allow_nan=False``), indented."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n")
    return path


def new_figure(columns: int, width: float = 6.0, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    """A figure on an Agg canvas with ``columns`` side-by-side axes of ``width`` x ``height`` in."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def save_png(figure: Figure, path: Path) -> Path:
    """Render ``figure`` to ``path`` as a PNG at :data:`FIGURE_DPI` dots per inch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=FIGURE_DPI)
    return path
