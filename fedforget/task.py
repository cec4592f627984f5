"""The learning task a config describes: its data, model and local training.

Clients and server both go through these functions, so a simulation, a
deployment and the evaluation all see the same data, model and arithmetic.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedforget.arrays import Arrays
from fedforget.config import FederationConfig
from fedforget.data import FederatedData, load_federated_data
from fedforget.data.augment import get_augmentation
from fedforget.methods.base import ClientData
from fedforget.models import build_model, load_pretrained
from fedforget.training import evaluate_task, resident, resolve_device, train

SCORE_NAMES = {"classification": "accuracy", "segmentation": "dice"}


def task_type(config: FederationConfig) -> str:
    """``"classification"`` or ``"segmentation"``: what the config's dataset declares."""
    return load_federated_data(config).data.task


def score_name(config: FederationConfig) -> str:
    """The headline score of the task: ``"accuracy"`` or ``"dice"`` (with background)."""
    return SCORE_NAMES[task_type(config)]


def new_model(config: FederationConfig, federated: FederatedData | None = None) -> nn.Module:
    """The config's model with its seeded initial weights."""
    federated = federated or load_federated_data(config)
    model = build_model(
        config.model, federated.data.input_shape, federated.data.num_classes, config.seed
    )
    if config.pretrained_weights:
        load_pretrained(model, config.pretrained_weights)
    return model


_received_models: dict[tuple[str, tuple[int, int, int], int], nn.Module] = {}


def received_model(config: FederationConfig, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The config's model carrying ``state``: the model a ClientApp receives from the server.

    One module per architecture is kept in the process and loaded with each
    received state: a simulation's Ray actor serves message after message,
    and building and initialising a model only to overwrite every weight costs
    milliseconds for the CNN and a tenth of a second for ResNet-18. Use it where
    one model is in use at a time and training leaves its structure as it was
    (the ClientApp's ``train`` and ``evaluate``); :func:`new_model` otherwise.
    """
    data = load_federated_data(config).data
    key = (config.model, data.input_shape, data.num_classes)
    model = _received_models.get(key)
    if model is None:
        model = build_model(config.model, data.input_shape, data.num_classes, config.seed)
        _received_models[key] = model
    model.load_state_dict(state)  # strict: every parameter and buffer is replaced
    return model


def model_with(config: FederationConfig, arrays: Mapping[str, np.ndarray]) -> nn.Module:
    """The config's model carrying ``arrays`` (a state dict as numpy arrays)."""
    model = new_model(config)
    model.load_state_dict({name: torch.from_numpy(np.array(v)) for name, v in arrays.items()})
    return model


def model_arrays(model: nn.Module) -> Arrays:
    """A model's state dict as numpy arrays (copies)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def client_seed(config: FederationConfig, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round (reproducible, distinct)."""
    return zlib.crc32(f"{config.seed}:{server_round}:{partition_id}".encode())


def partition_index(config: FederationConfig, partition_id: int) -> torch.Tensor:
    """A client's training indices (without the forget set when ``drop-forget-set``)."""
    from fedforget.scenarios import drop_forget_set

    federated = load_federated_data(config)
    if not 0 <= partition_id < len(federated.partitions):
        raise ValueError(
            f"partition-id {partition_id} is outside 0..{len(federated.partitions) - 1}: "
            f"check the SuperNode's --node-config and num-partitions"
        )
    return torch.from_numpy(drop_forget_set(config, federated, federated.partitions[partition_id]))


def local_steps(config: FederationConfig, num_examples: int) -> int | None:
    """Mini-batches a client trains when ``local-epochs-fraction`` < 1 (None: all of them).

    ``floor(fraction x local-epochs x batches per epoch)``, at least one: the
    fractional epochs of FedEraser's calibration, rounded down to whole
    mini-batches as the PUF authors' port does (half of one epoch of 7
    batches is 3 batches).
    """
    if config.local_epochs_fraction >= 1.0:
        return None
    batches = math.ceil(num_examples / config.batch_size)
    # rounding first keeps e.g. 0.3 * 10 = 3.0000000000000004 at 3, not above
    share = round(config.local_epochs_fraction * config.local_epochs * batches, 9)
    return max(1, math.floor(share))


def train_client(
    config: FederationConfig, partition_id: int, model: nn.Module, server_round: int
) -> tuple[float, int]:
    """Train ``model`` in place on one client's partition; return (mean loss, examples).

    ``local-epochs`` epochs, or their first :func:`local_steps` mini-batches
    when ``local-epochs-fraction`` < 1.
    """
    x, y, task = partition_data(config, partition_id)
    loss = train(
        model,
        x,
        y,
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr_at(server_round),
        seed=client_seed(config, server_round, partition_id),
        task=task,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        augmentation=get_augmentation(load_federated_data(config).data.augmentation)
        if config.augment
        else None,
        device=resolve_device(config.device),
        mixed_precision=config.mixed_precision,
        max_steps=local_steps(config, len(y)),
    )
    return loss, len(y)


def partition_data(
    config: FederationConfig, partition_id: int
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """One client's training examples and labels, on the config's device, and the task type.

    On an accelerator the data set is copied to the device once per process
    (:func:`fedforget.training.resident`) and the partition taken there.
    """
    data = load_federated_data(config).data
    device = resolve_device(config.device)
    index = partition_index(config, partition_id).to(device)
    return resident(data.train_x, device)[index], resident(data.train_y, device)[index], data.task


def evaluate_client(
    config: FederationConfig, partition_id: int, model: nn.Module
) -> tuple[float, float, int]:
    """Loss and score (accuracy, or Dice for segmentation) on one client's training data."""
    x, y, task = partition_data(config, partition_id)
    metrics = evaluate_task(model, x, y, task, resolve_device(config.device))
    return metrics["loss"], metrics[SCORE_NAMES[task]], len(y)


def evaluate_global_metrics(
    config: FederationConfig, arrays: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """A global model on the test set: ``loss`` and ``accuracy``, or ``dice`` and ``dice_fg``."""
    data = load_federated_data(config).data
    model = model_with(config, arrays)
    device = resolve_device(config.device)
    x, y = resident(data.test_x, device), resident(data.test_y, device)
    return evaluate_task(model, x, y, data.task, device)


def client_data(config: FederationConfig, partition_id: int) -> ClientData:
    """One client's training data, as a method's client step sees it."""
    x, y, task = partition_data(config, partition_id)
    return ClientData(
        x=x,
        y=y,
        task=task,
        num_classes=load_federated_data(config).data.num_classes,
        batch_size=config.batch_size,
        device=resolve_device(config.device),
    )
