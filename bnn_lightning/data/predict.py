"""``bnn predict`` on any folder of images (``--data.init_args.predict_root DIR``).

Every image file under the folder is classified, at any depth, so a flat folder and a
``<class>/<image>`` tree both work; the class folders, if any, are not read as labels. Images go
through the DataModule's evaluation transform (resize, center crop, normalize).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from bnn_lightning.data.images import load_rgb
from bnn_lightning.data.transforms import eval_transform

__all__ = ["ImagePaths", "predict_loader", "sample_name"]


class ImagePaths(Dataset[tuple[Tensor, int]]):
    """``(transform(image), index)`` for every image file under ``root``, sorted by path.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or it holds no image files.
    """

    def __init__(self, root: str | Path, transform: Callable[[Any], Tensor]) -> None:
        folder = Path(os.path.expandvars(str(root))).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"predict_root {folder} is not a folder; set data.init_args.predict_root to a "
                "folder of images."
            )
        self.paths = sorted(
            str(p)
            for p in folder.rglob("*")
            if p.is_file() and has_file_allowed_extension(p.name, IMG_EXTENSIONS)
        )
        if not self.paths:
            raise FileNotFoundError(
                f"predict_root {folder} holds no images ({' '.join(IMG_EXTENSIONS)}); set "
                "data.init_args.predict_root to a folder of images."
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(load_rgb(self.paths[index])), index


def predict_transform(datamodule: Any) -> Callable[[Any], Tensor]:
    """The evaluation transform of ``datamodule`` for PIL images (its size, crop and stats)."""
    ratio = 1.0
    if getattr(datamodule, "pipeline", "cifar") != "cifar":
        ratio = getattr(datamodule, "test_resize_ratio", 1.0)
    size = getattr(datamodule, "image_size", 32)
    return eval_transform(datamodule.mean, datamodule.std, size, ratio)


def predict_loader(datamodule: Any, root: str) -> DataLoader:
    """A loader over :class:`ImagePaths` of ``root`` with ``datamodule``'s batch and workers."""
    return DataLoader(
        ImagePaths(root, predict_transform(datamodule)),
        batch_size=datamodule.per_device_batch_size,
        num_workers=datamodule.num_workers,
        pin_memory=datamodule.pin_memory,
    )


def sample_name(dataset: Any, index: int) -> str:
    """The file path of ``dataset[index]`` when the dataset knows it, else ``Name[index]``.

    Subsets (``indices`` + ``dataset``) are followed down to the dataset that holds the images.
    """
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        index, dataset = dataset.indices[index], dataset.dataset
    for attr in ("paths", "samples"):
        items = getattr(dataset, attr, None)
        if items is not None and len(items) == len(dataset):
            item = items[index]
            return str(item[0] if isinstance(item, tuple) else item)
    return f"{type(dataset).__name__}[{index}]"
