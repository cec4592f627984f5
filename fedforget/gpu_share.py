"""How much of a GPU each virtual client of a simulation asks Ray for.

Flower's Ray backend starts one actor per ``client_resources`` share of the
machine: with ``num_gpus = 1/k`` per client, ``k`` actors train on one GPU at
the same time (each also needs its ``num_cpus``). A paper-sized client
(ResNet-18, batch 32) leaves most of a large GPU idle, so the share is chosen
from the device's memory and what one client's process holds there:

* the CUDA context and the libraries' workspaces (:data:`CUDA_CONTEXT_BYTES`);
* the training set, which each process keeps on the device
  (:func:`fedforget.training.resident`);
* the model's weights and gradients, and the optimiser's state (Adam: two
  more copies of the weights);
* the activations one training batch keeps for the backward pass: the
  outputs of every leaf module for one example (a forward pass on the CPU),
  times the batch, times :data:`ACTIVATION_FACTOR`.

``k`` is how many such clients fit in :data:`USABLE_FRACTION` of the memory,
at most the federation's clients and :data:`MAX_CLIENTS_PER_GPU`.
``--num-gpus`` overrides the choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedforget.config import FederationConfig

CUDA_CONTEXT_BYTES = 1 << 30
"""Per process: the CUDA context, cuDNN and cuBLAS workspaces, the caching allocator's slack."""
ACTIVATION_FACTOR = 2.0
"""Saved activations and their gradients during the backward pass, per leaf-module output."""
USABLE_FRACTION = 0.8
"""Share of the device's memory the clients may plan for (the driver's evaluation uses some)."""
MAX_CLIENTS_PER_GPU = 16
"""More processes than this on one GPU only queue their kernels behind each other's."""
OPTIMIZER_STATE_COPIES = {"sgd": 0, "adam": 2, "adamw": 2}
"""Copies of the weights an optimiser keeps (plain SGD: none; Adam: two moments)."""


def activation_bytes_per_example(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes of the outputs of every leaf module for one float32 example (a CPU forward pass)."""
    total = 0

    def count(_: nn.Module, __: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def client_memory_bytes(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    dataset_bytes: int,
    optimizer: str = "sgd",
) -> int:
    """Device memory one training client's process needs (see the module docstring)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    copies = 2 + OPTIMIZER_STATE_COPIES[optimizer]  # weights, gradients, optimiser state
    activations = activation_bytes_per_example(model, input_shape) * batch_size
    return int(
        CUDA_CONTEXT_BYTES
        + dataset_bytes
        + copies * weights
        + buffers
        + ACTIVATION_FACTOR * activations
    )


def share_of(client_bytes: int, device_bytes: int, clients: int) -> float:
    """GPU share per client: ``1/k`` for the ``k`` clients that fit, rounded down to Ray's 1e-4.

    At least one client per GPU (a share of 1) even when one does not fit:
    it then fails with CUDA's out-of-memory error, which names the sizes.
    """
    fit = math.floor(USABLE_FRACTION * device_bytes / max(client_bytes, 1))
    per_gpu = max(1, min(fit, clients, MAX_CLIENTS_PER_GPU))
    return math.floor(10_000 / per_gpu) / 10_000


def client_gpu_share(config: FederationConfig) -> float | None:
    """The GPU share of each client of ``config``'s federation; None when no GPU is visible."""
    if not torch.cuda.is_available():
        return None
    from fedforget.task import load_federated_data, new_model

    data = load_federated_data(config).data
    client_bytes = client_memory_bytes(
        new_model(config),
        data.input_shape,
        config.batch_size,
        data.train_x.nbytes + data.train_y.nbytes,
        config.optimizer,
    )
    device_bytes = torch.cuda.get_device_properties(0).total_memory
    return share_of(client_bytes, device_bytes, config.num_partitions)
