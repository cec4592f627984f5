"""Datasets and their federated partitions.

Names are loaded on first use (PEP 562), so importing a light submodule
(``fedforget.data.partition``, ``fedforget.data.cache``) does not import the
dataset loaders and torch. :func:`register` adds a dataset from outside the
package (the registry: :data:`fedforget.registry.DATASET_REGISTRY`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fedforget.registry import DATASET_REGISTRY

_EXPORTS = {
    "FederatedData": "fedforget.data.datasets",
    "SplitDataset": "fedforget.data.split",
    "load_dataset": "fedforget.data.datasets",
    "load_federated_data": "fedforget.data.datasets",
    "partition_indices": "fedforget.data.partition",
}

if TYPE_CHECKING:
    from fedforget.data.datasets import (
        FederatedData,
        load_dataset,
        load_federated_data,
    )
    from fedforget.data.partition import partition_indices
    from fedforget.data.split import SplitDataset


def register(
    name: str, loader: Callable[..., Any], *, depends_on: Sequence[str] | None = None
) -> Callable[..., Any]:
    """Add a dataset: ``loader(data_dir, test_fraction, seed, *, image_size=0, download=False)``.

    The loader returns a :class:`SplitDataset`. ``depends_on`` names the
    modules whose source shapes its arrays (default: the loader's module): the
    data cache (:mod:`fedforget.data.cache`) is rebuilt when their source
    changes. Name the registering module in the run config's ``plugins`` so
    that the ClientApps register it too. Returns ``loader``.
    """
    return DATASET_REGISTRY.register(name, loader, depends_on=depends_on)


def unregister(name: str) -> None:
    """Remove a dataset added by :func:`register` (built-in ones stay)."""
    DATASET_REGISTRY.unregister(name)


def dataset_names() -> list[str]:
    """Every registered dataset name, built-in ones first."""
    return DATASET_REGISTRY.names()


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
    "FederatedData",
    "SplitDataset",
    "dataset_names",
    "load_dataset",
    "load_federated_data",
    "partition_indices",
    "register",
    "unregister",
]
