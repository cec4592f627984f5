"""flower_app: the model, the data and the training loop (PyTorch, scikit-learn's digits)."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

TEST_SIZE = 360  # the digits held out for the server's evaluation
BATCH_SIZE = 32


class Net(nn.Module):
    """A small CNN for the 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of 1x8x8 images."""
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits (shipped inside scikit-learn), shuffled once with seed 0."""
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = torch.tensor(digits.images[order] / 16.0, dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(digits.target[order], dtype=torch.int64)


def load_data(
    partition_id: int, num_partitions: int, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """A client's training and validation loaders (an iid share of the training digits).

    ``seed`` orders the training batches, so a round's training is reproducible.
    """
    images, labels = _digits()
    share = np.array_split(np.arange(TEST_SIZE, len(labels)), num_partitions)[partition_id]
    cut = int(len(share) * 0.8)
    train, val = share[:cut], share[cut:]
    generator = torch.Generator().manual_seed(seed)
    trainloader = DataLoader(
        TensorDataset(images[train], labels[train]),
        batch_size=BATCH_SIZE,
        shuffle=True,
        generator=generator,
    )
    valloader = DataLoader(TensorDataset(images[val], labels[val]), batch_size=BATCH_SIZE)
    return trainloader, valloader


def load_centralised_test() -> DataLoader:
    """The held-out digits the server evaluates the global model on."""
    images, labels = _digits()
    return DataLoader(TensorDataset(images[:TEST_SIZE], labels[:TEST_SIZE]), batch_size=128)


def train(net: Net, trainloader: DataLoader, epochs: int, lr: float) -> float:
    """Train with SGD; return the mean training loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


def test(net: Net, testloader: DataLoader) -> tuple[float, float]:
    """Mean loss and accuracy on a loader."""
    net.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in testloader:
            logits = net(images)
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(1) == labels).sum())
            count += len(labels)
    return loss / count, correct / count
