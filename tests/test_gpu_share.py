"""The GPU share of a virtual client: the formula, on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedforget.config import FederationConfig
from fedforget.gpu_share import (
    ACTIVATION_FACTOR,
    CUDA_CONTEXT_BYTES,
    MAX_CLIENTS_PER_GPU,
    activation_bytes_per_example,
    client_gpu_share,
    client_memory_bytes,
    share_of,
)
from fedforget.models import build_model

GIB = 1 << 30


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


def test_activations_are_the_leaf_outputs_of_one_example():
    """Conv 2x4x4, ReLU 2x4x4, Flatten 32, Linear 3: 99 float32 values."""
    model = tiny().train()
    assert activation_bytes_per_example(model, (1, 4, 4)) == 99 * 4
    assert model.training  # left in the mode it was in


def test_client_memory_adds_context_data_weights_and_activations():
    """SGD: weights and gradients; Adam two more copies; activations times the batch."""
    model = tiny()
    weights = (2 * 1 * 9 + 2 + 32 * 3 + 3) * 4
    activations = 99 * 4 * 16
    sgd = client_memory_bytes(model, (1, 4, 4), 16, dataset_bytes=1000, optimizer="sgd")
    assert sgd == CUDA_CONTEXT_BYTES + 1000 + 2 * weights + ACTIVATION_FACTOR * activations
    adam = client_memory_bytes(model, (1, 4, 4), 16, dataset_bytes=1000, optimizer="adam")
    assert adam - sgd == 2 * weights


@pytest.mark.parametrize(
    ("client_gib", "device_gib", "clients", "share"),
    [
        (2.0, 80.0, 10, 0.1),  # the paper's CIFAR-10 on an H100: every client at once
        (2.0, 80.0, 100, 1 / MAX_CLIENTS_PER_GPU),  # capped: more would only queue
        (20.0, 80.0, 10, 0.3333),  # three fit in 80 % of the memory; Ray's 1e-4 steps
        (30.0, 24.0, 10, 1.0),  # none fits: one per GPU, CUDA names the shortfall
    ],
)
def test_share_is_one_over_the_clients_that_fit(client_gib, device_gib, clients, share):
    assert share_of(int(client_gib * GIB), int(device_gib * GIB), clients) == pytest.approx(share)


def test_paper_resnet18_client_fits_ten_times_on_an_h100():
    """The CIFAR-10 ResNet-18 client (batch 32, the data set resident) next to 80 GB."""
    model = build_model("resnet18", (3, 32, 32), 10, 0)
    cifar10_bytes = 50_000 * 3 * 32 * 32 * 4 + 50_000 * 8
    need = client_memory_bytes(model, (3, 32, 32), 32, cifar10_bytes, "sgd")
    assert 1.5 * GIB < need < 4 * GIB
    assert share_of(need, 80 * GIB, 10) == pytest.approx(0.1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_no_gpu_means_no_share():
    """Without a visible GPU the share stays Flower's CPU-only default (None)."""
    assert client_gpu_share(FederationConfig(num_partitions=3)) is None
