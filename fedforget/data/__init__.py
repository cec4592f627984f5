"""Datasets and their federated partitions."""

from fedforget.data.datasets import (
    DATASET_LOADERS,
    FederatedData,
    SplitDataset,
    load_dataset,
    load_federated_data,
)
from fedforget.data.partition import partition_indices

__all__ = [
    "DATASET_LOADERS",
    "FederatedData",
    "SplitDataset",
    "load_dataset",
    "load_federated_data",
    "partition_indices",
]
