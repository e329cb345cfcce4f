"""The device-side data path: in-memory uint8 images on the training device, batch transforms there.

With ``in_memory: true`` and the CIFAR pipeline (``CIFAR10DataModule``, ``CIFAR100DataModule``,
``ImageFolderDataModule(pipeline="cifar")``) the DataLoaders yield only ``(indices, targets)``.
After Lightning moves such a batch to the device, the DataModule's ``on_after_batch_transfer``
hands it to :class:`DeviceImages`, which holds every split's images in one uint8 tensor, moved
to the batch's device once, and returns the float batch: the images gathered by index, then for
training the batch augmentation (:class:`~bnn_lightning.data.memory.BatchAugment`: crop with
padding, flip, rotation), then normalization (:class:`~bnn_lightning.data.memory.BatchNormalize`).
MixUp / CutMix (:class:`~bnn_lightning.data.transforms.BatchMix`) follows in the DataModule. The
augmentation draws from its own generator on that device, seeded per rank and saved with the
training loader's state (see :mod:`bnn_lightning.data.resumable`). On a CPU the same path runs.

Outside a Trainer (a benchmark of the data path, for instance)::

    dm = CIFAR10DataModule(root="data", in_memory=True, batch_size=512)
    dm.prepare_data()
    dm.setup("fit")  # streams seeded from torch.initial_seed(), rank 0, on the CPU
    dm.device_images.to("cuda")  # the uint8 tensor moves once; generators move to cuda
    for batch in dm.train_dataloader():
        batch = [t.to("cuda", non_blocking=True) for t in batch]
        images, targets = dm.transform_batch(batch, train=True)  # augment, normalize, mix
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from bnn_lightning.data.memory import BatchAugment, BatchNormalize

__all__ = ["DeviceImages", "IndexDataset"]


class IndexDataset(Dataset[tuple[int, int]]):
    """``(row in the image tensor, class index)`` pairs: what the device-side path loads.

    Args:
        rows: for each sample, its row in :attr:`DeviceImages.images`.
        targets: for each sample, its class index.
    """

    def __init__(self, rows: Sequence[int], targets: Sequence[int] | Tensor) -> None:
        if len(rows) != len(targets):
            raise ValueError(f"IndexDataset got {len(rows)} rows but {len(targets)} targets.")
        self.rows = list(rows)
        self.targets = torch.as_tensor(targets, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return self.rows[index], int(self.targets[index])


class DeviceImages:
    """uint8 images ``(N, 3, H, W)`` of every split and the batch transforms applied to them.

    Args:
        images: the images; moved to a batch's device on first use (or by :meth:`to`).
        augment: the training augmentation, or None for none.
        normalize: scaling to [0, 1] and normalization (training and evaluation).
    """

    def __init__(
        self, images: Tensor, augment: BatchAugment | None, normalize: BatchNormalize
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"DeviceImages needs uint8 images (N, 3, H, W), got {images.dtype} "
                f"{tuple(images.shape)}."
            )
        self.images = images
        self.augment = augment
        self.normalize = normalize

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> DeviceImages:
        """Move the images and the normalization to ``device``, and the generator (re-seeded)."""
        device = torch.device(device)
        self.images = self.images.to(device)
        self.normalize.to(device)
        if self.augment is not None and self.augment.device != device:
            self.augment.reseed(self.augment.seed, device)
        return self

    def __call__(self, rows: Tensor, targets: Tensor, train: bool) -> tuple[Tensor, Tensor]:
        """The float batch of ``rows``: gathered, augmented when ``train``, normalized."""
        if rows.device != self.device:
            self.to(rows.device)  # once: later batches find the images there
        # Small ops on a shared CPU: one thread (OpenMP's fan-out made them 3-30x slower).
        threads = torch.get_num_threads()
        if rows.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            images = self.images[rows]
            if train and self.augment is not None:
                images = self.augment(images)
            return self.normalize(images), targets
        finally:
            torch.set_num_threads(threads)

    def state_dict(self) -> dict[str, Any]:
        """The augmentation's generator state (the images are data, not state)."""
        return self.augment.state_dict() if self.augment is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.augment is not None:
            self.augment.load_state_dict(state)
