"""CIFAR-10 / CIFAR-100 DataModules on torchvision's datasets, with the HolmesShuan augmentation.

Validation uses the official test split, or with ``val_size`` a split carved from the 50,000
training images by ``seed`` (the test split then stays for ``test``). With ``in_memory`` the
images are served from torchvision's uint8 arrays on the training device, augmented a batch at a
time there (:mod:`bnn_lightning.data.device`), the fast path on a CPU and on a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100

from bnn_lightning.data.base import ImageDataModule, TransformSubset, split_indices
from bnn_lightning.data.device import DeviceImages, IndexDataset
from bnn_lightning.data.memory import BatchAugment, BatchNormalize
from bnn_lightning.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar_train_transform,
    eval_transform,
)

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule"]


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (torchvision) with RandomCrop(32, 4), flip, RandomRotation, optional AutoAugment.

    Args:
        root: folder that holds (or will hold, with ``download``) ``cifar-10-batches-py``
            (``$VARS`` and ``~`` are expanded).
        download: download the dataset in :meth:`prepare_data` if it is missing.
        val_size: images carved from train for validation (count or fraction); 0 validates on
            the official test split.
        rotation: RandomRotation range in degrees (0 turns it off).
        padding: RandomCrop padding.
        autoaugment: add AutoAugment with the CIFAR-10 policy.
        **kwargs: batch size, workers, ``in_memory``, MixUp/CutMix, seed, ``predict_root``; see
            :class:`~bnn_lightning.data.base.ImageDataModule`.
    """

    dataset_cls: type[CIFAR10] = CIFAR10
    folder = "cifar-10-batches-py"
    num_classes = 10
    mean, std = CIFAR10_MEAN, CIFAR10_STD

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        val_size: int | float = 0,
        rotation: float = 15.0,
        padding: int = 4,
        autoaugment: bool = False,
        batch_size: int = 128,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        in_memory: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        seed: int = 0,
        predict_root: str | None = None,
    ) -> None:
        super().__init__(
            batch_size, num_workers, pin_memory, persistent_workers, in_memory, mixup_alpha,
            cutmix_alpha, seed, predict_root,
        )  # fmt: skip
        self.save_hyperparameters()
        self.root = Path(os.path.expandvars(root)).expanduser()
        self.download = download
        self.val_size = val_size
        self.rotation, self.padding, self.autoaugment = rotation, padding, autoaugment

    @property
    def classes(self) -> list[str]:
        """Class names, from the dataset's meta file (``predict`` writes them)."""
        self._check_exists()
        return self.dataset_cls(str(self.root), train=False).classes

    def _check_exists(self) -> None:
        if not (self.root / self.folder).is_dir():
            name = self.dataset_cls.__name__
            raise FileNotFoundError(
                f"{name} not found: expected {self.root / self.folder}; set download: true to "
                "fetch it, or use ImageFolderDataModule with root pointing at an image folder or "
                ".tar.gz archive (e.g. cifar10-jpeg-train.tar.gz)."
            )

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                self.dataset_cls(str(self.root), train=train, download=True)
        self._check_exists()

    def build_datasets(self) -> None:
        self._check_exists()
        train = self.dataset_cls(str(self.root), train=True)
        test = self.dataset_cls(str(self.root), train=False)
        if self.in_memory:
            images = torch.from_numpy(np.concatenate([train.data, test.data]))
            augment = BatchAugment(self.padding, self.rotation, autoaugment=self.autoaugment)
            normalize = BatchNormalize(self.mean, self.std)
            self.device_images = DeviceImages(
                images.permute(0, 3, 1, 2).contiguous(), augment, normalize
            )
        if self.val_size:
            train_idx, val_idx = split_indices(len(train), self.val_size, self.seed)
            self.val_set = self._subset(train, val_idx, train=False)
        else:
            train_idx = list(range(len(train)))
            self.val_set = self._subset(test, None, train=False, offset=len(train))
        self.train_set = self._subset(train, train_idx, train=True)
        self.test_set = self._subset(test, None, train=False, offset=len(train))

    def _subset(
        self, dataset: CIFAR10, indices: list[int] | None, train: bool, offset: int = 0
    ) -> Dataset:
        rows = list(range(len(dataset))) if indices is None else indices
        if self.in_memory:  # rows of device_images: the training images, then the test images
            return IndexDataset([offset + i for i in rows], [dataset.targets[i] for i in rows])
        if train:
            tf = cifar_train_transform(
                self.mean, self.std, 32, self.padding, self.rotation, self.autoaugment
            )
        else:
            tf = eval_transform(self.mean, self.std, image_size=32)
        return TransformSubset(dataset, indices, tf)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (torchvision), the HolmesShuan CIFAR recipe's dataset; arguments as CIFAR-10's."""

    dataset_cls = CIFAR100
    folder = "cifar-100-python"
    num_classes = 100
    mean, std = CIFAR100_MEAN, CIFAR100_STD
