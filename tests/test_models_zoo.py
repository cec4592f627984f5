"""The workload models, augmentations and the shared training loop's options."""

import pytest
import torch
from torch import nn

from fedforget.data.augment import cifar_augment, rot90_flip
from fedforget.models import build_model, load_pretrained, model_names, statistic_keys
from fedforget.training import make_optimizer, train


@pytest.mark.parametrize(
    ("name", "input_shape", "num_classes", "output_shape"),
    [
        ("mlp", (1, 28, 28), 10, (2, 10)),
        ("resnet18", (3, 32, 32), 100, (2, 100)),
        ("resnet18-bn", (3, 32, 32), 10, (2, 10)),
        ("vit", (3, 32, 32), 100, (2, 100)),
        ("unet-small", (3, 32, 32), 2, (2, 2, 32, 32)),
        ("unet", (3, 32, 32), 2, (2, 2, 32, 32)),
    ],
)
def test_forward_and_backward_shapes(name, input_shape, num_classes, output_shape):
    """Every registered workload model maps a batch to the right shape and back-propagates."""
    # Prepare
    model = build_model(name, input_shape, num_classes, seed=0)
    x = torch.randn(2, *input_shape)
    # Execute
    out = model(x)
    out.sum().backward()
    # Assert
    assert tuple(out.shape) == output_shape
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_paper_resnet18_structure():
    """CIFAR stem, no max-pool, GroupNorm with 2 groups, no conv bias, small FC init."""
    model = build_model("resnet18", (3, 32, 32), 10, seed=0)
    conv1 = model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 2 for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    layers = (model.layer1, model.layer2, model.layer3, model.layer4)
    assert [len(layer) for layer in layers] == [2, 2, 2, 2]


def test_statistic_keys_separate_batchnorm_from_groupnorm():
    """PUF must know the BatchNorm variant's running statistics; GroupNorm has none."""
    assert statistic_keys(build_model("resnet18", (3, 32, 32), 10, 0)) == frozenset()
    bn_keys = statistic_keys(build_model("resnet18-bn", (3, 32, 32), 10, 0))
    assert "bn1.running_mean" in bn_keys and "bn1.running_var" in bn_keys
    assert not any(k.endswith("num_batches_tracked") for k in bn_keys)
    assert statistic_keys(build_model("unet-small", (3, 32, 32), 2, 0))


def test_models_are_seeded():
    """The same seed gives the same initial weights (all clients start from one model)."""
    a = build_model("vit", (3, 32, 32), 10, seed=3).state_dict()
    b = build_model("vit", (3, 32, 32), 10, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_weights_load_where_names_and_shapes_fit(tmp_path):
    """Local weights for another head size load everywhere but the head."""
    # Prepare
    source = build_model("vit", (3, 32, 32), 1000, seed=1)
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)
    target = build_model("vit", (3, 32, 32), 100, seed=2)
    # Execute
    skipped = load_pretrained(target, str(path))
    # Assert
    assert skipped == ["heads.head.bias", "heads.head.weight"]
    assert torch.equal(target.conv_proj.weight, source.conv_proj.weight)
    with pytest.raises(FileNotFoundError, match=r"torch\.save"):
        load_pretrained(target, str(tmp_path / "missing.pt"))


def test_unet_rejects_sizes_it_cannot_halve_four_times():
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model("unet-small", (3, 40, 40), 2, 0)


def test_registry_lists_the_workloads():
    assert {"cnn", "resnet18", "resnet18-bn", "vit", "unet", "unet-small"} <= set(model_names())


def test_cifar_augmentation_is_seeded_and_keeps_shapes():
    """Rotation, pad-crop and flip change images but not shapes; a seed reproduces them."""
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    a, ya = cifar_augment(x, y, torch.Generator().manual_seed(0))
    b, _ = cifar_augment(x, y, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(ya, y) and torch.equal(a, b)
    assert not torch.allclose(a, x)


def test_rot90_flip_moves_image_and_mask_together():
    """The prostate augmentation applies the same rotation/flip to image and mask."""
    x = torch.zeros(16, 3, 8, 8)
    x[:, :, 1, 2] = 1.0
    y = (x[:, 0] > 0).long()
    a, m = rot90_flip(x, y, torch.Generator().manual_seed(1))
    assert torch.equal((a[:, 0] > 0).long(), m)
    assert len({tuple(torch.nonzero(mask)[0].tolist()) for mask in m}) > 1


def test_optimizers_and_decoupled_weight_decay():
    """SGD without momentum: lr * wd shrinks weights exactly when the gradient is zero."""
    param = nn.Parameter(torch.ones(3))
    opt = make_optimizer("sgd", [param], lr=0.1, weight_decay=1e-3)
    param.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(param.detach(), torch.full((3,), 1 - 0.1 * 1e-3))
    # AdamW decouples the decay: a zero gradient leaves Adam's step at 0, the decay alone acts
    decoupled = nn.Parameter(torch.ones(3))
    adamw = make_optimizer("adamw", [decoupled], 3e-4, 1e-3)
    decoupled.grad = torch.zeros(3)
    adamw.step()
    assert torch.equal(decoupled.detach(), torch.full((3,), 1 - 3e-4 * 1e-3))
    with pytest.raises(ValueError, match="sgd, adam or adamw"):
        make_optimizer("lamb", [param], 0.1)


def test_segmentation_training_lowers_the_dice_ce_loss():
    """One training loop, segmentation loss: a UNet fits a tiny fixed mask set."""
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    y = (x[:, 0] > 0.5).long()
    model = build_model("unet-small", (3, 16, 16), 2, seed=0)
    first = train(
        model, x, y, epochs=1, batch_size=4, lr=1e-2, seed=0, task="segmentation", optimizer="adam"
    )
    later = train(
        model, x, y, epochs=5, batch_size=4, lr=1e-2, seed=1, task="segmentation", optimizer="adam"
    )
    assert later < first


def test_device_selection_and_gpu_share(monkeypatch):
    """Clients use a GPU share when one is visible and the CPU otherwise."""
    from fedforget.simulation import backend_config
    from fedforget.training import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == torch.device("cpu")
    assert backend_config(2)["client_resources"]["num_gpus"] == 0.0
    with pytest.raises(ValueError, match="none is visible"):
        backend_config(2, num_gpus=0.5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    config = backend_config(2)
    assert config["client_resources"]["num_gpus"] == 0.25 and config["init_args"]["num_gpus"] == 1
