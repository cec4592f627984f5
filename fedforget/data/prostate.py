"""ProstateMRI (6 sites, SAML/HarmoFL layout) as a 2-D segmentation dataset.

On disk (``data-dir``)::

    <root>/<SITE>/CaseNN.nii.gz                  T2 volume
    <root>/<SITE>/CaseNN_segmentation.nii.gz     mask (``_Segmentation`` for ISBI_1.5)
    <root>/<SITE>-dir.npy                        the site folder's file names
    <root>/<SITE>-index.npy                      a permutation of the site's kept slices

Per site, as in the PUF paper's code (after HarmoFL): every mask listed in
``<SITE>-dir.npy`` is read with its volume through MONAI's ``LoadImage``
(nibabel; arrays come x, y, z and are transposed to z, y, x); mask values > 1
become 1; the volume is clipped at its 99th percentile and scaled to 0..255
(uint8) from its minimum; each inner slice ``i`` with a non-empty mask gives a
3-channel image (slices ``i-1, i, i+1``) and the label slice ``i``. Slices are
reordered by ``<SITE>-index.npy`` and split 60/20/20 (train/validation/test)
in that order; images are scaled to [0, 1] and resized to ``image-size``
(default 128; the paper uses the native 384).

``prostate-synthetic`` writes MONAI ``create_test_image_3d`` volumes in exactly
this layout (:func:`write_synthetic_prostate`) and reads them with the same
loader.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from fedforget.data.split import SplitDataset

SITES = ("BIDMC", "HK", "I2CVB", "ISBI", "ISBI_1.5", "UCL")
DEFAULT_IMAGE_SIZE = 128
TRAIN_FRACTION = 0.6
VALIDATION_FRACTION = 0.2
_MASK_NAME = re.compile(r"^(?P<case>.+)_segmentation\.nii(\.gz)?$", re.IGNORECASE)

# Synthetic sites: (object contrast over background, noise level, gamma) so that
# each site looks different after the loader's percentile scaling.
SYNTHETIC_PROFILES: dict[str, tuple[float, float, float]] = {
    "BIDMC": (1.0, 0.15, 1.0),
    "HK": (0.6, 0.25, 0.7),
    "I2CVB": (0.9, 0.10, 1.6),
    "ISBI": (0.7, 0.20, 1.0),
    "ISBI_1.5": (0.5, 0.30, 0.8),
    "UCL": (0.8, 0.12, 1.3),
}


def mask_name(site: str, case: str) -> str:
    """File name of a case's mask (``_Segmentation`` for ISBI_1.5)."""
    suffix = "_Segmentation" if site == "ISBI_1.5" else "_segmentation"
    return f"{case}{suffix}.nii.gz"


def read_nifti(path: Path) -> NDArray[np.float32]:
    """A NIfTI volume as a ``(z, y, x)`` array, read by MONAI ``LoadImage`` with nibabel."""
    from monai.transforms import LoadImage

    volume = LoadImage(image_only=True, reader="NibabelReader")(str(path))
    return np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0))


def scale_intensity(volume: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Clip at the volume's 99th percentile and scale from its minimum to 0..255 (uint8)."""
    high = float(np.quantile(volume, 0.99))
    low = float(np.min(volume))
    clipped = np.minimum(volume, high)
    scaled = (clipped - low) / max(high - low, 1e-12)
    return (scaled * 255).astype(np.uint8)


def volume_slices(
    image: NDArray[np.floating], label: NDArray[np.integer]
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """3-channel slices ``(n, 3, H, W)`` and masks ``(n, H, W)`` of one ``(z, y, x)`` volume."""
    label = np.where(label > 1, 1, label).astype(np.int64)
    scaled = scale_intensity(image)
    kept = [i for i in range(1, label.shape[0] - 1) if np.any(label[i])]
    if not kept:
        height, width = label.shape[1:]
        return np.zeros((0, 3, height, width), np.uint8), np.zeros((0, height, width), np.int64)
    images = np.stack([scaled[i - 1 : i + 2] for i in kept])
    labels = np.stack([label[i] for i in kept])
    return images, labels


def site_cases(root: Path, site: str) -> list[tuple[Path, Path]]:
    """(volume, mask) paths of a site, in the order of ``<SITE>-dir.npy``."""
    listing = root / f"{site}-dir.npy"
    if not listing.is_file():
        raise FileNotFoundError(
            f"ProstateMRI site {site} not found: expected {listing} and {root / site}/ "
            f"(the SAML/HarmoFL layout). Set data-dir to the folder holding the six site "
            f"folders, or use dataset=prostate-synthetic for generated stand-in data"
        )
    cases = []
    for name in np.load(listing).tolist():
        match = _MASK_NAME.match(str(name))
        if match:
            cases.append((root / site / f"{match['case']}.nii.gz", root / site / str(name)))
    return cases


def load_site(root: Path, site: str) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """All kept slices of one site, reordered by ``<SITE>-index.npy``."""
    images, labels = [], []
    for volume_path, mask_path in site_cases(root, site):
        site_images, site_labels = volume_slices(read_nifti(volume_path), read_nifti(mask_path))
        images.append(site_images)
        labels.append(site_labels)
    if not images:
        raise FileNotFoundError(f"{root / f'{site}-dir.npy'} lists no *_segmentation.nii.gz mask")
    all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    index = np.load(root / f"{site}-index.npy").astype(np.int64)
    if sorted(index.tolist()) != list(range(len(all_labels))):
        raise ValueError(
            f"{root / f'{site}-index.npy'} is not a permutation of the site's "
            f"{len(all_labels)} kept slices: it belongs to other data"
        )
    return all_images[index], all_labels[index]


def split_sizes(count: int) -> tuple[int, int]:
    """(train end, validation end) of a site's 60/20/20 split in index order."""
    train_end = int(TRAIN_FRACTION * count)
    return train_end, train_end + int(VALIDATION_FRACTION * count)


def _to_tensors(
    images: NDArray[np.uint8], labels: NDArray[np.int64], image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images).float().div(255)
    y = torch.from_numpy(labels)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        size = (image_size, image_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        y = F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return x.contiguous(), y.contiguous()


def load_prostate(root: Path, image_size: int = DEFAULT_IMAGE_SIZE) -> SplitDataset:
    """The six sites as one segmentation dataset; ``train_groups`` = site of each slice."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("tx", "ty", "vx", "vy", "sx", "sy")}
    groups = []
    for site_id, site in enumerate(SITES):
        images, labels = load_site(root, site)
        x, y = _to_tensors(images, labels, image_size)
        train_end, val_end = split_sizes(len(y))
        for key, part in (
            ("tx", x[:train_end]),
            ("ty", y[:train_end]),
            ("vx", x[train_end:val_end]),
            ("vy", y[train_end:val_end]),
            ("sx", x[val_end:]),
            ("sy", y[val_end:]),
        ):
            parts[key].append(part)
        groups.append(torch.full((train_end,), site_id, dtype=torch.int64))
    return SplitDataset(
        train_x=torch.cat(parts["tx"]),
        train_y=torch.cat(parts["ty"]),
        test_x=torch.cat(parts["sx"]),
        test_y=torch.cat(parts["sy"]),
        num_classes=2,
        task="segmentation",
        augmentation="rot90-flip",
        train_groups=torch.cat(groups),
        group_names=SITES,
        val_x=torch.cat(parts["vx"]),
        val_y=torch.cat(parts["vy"]),
    )


def load_prostate_split(
    data_dir: str, test_fraction: float, seed: int, *, image_size: int = 0, download: bool = False
) -> SplitDataset:
    """ProstateMRI from ``data-dir`` (no download exists: the data need registration)."""
    del test_fraction, seed  # the paper's fixed 60/20/20 split
    if download:
        raise ValueError(
            "ProstateMRI cannot be downloaded automatically: get it from the SAML project "
            "(https://liuquande.github.io/SAML/) and set data-dir"
        )
    if not data_dir:
        raise FileNotFoundError(
            "dataset=prostate needs data-dir: the folder holding BIDMC/, HK/, ..., UCL/ and "
            "their -dir.npy / -index.npy files; use dataset=prostate-synthetic to run offline"
        )
    return load_prostate(Path(data_dir), image_size or DEFAULT_IMAGE_SIZE)


def load_prostate_synthetic_split(
    data_dir: str, test_fraction: float, seed: int, *, image_size: int = 0, download: bool = False
) -> SplitDataset:
    """Synthetic ProstateMRI, written once (to ``data-dir`` or the cache) and then loaded."""
    del test_fraction, download
    size = image_size or DEFAULT_IMAGE_SIZE
    cache = Path(os.environ.get("FEDFORGET_CACHE", Path.home() / ".cache" / "fedforget"))
    root = Path(data_dir) if data_dir else cache / f"prostate-synthetic-{size}-seed{seed}"
    if not all((root / f"{site}-index.npy").is_file() for site in SITES):
        write_synthetic_prostate(root, image_size=size, seed=seed)
    return load_prostate(root, size)


def write_synthetic_prostate(
    root: Path,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    cases_per_site: int = 3,
    depth: int = 12,
    seed: int = 0,
) -> Path:
    """Write synthetic volumes and masks for the six sites in the real on-disk layout.

    Each case is a MONAI ``create_test_image_3d`` cube (``image_size`` voxels
    per side, ``num_seg_classes=1``: spherical objects and their mask) of which
    every k-th z slice is kept to give ``depth`` thick slices, as in MRI. Each
    site gets its own intensity profile (:data:`SYNTHETIC_PROFILES`).

    Parameters
    ----------
    root : Path
        Folder to write; created if missing.
    image_size : int (default: 128)
        In-plane size of the volumes.
    cases_per_site : int (default: 3)
        Volumes per site.
    depth : int (default: 12)
        Slices per volume.
    seed : int (default: 0)
        Seed of the generator.

    Returns
    -------
    Path
        ``root``.

    """
    import nibabel as nib
    from monai.data import create_test_image_3d

    if image_size < 16 or depth < 3:
        raise ValueError("synthetic ProstateMRI needs image-size >= 16 and depth >= 3")
    root.mkdir(parents=True, exist_ok=True)
    for site_id, site in enumerate(SITES):
        contrast, noise, gamma = SYNTHETIC_PROFILES[site]
        rng = np.random.RandomState(seed * 1000 + site_id)
        folder = root / site
        folder.mkdir(exist_ok=True)
        kept = 0
        for case_number in range(cases_per_site):
            cube, mask = create_test_image_3d(
                image_size,
                image_size,
                image_size,
                num_objs=2,
                rad_max=max(image_size // 4, 3),
                rad_min=max(image_size // 10, 2),
                noise_max=0.0,
                num_seg_classes=1,
                random_state=rng,
            )
            step = max(image_size // depth, 1)
            start = (image_size - step * (depth - 1)) // 2
            chosen = slice(start, start + step * (depth - 1) + 1, step)
            cube, mask = cube[:, :, chosen], mask[:, :, chosen]
            volume = 100.0 + 400.0 * contrast * cube**gamma
            volume = volume + rng.normal(0.0, 400.0 * noise, size=volume.shape)
            case = f"Case{case_number:02d}"
            affine = np.diag([0.5, 0.5, 3.0, 1.0])
            nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), folder / f"{case}.nii.gz")
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / mask_name(site, case))
            kept += len(volume_slices(volume.transpose(2, 1, 0), mask.transpose(2, 1, 0))[1])
        np.save(root / f"{site}-dir.npy", np.array(sorted(os.listdir(folder))))
        np.save(root / f"{site}-index.npy", rng.permutation(kept))
    return root
