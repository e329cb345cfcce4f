"""LightningDataModules for CIFAR-10/100 and ImageFolder trees, and their augmentations."""

from bnn_lightning.data.base import ImageDataModule
from bnn_lightning.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from bnn_lightning.data.folder import ImageFolderDataModule
from bnn_lightning.data.images import CorruptImageError
from bnn_lightning.data.memory import BatchAugment, TensorImageDataset
from bnn_lightning.data.resumable import ResumableDataLoader
from bnn_lightning.data.transforms import (
    ColorJitterSwitch,
    Lighting,
    batch_mix,
    cifar_train_transform,
    eval_transform,
    imagenet_train_transform,
)

__all__ = [
    "BatchAugment",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ColorJitterSwitch",
    "CorruptImageError",
    "ImageDataModule",
    "ImageFolderDataModule",
    "Lighting",
    "ResumableDataLoader",
    "TensorImageDataset",
    "batch_mix",
    "cifar_train_transform",
    "eval_transform",
    "imagenet_train_transform",
]
