"""The training loop: torch.optim's arithmetic without its objects; the CPU path as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedforget.data.augment import cifar_augment
from fedforget.models import build_model
from fedforget.training import ClientOptimizer, make_optimizer, resident, train


def small_model(seed: int = 0) -> nn.Module:
    """A conv net with a bias-free layer and a frozen parameter (left alone by both)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5, bias=False),
    )
    model[1].bias.requires_grad_(False)
    return model


def reference_optimizer(name: str, model: nn.Module, lr: float, wd: float, momentum: float):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)


@pytest.mark.parametrize(
    ("name", "wd", "momentum"),
    [
        ("sgd", 0.0, 0.0),
        ("sgd", 1e-3, 0.0),  # the paper's CIFAR clients
        ("sgd", 0.0, 0.9),  # PGA's ascent
        ("adam", 1e-4, 0.0),  # the paper's UNet; FedQUIT (no decay)
        ("adamw", 1e-3, 0.0),  # the paper's ViT
    ],
)
def test_client_optimizer_is_bit_identical_to_torch_optim(name, wd, momentum):
    """Five steps on the same gradients: the same weights to the last bit."""
    ours, theirs = small_model(), small_model()
    optimiser = make_optimizer(name, ours.parameters(), 0.05, wd, momentum)
    reference = reference_optimizer(name, theirs, 0.05, wd, momentum)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(8, 3, 6, 6, generator=generator)
        y = torch.randint(0, 5, (8,), generator=generator)
        for model, opt in ((ours, optimiser), (theirs, reference)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert ours[0].weight.grad is not None  # a real update happened on both sides
    assert not torch.equal(ours[0].weight, small_model()[0].weight)
    assert torch.equal(ours[1].bias, small_model()[1].bias)  # frozen: untouched


def test_client_optimizer_refuses_what_it_does_not_implement():
    """A misspelt optimiser or momentum for Adam: one clear error."""
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        ClientOptimizer("rmsprop", small_model().parameters(), 0.1)
    with pytest.raises(ValueError, match="momentum is an SGD setting"):
        ClientOptimizer("adam", small_model().parameters(), 0.1, momentum=0.9)


def plain_loop(model, x, y, *, epochs, batch_size, lr, seed, weight_decay, augmentation):
    """The CPU training loop as it was before the accelerated path: torch.optim, Python sums."""
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator().manual_seed(seed + 1)
    total, count = 0.0, 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            inputs, targets = augmentation(x[batch], y[batch], augment_generator)
            optimiser.zero_grad()
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
    return total / count


def test_cpu_training_is_the_plain_loop_bit_for_bit():
    """ResNet-18 with the CIFAR recipe on the CPU: the same weights and loss as the plain loop."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 16, 16, generator=generator)
    y = torch.randint(0, 10, (40,), generator=generator)
    ours, theirs = (build_model("resnet18", (3, 16, 16), 10, 0) for _ in range(2))
    settings = {"epochs": 2, "batch_size": 16, "lr": 0.1, "seed": 7, "weight_decay": 1e-3}
    loss = train(ours, x, y, augmentation=cifar_augment, device="cpu", **settings)
    expected = plain_loop(theirs, x, y, augmentation=cifar_augment, **settings)
    assert loss == expected
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
        assert a.is_contiguous() and a.device.type == "cpu"


def test_resident_is_the_tensor_itself_on_the_cpu():
    """No copy and no cache on the CPU."""
    tensor = torch.arange(6)
    assert resident(tensor, "cpu") is tensor
