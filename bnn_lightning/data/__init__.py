"""LightningDataModules for CIFAR-10/100 and ImageFolder trees, their augmentations, the device-side
in-memory path (:mod:`bnn_lightning.data.device`) and per-rank resumable random streams
(:mod:`bnn_lightning.data.resumable`)."""

from bnn_lightning.data.base import ImageDataModule
from bnn_lightning.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from bnn_lightning.data.device import DeviceImages, IndexDataset
from bnn_lightning.data.folder import ImageFolderDataModule
from bnn_lightning.data.images import CorruptImageError
from bnn_lightning.data.memory import (
    BatchAugment,
    BatchNormalize,
    RaggedImageDataset,
    TensorImageDataset,
)
from bnn_lightning.data.resumable import (
    EpochSampler,
    RandomStream,
    ResumableDataLoader,
    SeededTransform,
    stream_seed,
)
from bnn_lightning.data.transforms import (
    BatchMix,
    ColorJitterSwitch,
    Lighting,
    batch_mix,
    cifar_train_transform,
    eval_transform,
    imagenet_train_transform,
)

__all__ = [
    "BatchAugment",
    "BatchMix",
    "BatchNormalize",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ColorJitterSwitch",
    "CorruptImageError",
    "DeviceImages",
    "EpochSampler",
    "ImageDataModule",
    "ImageFolderDataModule",
    "IndexDataset",
    "Lighting",
    "RaggedImageDataset",
    "RandomStream",
    "ResumableDataLoader",
    "SeededTransform",
    "TensorImageDataset",
    "batch_mix",
    "cifar_train_transform",
    "eval_transform",
    "imagenet_train_transform",
    "stream_seed",
]
