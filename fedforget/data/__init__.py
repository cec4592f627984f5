"""Datasets and their federated partitions.

Names are loaded on first use (PEP 562), so importing a light submodule
(``fedforget.data.partition``, ``fedforget.data.cache``) does not import the
dataset loaders and torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DATASET_LOADERS": "fedforget.data.datasets",
    "FederatedData": "fedforget.data.datasets",
    "SplitDataset": "fedforget.data.split",
    "load_dataset": "fedforget.data.datasets",
    "load_federated_data": "fedforget.data.datasets",
    "partition_indices": "fedforget.data.partition",
}

if TYPE_CHECKING:
    from fedforget.data.datasets import (
        DATASET_LOADERS,
        FederatedData,
        load_dataset,
        load_federated_data,
    )
    from fedforget.data.partition import partition_indices
    from fedforget.data.split import SplitDataset


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first access."""
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'fedforget.data' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "DATASET_LOADERS",
    "FederatedData",
    "SplitDataset",
    "load_dataset",
    "load_federated_data",
    "partition_indices",
]
