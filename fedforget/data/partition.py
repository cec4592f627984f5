"""The one entry point for splitting a training set among clients (flwr-datasets)."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner
from numpy.typing import NDArray


def partition_indices(
    labels: NDArray[np.int64],
    num_partitions: int,
    partitioner: str = "dirichlet",
    alpha: float = 0.3,
    min_partition_size: int = 10,
    seed: int = 0,
) -> list[NDArray[np.int64]]:
    """Split example indices ``0..len(labels)-1`` into ``num_partitions`` clients.

    Parameters
    ----------
    labels : NDArray[np.int64]
        Class label of each training example.
    num_partitions : int
        Number of clients.
    partitioner : str (default: "dirichlet")
        ``"dirichlet"`` (label skew, flwr-datasets ``DirichletPartitioner``) or
        ``"iid"`` (``IidPartitioner``).
    alpha : float (default: 0.3)
        Dirichlet concentration; smaller is more skewed.
    min_partition_size : int (default: 10)
        Dirichlet only: resample until every client has at least this many.
    seed : int (default: 0)
        Seed of the Dirichlet draw; the partition is a pure function of it.

    Returns
    -------
    list[NDArray[np.int64]]
        Sorted example indices of each client, disjoint.
    """
    part: Partitioner
    if partitioner == "dirichlet":
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
        raise ValueError(f"unknown partitioner {partitioner!r}: use 'dirichlet' or 'iid'")
    part.dataset = Dataset.from_dict(
        {"index": np.arange(len(labels), dtype=np.int64), "label": np.asarray(labels)}
    )
    return [
        np.sort(np.asarray(part.load_partition(pid)[:]["index"], dtype=np.int64))
        for pid in range(num_partitions)
    ]
