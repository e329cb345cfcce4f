"""What every bnn-lightning DataModule shares: global batch size, loaders, MixUp/CutMix, jitter.

Subclasses set ``num_classes``, ``mean`` and ``std`` in ``__init__`` and implement
:meth:`ImageDataModule.build_datasets`, which fills ``train_set``, ``val_set`` and ``test_set``
(and, for the device-side path, ``device_images``; see :mod:`bnn_lightning.data.device`).

Each rank draws its augmentation from streams of its own, seeded in :meth:`ImageDataModule.setup`
from ``torch.initial_seed()`` (``seed_everything``) and the global rank, and saved with the
training loader's state (:mod:`bnn_lightning.data.resumable`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from bnn_lightning.data.device import DeviceImages
from bnn_lightning.data.predict import predict_loader
from bnn_lightning.data.resumable import ResumableDataLoader, SeededTransform, stream_seed
from bnn_lightning.data.transforms import BatchMix, ColorJitterSwitch, batch_mix

__all__ = ["ImageDataModule", "TransformSubset", "split_indices"]

log = logging.getLogger(__name__)


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
    """``(transform(image), target)`` for the ``indices`` (all if None) of an image dataset.

    With a :class:`~bnn_lightning.data.resumable.SeededTransform` its stream is the dataset's
    state (``state_dict`` / ``load_state_dict``, kept per DataLoader worker by torchdata), and
    :meth:`seed_worker` gives each worker's copy a stream of its own.
    """

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

    def seed_worker(self, worker_seed: int) -> None:
        """Re-seed the transform's stream in a DataLoader worker (``worker_init_fn``)."""
        if isinstance(self.transform, SeededTransform):
            self.transform.reseed(stream_seed(self.transform.seed, worker_seed, "worker"))

    def state_dict(self) -> dict[str, Any]:
        return self.transform.state_dict() if isinstance(self.transform, SeededTransform) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.transform, SeededTransform):
            self.transform.load_state_dict(state)


class ImageDataModule(L.LightningDataModule):
    """Base DataModule for image classification.

    Args:
        batch_size: global batch size, divided by ``trainer.world_size`` in :meth:`setup`.
        num_workers: DataLoader workers; None picks 0 with ``in_memory`` batch augmentation
            (cheap enough for the main process) and ``min(4, cpu count)`` otherwise.
        pin_memory: None pins when CUDA is available.
        persistent_workers: keep workers alive between epochs.
        in_memory: serve images from a uint8 tensor (on the training device with the CIFAR
            pipeline, see :mod:`bnn_lightning.data.device`).
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
        self.device_images: DeviceImages | None = None
        self.mix: BatchMix | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._loader_states: list[dict[str, Any]] | None = None
        self._seed, self._rank = 0, 0

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
        train = self.train_set
        if isinstance(train, TransformSubset) and train.transform is not None:
            train.transform = SeededTransform.wrap(train.transform)
        self.mix = batch_mix(self.num_classes, self.mixup_alpha, self.cutmix_alpha)
        self._seed = torch.initial_seed() % 2**63  # seed_everything's seed (sampler: seed + epoch)
        self._rank = getattr(self.trainer, "global_rank", 0)
        strategy = getattr(self.trainer, "strategy", None)
        device = getattr(strategy, "root_device", torch.device("cpu"))
        for name, stream in self.random_streams().items():
            on_device = name == "augment" and device.type != "cpu"
            stream.reseed(stream_seed(self._seed, self._rank, name), device if on_device else "cpu")

    def random_streams(self) -> dict[str, Any]:
        """The training data's random streams: per-image transforms, batch augmentation, mix."""
        streams: dict[str, Any] = {}
        transform = getattr(self.train_set, "transform", None)
        if isinstance(transform, SeededTransform):
            streams["images"] = transform
        if self.device_images is not None and self.device_images.augment is not None:
            streams["augment"] = self.device_images.augment
        if self.mix is not None:
            streams["mix"] = self.mix
        return streams

    def set_color_jitter(self, enabled: bool) -> None:
        """Switch colour jitter on or off, in running DataLoader workers too (no-op without it)."""
        if self.color_jitter is not None:
            self.color_jitter.set_enabled(enabled)

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for data.")
        options: dict[str, Any] = {
            "batch_size": self.per_device_batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and self.device_images is None,
            "persistent_workers": self.persistent_workers,
        }
        if not train:
            return DataLoader(dataset, **options)
        world = getattr(self.trainer, "world_size", 1)
        streams = {"mix": self.mix} if self.mix is not None else {}
        if self.device_images is not None:
            streams["device_images"] = self.device_images  # type: ignore[assignment]
        return ResumableDataLoader(
            dataset, shuffle=True, drop_last=True, seed=self._seed, rank=self._rank,
            world_size=world, streams=streams, **options,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_set, train=True)
        assert isinstance(loader, ResumableDataLoader)
        states, self._loader_states = self._loader_states, None
        if states is not None and len(states) == loader.world_size:
            loader.load_state_dict(states[loader.rank])
        elif states is not None:
            log.warning(
                "The checkpoint's training data state is from %d devices, this run has %d: the "
                "interrupted epoch and the augmentation streams start anew.", len(states),
                loader.world_size,
            )  # fmt: skip
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_root:
            return predict_loader(self, self.predict_root)
        return self._loader(self.test_set, train=False)

    def transform_batch(self, batch: Any, train: bool) -> Any:
        """The device-side part of the data path, on ``batch`` where it is (after the transfer).

        In-memory images are gathered (the batch holds their rows), augmented (``train``) and
        normalized by :attr:`device_images`; training batches get MixUp / CutMix (float soft
        targets of shape ``(N, num_classes)``).
        """
        rows, targets = batch
        if self.device_images is not None and rows.ndim == 1:  # not predict_root's images
            batch = self.device_images(rows, targets, train=train)
        if train and self.mix is not None:
            batch = self.mix(*batch)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Run :meth:`transform_batch` (``train`` while the trainer is training)."""
        return self.transform_batch(batch, train=bool(getattr(self.trainer, "training", False)))

    def state_dict(self) -> dict[str, Any]:
        """The training loader's state on every rank (a collective: all ranks call it).

        Lightning's fit loop saves the loader state of rank 0 alone, and does not restore it
        when the loader was made before the checkpoint was loaded, e.g. by
        ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` (Lightning issue
        20550). These states are handed to the loaders, each rank its own, when they are made.
        """
        if self._train_loader is None:
            return {}
        state = self._train_loader.state_dict()
        states: list[Any] = [state]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
        return {"train_loaders": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loader_states = state_dict.get("train_loaders")
