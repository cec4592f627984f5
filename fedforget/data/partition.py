"""The one entry point for splitting a training set among clients (flwr-datasets).

Partitioners: ``dirichlet`` and ``iid`` (drawn by flwr-datasets), ``natural``
(one client per natural group, e.g. a hospital site; flwr-datasets'
``NaturalIdPartitioner``) and ``file`` (fixed client index lists from a JSON
file, e.g. the PUF paper's exact CIFAR splits packaged in ``splits/``).
"""

from __future__ import annotations

import contextlib
import io
import json
from importlib import resources
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

SPLITS_PACKAGE = "fedforget.data"
SPLITS_FOLDER = "splits"


def packaged_splits() -> list[str]:
    """Names of the client splits shipped with fedforget (see ``splits/README.md``)."""
    folder = resources.files(SPLITS_PACKAGE).joinpath(SPLITS_FOLDER)
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    )


def read_split_file(partition_file: str) -> list[NDArray[np.int64]]:
    """Client index lists of a split file, client ``0..n-1`` in order.

    Parameters
    ----------
    partition_file : str
        A packaged split name (``"cifar10_dirichlet0.3_clients10"``; see
        :func:`packaged_splits`) or the path of a JSON file
        ``{"<client id>": [train index, ...], ...}`` with ids ``0..n-1``.

    Returns
    -------
    list[NDArray[np.int64]]
        Each client's training indices, in the file's order.

    """
    raw = json.loads(split_file_bytes(partition_file))
    ids = sorted(raw, key=int)
    if ids != [str(i) for i in range(len(ids))]:
        raise ValueError(
            f"partition-file {partition_file!r}: client ids must be 0..{len(ids) - 1}, got {ids}"
        )
    return [np.asarray(raw[cid], dtype=np.int64) for cid in ids]


def split_file_bytes(partition_file: str) -> bytes:
    """The raw content of a packaged split or a split file (see :func:`read_split_file`).

    Raises
    ------
    FileNotFoundError
        If ``partition_file`` is neither a packaged split nor an existing file.

    """
    if partition_file in packaged_splits():
        resource = resources.files(SPLITS_PACKAGE).joinpath(SPLITS_FOLDER, f"{partition_file}.json")
        return resource.read_bytes()
    path = Path(partition_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"partition-file {partition_file!r} is neither a packaged split "
            f"({', '.join(packaged_splits())}) nor an existing JSON file"
        )
    return path.read_bytes()


def partition_indices(
    labels: NDArray[np.int64],
    num_partitions: int,
    partitioner: str = "dirichlet",
    alpha: float = 0.3,
    min_partition_size: int = 10,
    seed: int = 0,
    *,
    groups: NDArray[np.int64] | None = None,
    partition_file: str = "",
) -> list[NDArray[np.int64]]:
    """Split example indices ``0..len(labels)-1`` into ``num_partitions`` clients.

    Parameters
    ----------
    labels : NDArray[np.int64]
        Class label of each training example.
    num_partitions : int
        Number of clients.
    partitioner : str (default: "dirichlet")
        ``"dirichlet"`` (label skew, flwr-datasets ``DirichletPartitioner``),
        ``"iid"`` (``IidPartitioner``), ``"natural"`` (one client per value of
        ``groups``, in sorted order; ``NaturalIdPartitioner``) or ``"file"``
        (the index lists of ``partition_file``).
    alpha : float (default: 0.3)
        Dirichlet concentration; smaller is more skewed.
    min_partition_size : int (default: 10)
        Dirichlet only: resample until every client has at least this many.
    seed : int (default: 0)
        Seed of the Dirichlet draw; the partition is a pure function of it.
    groups : NDArray[np.int64] | None (default: None)
        ``"natural"`` only: the natural client (e.g. site) of each example.
    partition_file : str (default: "")
        ``"file"`` only: see :func:`read_split_file`.

    Returns
    -------
    list[NDArray[np.int64]]
        Sorted example indices of each client, disjoint.

    """
    if partitioner == "file":
        return _partitions_from_file(partition_file, len(labels), num_partitions)
    # flwr-datasets (and Hugging Face datasets) load only for the partitioners that use them
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
        Partitioner,
    )

    part: Partitioner
    column = "label"
    if partitioner == "natural":
        if groups is None:
            raise ValueError(
                "partitioner 'natural' needs a dataset with natural clients (e.g. prostate "
                "sites); use 'dirichlet' or 'iid' for this dataset"
            )
        found = len(np.unique(groups))
        if found != num_partitions:
            raise ValueError(f"the dataset has {found} natural clients: set num-partitions={found}")
        part = NaturalIdPartitioner(partition_by="group")
        column = "group"
    elif partitioner == "dirichlet":
        if len(labels) < num_partitions * min_partition_size:
            raise ValueError(
                f"{len(labels)} examples cannot give {num_partitions} clients "
                f"min-partition-size={min_partition_size} each: lower one of them"
            )
        part = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_partition_size,
            self_balancing=False,
            shuffle=False,
            seed=seed,
        )
    elif partitioner == "iid":
        part = IidPartitioner(num_partitions=num_partitions)
    else:
        raise ValueError(
            f"unknown partitioner {partitioner!r}: use 'dirichlet', 'iid', 'natural' or 'file'"
        )
    values = groups if column == "group" else labels
    part.dataset = Dataset.from_dict(
        {"index": np.arange(len(labels), dtype=np.int64), column: np.asarray(values)}
    )
    with contextlib.redirect_stderr(io.StringIO()):  # NaturalIdPartitioner's progress bar
        return [
            np.sort(np.asarray(part.load_partition(pid)[:]["index"], dtype=np.int64))
            for pid in range(num_partitions)
        ]


def _partitions_from_file(
    partition_file: str, num_examples: int, num_partitions: int
) -> list[NDArray[np.int64]]:
    partitions = read_split_file(partition_file)
    if len(partitions) != num_partitions:
        raise ValueError(
            f"partition-file {partition_file!r} has {len(partitions)} clients: "
            f"set num-partitions={len(partitions)}"
        )
    every = np.concatenate(partitions) if partitions else np.zeros(0, dtype=np.int64)
    if len(every) and (every.min() < 0 or every.max() >= num_examples):
        raise ValueError(
            f"partition-file {partition_file!r} indexes examples up to {every.max()}, but the "
            f"training set has {num_examples}: it belongs to another dataset"
        )
    if len(np.unique(every)) != len(every):
        raise ValueError(f"partition-file {partition_file!r} gives an example to two clients")
    return [np.sort(p) for p in partitions]
