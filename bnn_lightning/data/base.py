"""What every bnn-lightning DataModule shares: global batch size, loaders, MixUp/CutMix, jitter.

Subclasses set ``num_classes``, ``mean`` and ``std`` in ``__init__`` and implement
:meth:`ImageDataModule.build_datasets`, which fills ``train_set``, ``val_set`` and ``test_set``
(and, for batch-level augmentation, ``train_collate`` / ``eval_collate``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bnn_lightning.data.predict import predict_loader
from bnn_lightning.data.resumable import ResumableDataLoader
from bnn_lightning.data.transforms import ColorJitterSwitch, batch_mix

__all__ = ["ImageDataModule", "TransformSubset", "split_indices"]


def split_indices(n: int, val_size: int | float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random ``(train, val)`` index split; ``val_size``: a count or a fraction in (0, 1)."""
    count = round(val_size * n) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < count < n:
        raise ValueError(
            f"val_size={val_size} leaves no training or no validation images out of {n}; use a "
            f"count between 1 and {n - 1} or a fraction between 0 and 1."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[count:]), sorted(order[:count])


class TransformSubset(Dataset[tuple[Any, int]]):
    """``(transform(image), target)`` for the ``indices`` (all if None) of an image dataset."""

    def __init__(
        self, dataset: Dataset, indices: Sequence[int] | None, transform: Callable | None
    ) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, target = self.dataset[self.indices[index]]
        return (img if self.transform is None else self.transform(img)), target


class ImageDataModule(L.LightningDataModule):
    """Base DataModule for image classification.

    Args:
        batch_size: global batch size, divided by ``trainer.world_size`` in :meth:`setup`.
        num_workers: DataLoader workers; None picks 0 with ``in_memory`` batch augmentation
            (cheap enough for the main process) and ``min(4, cpu count)`` otherwise.
        pin_memory: None pins when CUDA is available.
        persistent_workers: keep workers alive between epochs.
        in_memory: serve images from a uint8 tensor with batch-level tensor augmentation.
        mixup_alpha: MixUp Beta(alpha, alpha) for training batches; 0 turns it off.
        cutmix_alpha: CutMix alpha; with both > 0 each batch picks one of the two.
        seed: seed of the validation split carved from the training images.
        predict_root: ``predict`` classifies every image under this folder (with or without class
            sub-folders, see :mod:`bnn_lightning.data.predict`) instead of the test split.
    """

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self,
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
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer.")
        self.batch_size = batch_size
        self.per_device_batch_size = batch_size
        if num_workers is None:
            num_workers = 0 if in_memory else min(4, os.cpu_count() or 1)
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.in_memory = in_memory
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.seed = seed
        self.predict_root = predict_root
        self.color_jitter: ColorJitterSwitch | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.train_collate: Callable | None = None
        self.eval_collate: Callable | None = None
        self.mix: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None

    def build_datasets(self) -> None:
        """Fill ``train_set``, ``val_set`` and ``test_set`` (called once, from :meth:`setup`)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ValueError(
                f"batch_size={self.batch_size} (the global batch) is not divisible by the "
                f"{world} devices; use a multiple of {world}."
            )
        self.per_device_batch_size = self.batch_size // world
        if self.train_set is None and not (stage == "predict" and self.predict_root):
            self.build_datasets()
        self.mix = batch_mix(self.num_classes, self.mixup_alpha, self.cutmix_alpha)

    def set_color_jitter(self, enabled: bool) -> None:
        """Switch colour jitter on or off, in running DataLoader workers too (no-op without it)."""
        if self.color_jitter is not None:
            self.color_jitter.set_enabled(enabled)

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for data.")
        loader = ResumableDataLoader if train else DataLoader
        return loader(
            dataset,
            batch_size=self.per_device_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=self.train_collate if train else self.eval_collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_root:
            return predict_loader(self, self.predict_root)
        return self._loader(self.test_set, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply MixUp / CutMix to training batches (float soft targets of shape (N, C))."""
        if self.mix is not None and self.trainer is not None and self.trainer.training:
            images, targets = batch
            return self.mix(images, targets)
        return batch
