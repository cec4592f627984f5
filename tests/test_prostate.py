"""ProstateMRI: the real loader on NIfTI fixtures, the synthetic sites, and PUF on a UNet."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from fedforget.config import FederationConfig
from fedforget.data import load_dataset, load_federated_data
from fedforget.data.prostate import SITES, load_site, mask_name, write_synthetic_prostate
from fedforget.federated.federation import (
    FINAL_MODEL_FILE,
    HISTORY_FILE,
    ORIGINAL_MODEL_FILE,
    read_arrays,
)
from fedforget.metrics import evaluate_unlearning
from fedforget.simulation import simulate
from fedforget.task import model_with

DEPTH, HEIGHT, WIDTH = 6, 8, 12  # non-square in-plane: a transposition would show


def _write_case(folder, site, case, base):
    """A (z, y, x) volume whose slice z has value base + 10 z, one outlier, and its mask."""
    volume = np.zeros((DEPTH, HEIGHT, WIDTH), np.float32)
    for z in range(DEPTH):
        volume[z] = base + 10 * z
    volume[3, 0, 0] = 1e6  # above the 99th percentile: clipped
    mask = np.zeros((DEPTH, HEIGHT, WIDTH), np.uint8)
    mask[0, 1, 1] = 1  # edge slice: never kept
    mask[1, 2, 3] = 1
    mask[2, 4:6, 5:9] = 2  # label 2 becomes 1
    mask[4, 7, 11] = 1
    mask[5, 1, 1] = 1  # edge slice
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), affine), folder / f"{case}.nii.gz")
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), affine), folder / mask_name(site, case))


@pytest.fixture
def prostate_dir(tmp_path):
    """Six sites in the SAML/HarmoFL layout; site k has k + 1 cases of 3 kept slices each."""
    for k, site in enumerate(SITES):
        folder = tmp_path / site
        folder.mkdir()
        for c in range(k + 1):
            _write_case(folder, site, f"Case{c:02d}", base=100 * c)
        np.save(tmp_path / f"{site}-dir.npy", np.array(sorted(os.listdir(folder))))
        np.save(tmp_path / f"{site}-index.npy", np.arange(3 * (k + 1))[::-1].copy())
    return tmp_path


def test_slicing_scaling_and_index_order(prostate_dir):
    """Inner non-empty slices, 3 neighbouring slices as channels, masks binarised, reordered."""
    # Execute
    images, labels = load_site(prostate_dir, "BIDMC")
    # Assert: one case, kept slices 1, 2, 4, reversed by the index file
    assert images.shape == (3, 3, HEIGHT, WIDTH) and labels.shape == (3, HEIGHT, WIDTH)
    assert images.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}
    assert [int(np.argwhere(label)[0][0]) for label in labels] == [7, 4, 2]  # slices 4, 2, 1
    # slice 4 -> channels are slices 3, 4, 5; values scale linearly from min 0 to the 99th pct
    channel_values = [int(images[0, c, 1, 1]) for c in range(3)]
    assert channel_values[0] < channel_values[1] < channel_values[2]
    assert images[0, 0, 0, 0] == 255  # the outlier clipped at the 99th percentile
    assert images[2, 0, 1, 1] == 0  # slice 0 of the volume holds the minimum


def test_isbi15_uses_capitalised_mask_names(prostate_dir):
    assert (prostate_dir / "ISBI_1.5" / "Case00_Segmentation.nii.gz").is_file()
    images, _ = load_site(prostate_dir, "ISBI_1.5")
    assert len(images) == 15


def test_sites_split_60_20_20_in_index_order(prostate_dir):
    """Per site: train int(0.6 n), validation int(0.2 n), test the rest; one group per site."""
    # Execute
    data = load_dataset("prostate", str(prostate_dir), image_size=16)
    # Assert
    counts = [3 * (k + 1) for k in range(6)]
    train = [int(0.6 * n) for n in counts]
    val = [int(0.2 * n) for n in counts]
    assert data.task == "segmentation" and data.num_classes == 2
    assert data.train_x.shape == (sum(train), 3, 16, 16)
    assert data.train_y.shape == (sum(train), 16, 16) and data.train_y.dtype == torch.int64
    assert len(data.val_y) == sum(val)
    assert len(data.test_y) == sum(n - t - v for n, t, v in zip(counts, train, val, strict=True))
    assert torch.bincount(data.train_groups).tolist() == train
    assert float(data.train_x.min()) >= 0.0 and float(data.train_x.max()) <= 1.0


def test_natural_partition_gives_one_client_per_site(prostate_dir):
    config = FederationConfig(
        dataset="prostate",
        data_dir=str(prostate_dir),
        image_size=16,
        partitioner="natural",
        num_partitions=6,
    )
    partitions = load_federated_data(config).partitions
    assert [len(p) for p in partitions] == [1, 3, 5, 7, 9, 10]
    with pytest.raises(ValueError, match="num-partitions=6"):
        load_federated_data(config.replace(num_partitions=5, unlearn_clients="0"))


def test_missing_prostate_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="prostate-synthetic"):
        load_dataset("prostate", str(tmp_path))


def test_synthetic_sites_are_written_in_the_real_layout(tmp_path):
    """The generator writes volumes, masks, -dir.npy and -index.npy the real loader reads."""
    # Execute
    write_synthetic_prostate(tmp_path, image_size=32, cases_per_site=2, depth=8)
    data = load_dataset("prostate", str(tmp_path), image_size=32)
    # Assert
    for site in SITES:
        listing = np.load(tmp_path / f"{site}-dir.npy").tolist()
        assert mask_name(site, "Case01") in listing and "Case01.nii.gz" in listing
    assert len(torch.unique(data.train_groups)) == 6
    assert data.train_x.shape[1:] == (3, 32, 32)
    assert 0.0 < float(data.train_y.float().mean()) < 0.5  # masks are neither empty nor full
    means = [float(data.train_x[data.train_groups == g].mean()) for g in range(6)]
    assert len({round(m, 2) for m in means}) == 6  # a different intensity profile per site


@pytest.mark.ray
def test_puf_on_synthetic_prostate_unet(tmp_path):
    """Foreground Dice rises in training; PUF on a site lowers Dice on that site's data."""
    # Prepare
    config = FederationConfig(
        dataset="prostate-synthetic",
        data_dir=str(tmp_path / "data"),
        image_size=32,
        model="unet-small",
        partitioner="natural",
        num_partitions=6,
        min_available_clients=6,
        optimizer="adam",
        lr=1e-3,
        weight_decay=1e-4,
        batch_size=8,
        local_epochs=2,
        augment=True,
        num_server_rounds=7,
        unlearn_at_round=6,
        unlearn_clients="2",
        out_dir=str(tmp_path / "run"),
        progress=False,
    )
    federated = load_federated_data(config)
    # Execute: the final model is the one right after the unlearning round
    simulate(config)
    history = json.loads((tmp_path / "run" / HISTORY_FILE).read_text())
    original = model_with(config, read_arrays(tmp_path / "run" / ORIGINAL_MODEL_FILE))
    unlearned = model_with(config, read_arrays(tmp_path / "run" / FINAL_MODEL_FILE))
    before = evaluate_unlearning(original, federated, ("2",))
    after = evaluate_unlearning(unlearned, federated, ("2",))
    # Assert
    by_round = {r["round"]: r for r in history}
    assert by_round[6]["test_dice_fg"] > by_round[1]["test_dice_fg"] + 0.2
    assert by_round[7]["phase"] == "unlearn"
    assert after.forget_dice_fg < before.forget_dice_fg
    assert after.forget_dice < before.forget_dice


@pytest.mark.slow
def test_synthetic_generator_command_line(tmp_path):
    """python -m fedforget.data.make_prostate_synthetic OUT_DIR writes a loadable layout."""
    from fedforget.data.make_prostate_synthetic import main

    assert main([str(tmp_path), "--image-size", "16", "--cases-per-site", "1", "--depth", "6"]) == 0
    assert all((tmp_path / f"{site}-index.npy").is_file() for site in SITES)
    assert load_dataset("prostate", str(tmp_path), image_size=16).train_x.shape[1:] == (3, 16, 16)
