"""Compatibility: the per-run results files and the terminal table.

They moved to :mod:`fedforget.experiment.tables` (views of the protocol's rows).
"""

from fedforget.experiment.tables import (
    COST_COLUMNS,
    HISTORY_CSV,
    METHODS_CSV,
    RESULTS_FILE,
    columns,
    format_table,
    gaps,
    reference_floors,
    reference_row,
    write_results,
)
from fedforget.experiment.validity import REFERENCE

__all__ = [
    "COST_COLUMNS",
    "HISTORY_CSV",
    "METHODS_CSV",
    "REFERENCE",
    "RESULTS_FILE",
    "columns",
    "format_table",
    "gaps",
    "reference_floors",
    "reference_row",
    "write_results",
]
