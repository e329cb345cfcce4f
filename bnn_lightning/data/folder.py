"""ImageFolder DataModule: ImageNet, Imagenette, the CIFAR-10 JPEG folder; folder or ``.tar.gz``.

The tree is ``<root>/train/<class>/<image>`` and optionally ``<root>/val/<class>/<image>``. An
archive is extracted once into ``cache_dir`` by :meth:`ImageFolderDataModule.prepare_data`; the
folder holding ``train/`` is found inside it (``subdir``, or descending through single
sub-folders). Validation uses ``val/``, or a split of ``train/`` carved by ``seed`` when
``val_size`` is set or there is no ``val/`` (10% by default); ``val/`` then serves ``test``.

With ``in_memory`` every split is decoded once into uint8 tensors cached in
``<cache_dir>/tensors``. The ``cifar`` pipeline keeps ``image_size`` squares (shorter side
resized, center square) on the training device and augments them there a batch at a time
(:mod:`bnn_lightning.data.device`). The ``imagenet`` pipeline keeps each whole image with its
shorter side resized to ``int(image_size * test_resize_ratio)``, so ``RandomResizedCrop`` sees
all of it, and runs its per-image transforms in the DataLoader workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from bnn_lightning.data.archive import (
    ARCHIVE_SUFFIXES,
    archive_classes,
    default_cache_dir,
    extract_archive,
    extracted_path,
    find_split_root,
    is_archive,
)
from bnn_lightning.data.base import ImageDataModule, TransformSubset, split_indices
from bnn_lightning.data.device import DeviceImages, IndexDataset
from bnn_lightning.data.images import (
    ImageFileDataset,
    Sample,
    check_same_classes,
    decode_images,
    drop_corrupt,
    list_split,
    tensor_cache_file,
)
from bnn_lightning.data.memory import (
    BatchAugment,
    BatchNormalize,
    RaggedImageDataset,
    TensorImageDataset,
)
from bnn_lightning.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitterSwitch,
    cifar_train_transform,
    eval_transform,
    imagenet_train_transform,
)

__all__ = ["ImageFolderDataModule"]

log = logging.getLogger(__name__)


class ImageFolderDataModule(ImageDataModule):
    """Any ``train/`` (+ ``val/``) ImageFolder tree, as a folder or a ``.tar.gz`` archive.

    Args:
        root: the tree's folder, or a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of it
            (``$VARS`` and ``~`` are expanded, e.g. ``$BNN_DATA_DIR/imagenette-224.tar.gz``).
        subdir: path inside ``root`` (or the extracted archive) of the folder holding ``train/``;
            None finds it by descending through single sub-folders.
        cache_dir: where archives are extracted and ``in_memory`` tensors cached; None uses
            ``$BNN_CACHE_DIR`` or ``~/.cache/bnn_lightning``.
        val_size: images carved from ``train/`` for validation (count or fraction); None uses
            ``val/`` when present, else 10% of ``train/``.
        pipeline: ``imagenet`` (RandomResizedCrop, flip, ColorJitter, Lighting; resize + center
            crop at test) or ``cifar`` (RandomCrop with padding, flip, rotation).
        image_size: side of the training and test crops (224 for ImageNet, 32 for CIFAR).
        train_crop: ``imagenet`` only: ``random_resized`` or the HolmesShuan collection's
            alternative ``resize_random`` (Resize(256) + RandomCrop(224), scaled to ``image_size``).
        test_resize_ratio: ``imagenet`` only: test images are resized to
            ``int(image_size * ratio)`` then center-cropped (HolmesShuan: 1.15 or 1.35).
        color_jitter: ``imagenet`` only: ColorJitter(0.4, 0.4, 0.4, 0.1) on at the start; see
            :meth:`set_color_jitter`.
        lighting: ``imagenet`` only: ``alphastd`` of the PCA Lighting noise (0 turns it off).
        rotation: ``cifar`` only: RandomRotation range in degrees.
        padding: ``cifar`` only: RandomCrop padding.
        autoaugment: ``cifar`` only: add AutoAugment with the CIFAR-10 policy.
        mean: normalization mean; None uses ImageNet's (CIFAR-10's for the ``cifar`` pipeline).
        std: normalization std; None as ``mean``.
        skip_corrupt: drop images that do not decode (logging how many) instead of raising.
        **kwargs: batch size, workers, ``in_memory``, MixUp/CutMix, seed, ``predict_root``; see
            :class:`~bnn_lightning.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        root: str,
        subdir: str | None = None,
        cache_dir: str | None = None,
        val_size: int | float | None = None,
        pipeline: Literal["imagenet", "cifar"] = "imagenet",
        image_size: int = 224,
        train_crop: Literal["random_resized", "resize_random"] = "random_resized",
        test_resize_ratio: float = 1.15,
        color_jitter: bool = True,
        lighting: float = 0.1,
        rotation: float = 15.0,
        padding: int = 4,
        autoaugment: bool = False,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        skip_corrupt: bool = False,
        batch_size: int = 256,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        in_memory: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        seed: int = 0,
        predict_root: str | None = None,
    ) -> None:
        if num_workers is None and in_memory and pipeline != "cifar":
            num_workers = min(4, os.cpu_count() or 1)  # per-image transforms: use workers
        super().__init__(
            batch_size, num_workers, pin_memory, persistent_workers, in_memory, mixup_alpha,
            cutmix_alpha, seed, predict_root,
        )  # fmt: skip
        self.save_hyperparameters()
        if pipeline not in ("imagenet", "cifar"):
            raise ValueError(f"Unknown pipeline {pipeline!r}; use 'imagenet' or 'cifar'.")
        self.root = Path(os.path.expandvars(root)).expanduser()
        self.subdir = subdir
        cache = Path(os.path.expandvars(cache_dir)).expanduser() if cache_dir else None
        self.cache_dir = cache or default_cache_dir()
        self.val_size, self.pipeline, self.image_size = val_size, pipeline, image_size
        self.train_crop, self.test_resize_ratio = train_crop, test_resize_ratio
        self.lighting = lighting
        self.rotation, self.padding, self.autoaugment = rotation, padding, autoaugment
        self.skip_corrupt = skip_corrupt
        cifar = pipeline == "cifar"
        self.mean = mean or (CIFAR10_MEAN if cifar else IMAGENET_MEAN)
        self.std = std or (CIFAR10_STD if cifar else IMAGENET_STD)
        if not cifar:
            self.color_jitter = ColorJitterSwitch(enabled=color_jitter)
        self.classes = self._find_classes()
        self.num_classes = len(self.classes)

    @property
    def data_path(self) -> Path:
        """The tree's folder: ``root``, or where the archive is extracted."""
        return extracted_path(self.root, self.cache_dir) if is_archive(self.root) else self.root

    def _find_classes(self) -> list[str]:
        if not self.root.exists():
            raise FileNotFoundError(
                f"ImageFolder root {self.root} does not exist; point root at a folder holding "
                "train/<class>/<image> (and optionally val/) or at a .tar.gz of one."
            )
        if self.root.is_file() and not is_archive(self.root):
            raise ValueError(
                f"ImageFolder root {self.root} is a file but not a {'/'.join(ARCHIVE_SUFFIXES)} "
                "archive; point root at a folder or at such an archive."
            )
        if is_archive(self.root) and not self.data_path.is_dir():
            return archive_classes(self.root, self.subdir)
        return list_split(find_split_root(self.data_path, self.subdir) / "train")[0]

    def prepare_data(self) -> None:
        """Extract the archive once (and with ``in_memory`` decode the images once)."""
        if is_archive(self.root):
            extract_archive(self.root, self.cache_dir)
        if self.in_memory:
            for samples, what in self._splits():
                whole = self.pipeline != "cifar"
                cache = tensor_cache_file(samples, self._memory_size, self._tensor_dir, what, whole)
                if not cache.is_file():
                    self._decode(samples, what)

    def _splits(self) -> list[tuple[list[Sample], str]]:
        """``(samples, name)`` of ``train/`` and, when present, ``val/``; checks the classes."""
        if not self.data_path.is_dir():
            raise FileNotFoundError(
                f"{self.root} is not extracted yet (expected {self.data_path}); call "
                "prepare_data() before setup()."
            )
        split_root = find_split_root(self.data_path, self.subdir)
        classes, train = list_split(split_root / "train")
        check_same_classes(self.classes, f"{self.root} at init", classes, split_root / "train")
        splits = [(train, f"{split_root.name}/train")]
        if (split_root / "val").is_dir():
            val_classes, val = list_split(split_root / "val")
            check_same_classes(classes, split_root / "train", val_classes, split_root / "val")
            splits.append((val, f"{split_root.name}/val"))
        return splits

    @property
    def _memory_size(self) -> int:
        """Side of the images kept in memory."""
        if self.pipeline == "cifar":
            return self.image_size
        return int(self.image_size * self.test_resize_ratio)

    @property
    def _tensor_dir(self) -> Path:
        return self.cache_dir / "tensors"

    def _decode(self, samples: list[Sample], what: str) -> TensorImageDataset | RaggedImageDataset:
        size, folder, whole = self._memory_size, self._tensor_dir, self.pipeline != "cifar"
        data = decode_images(samples, size, folder, self.skip_corrupt, what, whole)
        if whole:
            return RaggedImageDataset(data["pixels"], data["shapes"], data["targets"])
        return TensorImageDataset(data["images"], data["targets"])

    def _dataset(self, samples: list[Sample], what: str) -> Dataset:
        if self.in_memory:
            return self._decode(samples, what)
        if self.skip_corrupt:
            samples = drop_corrupt(samples, skip=True, what=what)
        return ImageFileDataset(samples)

    def build_datasets(self) -> None:
        datasets: list[Dataset] = [self._dataset(s, what) for s, what in self._splits()]
        if self.in_memory and self.pipeline == "cifar":
            datasets = list(self._device_datasets(datasets))  # type: ignore[arg-type]
        train, held_out = datasets[0], (datasets[1] if len(datasets) > 1 else None)
        if not self.val_size and held_out is None:
            log.info("No val/ folder in %s: validating on 10%% of train/.", self.data_path)
        eval_tf = self._eval_transform()
        if self.val_size or held_out is None:
            train_idx, val_idx = split_indices(len(train), self.val_size or 0.1, self.seed)  # type: ignore[arg-type]
            self.train_set = TransformSubset(train, train_idx, self._train_transform())
            self.val_set = TransformSubset(train, val_idx, eval_tf)
        else:
            self.train_set = TransformSubset(train, None, self._train_transform())
            self.val_set = TransformSubset(held_out, None, eval_tf)
        self.test_set = (
            self.val_set if held_out is None else TransformSubset(held_out, None, eval_tf)
        )

    def _device_datasets(self, datasets: list[TensorImageDataset]) -> list[IndexDataset]:
        """One image tensor for ``device_images``; each split becomes its rows in it."""
        augment = BatchAugment(self.padding, self.rotation, autoaugment=self.autoaugment)
        images = (
            torch.cat([d.images for d in datasets]) if len(datasets) > 1 else datasets[0].images
        )
        self.device_images = DeviceImages(images, augment, BatchNormalize(self.mean, self.std))
        starts = [0, len(datasets[0])]
        return [
            IndexDataset(range(start, start + len(d)), d.targets)
            for start, d in zip(starts, datasets, strict=False)
        ]

    def _train_transform(self) -> Callable | None:
        if self.pipeline == "cifar":
            if self.in_memory:
                return None
            size = self.image_size
            return v2.Compose(
                [
                    v2.Resize(size, antialias=True),  # a no-op for images of the right size
                    v2.CenterCrop(size),
                    cifar_train_transform(
                        self.mean, self.std, size, self.padding, self.rotation, self.autoaugment
                    ),
                ]
            )
        return imagenet_train_transform(
            self.mean, self.std, self.image_size, self.train_crop, self.color_jitter, self.lighting
        )

    def _eval_transform(self) -> Callable | None:
        if self.in_memory and self.pipeline == "cifar":
            return None
        if self.in_memory:  # shorter side already int(image_size * test_resize_ratio)
            size = self.image_size
            return v2.Compose(
                [
                    v2.CenterCrop(size),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(self.mean, self.std),
                ]
            )
        ratio = 1.0 if self.pipeline == "cifar" else self.test_resize_ratio
        return eval_transform(self.mean, self.std, self.image_size, ratio)
