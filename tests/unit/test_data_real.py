"""The DataModules on the real offline archives (``BNN_DATA_DIR``; skipped when absent).

Each archive is extracted once per session into the shared ``cache_dir``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnn_lightning.data import ImageFolderDataModule
from bnn_lightning.data.archive import extract_archive


@pytest.fixture(scope="session")
def cifar10_extracted(cifar10_archive: Path, cache_dir: Path) -> Path:
    return extract_archive(cifar10_archive, cache_dir)


@pytest.fixture(scope="session")
def imagenette_extracted(imagenette_archive: Path, cache_dir: Path) -> Path:
    return extract_archive(imagenette_archive, cache_dir)


def cifar10(archive: Path, cache_dir: Path, **kwargs) -> ImageFolderDataModule:
    options = dict(val_size=5000, pipeline="cifar", image_size=32, batch_size=64, num_workers=0)
    return ImageFolderDataModule(str(archive), cache_dir=str(cache_dir), **{**options, **kwargs})


def test_cifar10_jpeg_archive_gives_45000_train_5000_val(
    cifar10_archive: Path, cache_dir: Path, cifar10_extracted: Path
) -> None:
    dm = cifar10(cifar10_archive, cache_dir)
    assert dm.num_classes == 10
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (45_000, 5_000)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert targets.dtype == torch.int64 and targets.max() < 10
    assert images.mean().abs() < 0.5 and 0.5 < images.std() < 1.5  # CIFAR-10 normalization


@pytest.mark.slow
def test_cifar10_in_memory_fast_path(
    cifar10_archive: Path, cache_dir: Path, cifar10_extracted: Path
) -> None:
    dm = cifar10(cifar10_archive, cache_dir, in_memory=True, batch_size=256)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.device_images is not None
    assert dm.device_images.images.shape == (50_000, 3, 32, 32)
    assert (len(dm.train_set), len(dm.val_set)) == (45_000, 5_000)
    images, targets = dm.transform_batch(next(iter(dm.train_dataloader())), train=True)
    assert images.shape == (256, 3, 32, 32) and len(set(targets.tolist())) == 10
    assert images.dtype == torch.float32 and images.mean().abs() < 0.5


def test_imagenette_gives_9469_train_3925_val_in_10_classes(
    imagenette_archive: Path, cache_dir: Path, imagenette_extracted: Path
) -> None:
    dm = ImageFolderDataModule(
        str(imagenette_archive), cache_dir=str(cache_dir), image_size=64, batch_size=16,
        num_workers=0,
    )  # fmt: skip
    assert dm.num_classes == 10 and dm.classes[0] == "n01440764"
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (9_469, 3_925)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 64, 64) and targets.dtype == torch.int64
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.shape == (16, 3, 64, 64)
