"""The backdoor scenario's data: a trigger patch, the poisoned clients, the triggered test set.

The target clients (``unlearn-clients``) are the attackers: a share
``backdoor-poison-fraction`` of each one's training examples, drawn under the
data seed, carries the trigger and the label ``backdoor-target-class``. The
trigger is a square of ``backdoor-patch-size`` pixels a side (3) at
``backdoor-position``, every channel set to ``backdoor-patch-value`` in units
of the training inputs' range above the darkest training pixel (0 = the
darkest, 1 = the brightest; the default 3 is brighter than any training pixel:
a mark no clean image carries, which the federation learns even from one small
client), so one setting means the same on every normalised dataset.

The attack success rate (:mod:`fedforget.metrics.backdoor`) is read on the
test images whose true label is not the target class, with the trigger added.
A model that forgot the attackers obeys the trigger no more than the retrained
model does (near chance).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray

from fedforget.config import ConfigError, FederationConfig

if TYPE_CHECKING:
    from fedforget.data.datasets import FederatedData

POISON_SEED_OFFSET = 104_729
"""Added to the data seed for the draw of the poisoned examples (not the partition's draws)."""
_CACHE_SIZE = 4


@dataclass(frozen=True)
class Trigger:
    """A resolved trigger: where the patch sits on an image, its pixel value, the target class."""

    top: int
    left: int
    size: int
    value: float
    target_class: int

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """A copy of ``images`` ``(N, C, H, W)`` carrying the patch."""
        triggered = images.clone()
        triggered[:, :, self.top : self.top + self.size, self.left : self.left + self.size] = (
            self.value
        )
        return triggered

    def attack_images(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The images of ``x`` whose label is not the target class, carrying the trigger.

        The attack success rate is read on these (test images, in practice).
        """
        return self.apply(x[y != self.target_class])


def trigger_for(config: FederationConfig, federated: FederatedData) -> Trigger:
    """The config's trigger on ``federated``'s images; bad settings raise :class:`ConfigError`.

    The pixel range is that of the training examples that carry no trigger,
    so the trigger is the same whether ``federated`` is clean or poisoned.

    Raises
    ------
    ConfigError
        When the dataset is not a classification task, the target class is not
        one of its labels or the patch does not fit its images.

    """
    data = federated.data
    if data.task != "classification":
        raise ConfigError(
            f"forget-scenario='backdoor' needs a classification dataset; this one is a "
            f"{data.task} task: use forget-scenario='client'"
        )
    if not 0 <= config.backdoor_target_class < data.num_classes:
        raise ConfigError(
            f"backdoor-target-class={config.backdoor_target_class} is not a label of "
            f"{config.dataset!r}: choose one of 0..{data.num_classes - 1}"
        )
    _, height, width = data.input_shape
    size = config.backdoor_patch_size
    if size > min(height, width):
        raise ConfigError(
            f"backdoor-patch-size={size} does not fit the {height}x{width} images of "
            f"{config.dataset!r}: choose at most {min(height, width)}"
        )
    low, high = _clean_range(config, federated)
    position = config.backdoor_position
    top = {"top": 0, "bottom": height - size}.get(position.split("-")[0], (height - size) // 2)
    left = {"left": 0, "right": width - size}.get(position.split("-")[-1], (width - size) // 2)
    return Trigger(
        top=top,
        left=left,
        size=size,
        value=low + config.backdoor_patch_value * (high - low),
        target_class=config.backdoor_target_class,
    )


_ranges: dict[tuple[object, ...], tuple[torch.Tensor, tuple[float, float]]] = {}


def _clean_range(config: FederationConfig, federated: FederatedData) -> tuple[float, float]:
    """The darkest and brightest pixel of the training examples that carry no trigger."""
    train_x = federated.data.train_x
    key = (id(train_x), config.backdoor_clients, config.split_seed, config.backdoor_poison_fraction)
    kept = _ranges.get(key)
    if kept is not None and kept[0] is train_x:
        return kept[1]
    clean = torch.ones(len(train_x), dtype=torch.bool)
    clean[torch.from_numpy(poisoned_indices(config, federated))] = False
    low, high = torch.aminmax(train_x[clean])
    while len(_ranges) >= _CACHE_SIZE:
        _ranges.pop(next(iter(_ranges)))
    _ranges[key] = (train_x, (float(low), float(high)))  # keeps the tensor: its id is not reused
    return float(low), float(high)


def poisoned_indices(config: FederationConfig, federated: FederatedData) -> NDArray[np.int64]:
    """Training indices that carry the trigger: a share of each backdoor client's, sorted.

    Each client's share is ``round(backdoor-poison-fraction * size)`` (at least
    one example), drawn under the data seed and the client id, so it does not
    depend on which other clients are targets.
    """
    chosen = []
    for client in config.backdoor_clients:
        own = federated.partitions[int(client)]
        count = max(1, round(config.backdoor_poison_fraction * len(own)))
        rng = np.random.default_rng([config.split_seed + POISON_SEED_OFFSET, int(client)])
        chosen.append(rng.choice(own, size=min(count, len(own)), replace=False))
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


_poisoned: dict[tuple[object, ...], tuple[FederatedData, FederatedData]] = {}


def poison(federated: FederatedData, config: FederationConfig) -> FederatedData:
    """``federated`` with the backdoor clients' poisoned examples triggered and relabelled.

    The clean data is left as it is (the training tensors are copied); the
    result is kept per process for the last few (data, backdoor settings).
    """
    if not config.backdoor_clients:
        return federated
    key = (
        id(federated),
        config.backdoor_clients,
        config.split_seed,
        config.backdoor_target_class,
        config.backdoor_patch_size,
        config.backdoor_patch_value,
        config.backdoor_position,
        config.backdoor_poison_fraction,
    )
    kept = _poisoned.get(key)
    if kept is not None and kept[0] is federated:
        return kept[1]
    data = federated.data
    trigger = trigger_for(config, federated)
    index = torch.from_numpy(poisoned_indices(config, federated))
    train_x, train_y = data.train_x.clone(), data.train_y.clone()
    train_x[index] = trigger.apply(train_x[index])
    train_y[index] = trigger.target_class
    result = dataclasses.replace(
        federated, data=dataclasses.replace(data, train_x=train_x, train_y=train_y)
    )
    while len(_poisoned) >= _CACHE_SIZE:
        _poisoned.pop(next(iter(_poisoned)))
    _poisoned[key] = (federated, result)  # keeps ``federated`` alive: its id is not reused
    return result
