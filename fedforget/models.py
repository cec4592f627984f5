"""The built-in models: configurations name models, ``build_model`` makes them.

* ``cnn``: a small CNN for the digits default.
* ``mlp``: one hidden layer of 32 units (Fashion-MNIST: 25k parameters, 100 KB),
  for measuring the federation itself at thousands of clients.
* ``resnet18`` / ``resnet18-bn``: ResNet-18 with the CIFAR stem (3x3 conv,
  stride 1, no max-pool), BasicBlocks [2, 2, 2, 2], no conv bias, FC weights
  N(0, 0.01), normalised with GroupNorm(2 groups) as in the PUF paper, or with
  BatchNorm (whose running statistics PUF never negates).
* ``vit``: a small ViT trained from scratch (torchvision ``VisionTransformer``,
  patch 4, 6 layers, width 128), standing in for the paper's pretrained MiT-B0.
* ``unet`` / ``unet-small``: MONAI ``BasicUNet`` for 2-D segmentation, two
  conv-BN-ReLU per level, features 32..512 (the paper's) or 16..256 (CPU).

Names map to factories in :data:`fedforget.registry.MODEL_REGISTRY`; a model
from outside the package is added with :func:`register`. Local pretrained
weights load with :func:`load_pretrained` (``pretrained-weights``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from fedforget.registry import MODEL_REGISTRY

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


class TinyMLP(nn.Sequential):
    """Flatten, one hidden layer of ``hidden`` ReLU units, class logits.

    Small enough that a client's update is ~100 KB on 28x28 images, so that a
    benchmark of thousands of clients measures the federation, not the model.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 32
    ) -> None:
        channels, height, width = input_shape
        super().__init__(
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


def resnet18(
    input_shape: tuple[int, int, int], num_classes: int, *, groupnorm: bool = True
) -> nn.Module:
    """Torchvision's ResNet-18 with the CIFAR stem; GroupNorm(2) or BatchNorm."""
    from torchvision.models import resnet18 as torchvision_resnet18

    def group_norm(channels: int) -> nn.Module:
        return nn.GroupNorm(2, channels)

    model = torchvision_resnet18(
        num_classes=num_classes, norm_layer=group_norm if groupnorm else nn.BatchNorm2d
    )
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()  # type: ignore[assignment]
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    nn.init.normal_(model.fc.weight, 0.0, 0.01)
    nn.init.zeros_(model.fc.bias)
    return model


def resnet18_batchnorm(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """ResNet-18 (CIFAR stem) with BatchNorm."""
    return resnet18(input_shape, num_classes, groupnorm=False)


def small_vit(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A ViT for small square images: patch 4, 6 layers, 4 heads, width 128, MLP 512."""
    from torchvision.models import VisionTransformer

    channels, height, width = input_shape
    if height != width or height % 4:
        raise ValueError(
            f"the vit model needs square images with a side divisible by 4, got {height}x{width}"
        )
    model = VisionTransformer(
        image_size=height,
        patch_size=4,
        num_layers=6,
        num_heads=4,
        hidden_dim=128,
        mlp_dim=512,
        num_classes=num_classes,
    )
    if channels != 3:
        model.conv_proj = nn.Conv2d(channels, 128, kernel_size=4, stride=4)
    return model


def _unet(features: tuple[int, ...]) -> ModelFactory:
    def factory(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        from monai.networks.nets import BasicUNet

        channels, height, width = input_shape
        if height % 16 or width % 16:
            raise ValueError(
                f"the UNet halves the image 4 times: image-size must be a multiple of 16, "
                f"got {height}x{width}"
            )
        return BasicUNet(
            spatial_dims=2,
            in_channels=channels,
            out_channels=num_classes,
            features=features,
            norm="batch",
            act="relu",
        )

    return factory


unet = _unet((32, 64, 128, 256, 512, 32))
unet_small = _unet((16, 32, 64, 128, 256, 16))


def register(
    name: str, factory: ModelFactory, *, depends_on: Sequence[str] | None = None
) -> ModelFactory:
    """Add a model: ``factory(input_shape, num_classes)`` returns an ``nn.Module``.

    ``input_shape`` is ``(channels, height, width)``; :func:`build_model` draws
    the initial weights under the run's seed. ``depends_on`` names the modules
    whose source shapes it (default: the factory's module). Name the
    registering module in the run config's ``plugins`` so that the ClientApps
    register it too. Returns ``factory``.
    """
    return MODEL_REGISTRY.register(name, factory, depends_on=depends_on)


def unregister(name: str) -> None:
    """Remove a model added by :func:`register` (built-in ones stay)."""
    MODEL_REGISTRY.unregister(name)


def model_names() -> list[str]:
    """Every registered model name, built-in ones first."""
    return MODEL_REGISTRY.names()


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, seed: int
) -> nn.Module:
    """Build a registered model with weights initialised under ``seed``."""
    factory: ModelFactory = MODEL_REGISTRY.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(input_shape, num_classes)


def load_pretrained(model: nn.Module, path: str) -> list[str]:
    """Load a local state dict (``torch.save`` file) into ``model``, keys that fit only.

    Arrays whose name or shape differ (typically a classifier head for another
    number of classes) keep their initial values. Returns the names not loaded.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If no array of the file fits the model.

    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"pretrained-weights {path!r} does not exist: give the path of a state dict "
            f"saved with torch.save(model.state_dict(), path)"
        )
    saved = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(saved, dict) and "state_dict" in saved:
        saved = saved["state_dict"]
    own = model.state_dict()
    fitting = {k: v for k, v in saved.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fitting:
        raise ValueError(f"no array in {path} matches the model's names and shapes")
    model.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def statistic_keys(model: nn.Module) -> frozenset[str]:
    """State-dict names of floating-point buffers (running statistics, not parameters)."""
    return frozenset(
        name for name, buffer in model.named_buffers() if torch.is_floating_point(buffer)
    )


def first_conv_key(model: nn.Module) -> str:
    """State-dict name of the first convolution's weight ("" if the model has none)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            return f"{name}.weight"
    return ""


def head_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict names of the last linear layer (the classifier head; () if none)."""
    last = ""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if not last:
        return ()
    prefix = f"{last}."
    return tuple(key for key in model.state_dict() if key.startswith(prefix))
