"""Model registry: configurations name models, ``build_model`` makes them."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ModelFactory = Callable[[tuple[int, int, int], int], nn.Module]


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks and a two-layer head, for small grey-scale images.

    Sized so that on digits it memorises its clients' data within the default
    40 rounds (forget accuracy and MIA above the retrained model's).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (height // 2) * (width // 2), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch ``(N, C, H, W)``."""
        return self.classifier(self.features(x))


MODELS: dict[str, ModelFactory] = {"cnn": SmallCNN}


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, seed: int
) -> nn.Module:
    """Build a registered model with weights initialised under ``seed``."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(input_shape, num_classes)


def statistic_keys(model: nn.Module) -> frozenset[str]:
    """State-dict names of floating-point buffers (running statistics, not parameters)."""
    return frozenset(
        name for name, buffer in model.named_buffers() if torch.is_floating_point(buffer)
    )
