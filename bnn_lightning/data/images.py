"""Image files of a ``<split>/<class>/<image>`` tree: listing, loading, checking, decoding.

Every image is loaded as RGB (greyscale, palette and RGBA files are converted). A file that does
not decode raises :class:`CorruptImageError` naming it, unless the datamodule skips corrupt
files (``skip_corrupt``), which drops them up front and logs how many.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = [
    "CorruptImageError",
    "ImageFileDataset",
    "Sample",
    "check_same_classes",
    "decode_images",
    "drop_corrupt",
    "list_split",
    "load_rgb",
    "tensor_cache_file",
]

log = logging.getLogger(__name__)
Sample = tuple[str, int]


class CorruptImageError(RuntimeError):
    """An image file that PIL cannot decode."""


def list_split(split_dir: Path) -> tuple[list[str], list[Sample]]:
    """Sorted class names and ``(path, class index)`` samples of one split folder."""
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>."
        )
    samples: list[Sample] = []
    for index, name in enumerate(classes):
        folder = split_dir / name
        files = sorted(
            e.path
            for e in os.scandir(folder)
            if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)
        )
        if not files:
            raise FileNotFoundError(
                f"Class folder {folder} holds no images ({', '.join(IMG_EXTENSIONS)}); "
                "add images or remove the folder."
            )
        samples += [(path, index) for path in files]
    return classes, samples


def check_same_classes(
    reference: Sequence[str], reference_dir: Path | str, found: Sequence[str], found_dir: Path
) -> None:
    """Raise when the class folders ``found`` in ``found_dir`` differ from ``reference``."""
    if list(reference) != list(found):
        missing = sorted(set(reference) - set(found))
        extra = sorted(set(found) - set(reference))
        raise ValueError(
            f"The class folders of {found_dir} differ from {reference_dir} (only in "
            f"{reference_dir}: {missing[:5]}, only in {found_dir}: {extra[:5]}); both need the "
            "same classes."
        )


def load_rgb(path: str, size: int | None = None) -> Image.Image:
    """Decode ``path`` as RGB; with ``size``, JPEGs decode at a reduced scale >= size (faster)."""
    try:
        with Image.open(path) as img:
            if size is not None:
                img.draft("RGB", (size, size))
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(
            f"Cannot decode image {path} ({err}); replace or delete it, or set skip_corrupt: true."
        ) from err


class ImageFileDataset(Dataset[tuple[Image.Image, int]]):
    """``(RGB PIL image, class index)`` for each ``(path, class index)`` sample."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        self.targets = [target for _, target in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, target = self.samples[index]
        return load_rgb(path), target


class _Decode(Dataset[tuple[np.ndarray | None, int]]):
    """Decode to a square uint8 ``size`` x ``size`` array (shorter side resized, center crop).

    Returns ``(None, index)`` for a corrupt file; with ``check_only`` the file is only decoded at
    the smallest JPEG draft scale and ``(empty array, index)`` is returned.
    """

    def __init__(self, samples: Sequence[Sample], size: int, check_only: bool = False) -> None:
        self.samples, self.size, self.check_only = samples, size, check_only

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, int]:
        try:
            img = load_rgb(self.samples[index][0], 1 if self.check_only else self.size)
        except CorruptImageError:
            return None, index
        if self.check_only:
            return np.empty(0, np.uint8), index
        if img.size != (self.size, self.size):
            scale = self.size / min(img.size)
            w = max(self.size, round(img.width * scale))
            h = max(self.size, round(img.height * scale))
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.resize((w, h), Image.Resampling.BILINEAR)
            img = img.crop((left, top, left + self.size, top + self.size))
        return np.asarray(img), index


def _decode_all(
    samples: Sequence[Sample], size: int, check_only: bool
) -> dict[int, np.ndarray | None]:
    workers = min(2, os.cpu_count() or 1)
    loader = DataLoader(
        _Decode(samples, size, check_only), batch_size=256, num_workers=workers, collate_fn=list
    )
    return {index: img for batch in loader for img, index in batch}


def _keep(samples: Sequence[Sample], bad: list[int], skip: bool, what: str) -> list[Sample]:
    """Samples without the ``bad`` ones; raise for the first bad one unless ``skip``."""
    if bad and not skip:
        load_rgb(samples[bad[0]][0])  # raises CorruptImageError naming the file
    if bad:
        log.warning(
            "Skipped %d corrupt image(s) in %s, e.g. %s", len(bad), what, samples[bad[0]][0]
        )
    drop = set(bad)
    return [s for i, s in enumerate(samples) if i not in drop]


def drop_corrupt(samples: Sequence[Sample], skip: bool, what: str) -> list[Sample]:
    """Decode every sample once (cheaply) and drop or report the corrupt ones."""
    decoded = _decode_all(samples, 1, check_only=True)
    return _keep(samples, [i for i, img in decoded.items() if img is None], skip, what)


def tensor_cache_file(samples: Sequence[Sample], size: int, cache_dir: Path, what: str) -> Path:
    """The cache file of :func:`decode_images`; its name hashes the samples and ``size``."""
    key = hashlib.sha1(repr((list(samples), size)).encode()).hexdigest()[:16]
    return cache_dir / f"{what.replace('/', '_')}-{size}px-{key}.pt"


def decode_images(
    samples: Sequence[Sample], size: int, cache_dir: Path, skip: bool, what: str
) -> tuple[Tensor, Tensor]:
    """Decode all samples into uint8 ``(N, 3, size, size)`` images and targets, cached on disk.

    A changed tree or size decodes anew (see :func:`tensor_cache_file`); the file is written
    under a temporary name and renamed, so a partial file is never read.
    """
    cache = tensor_cache_file(samples, size, cache_dir, what)
    if cache.is_file():
        data = torch.load(cache, weights_only=True)
        _keep(samples, data["corrupt"].tolist(), skip, what)
        return data["images"], data["targets"]
    decoded = _decode_all(samples, size, check_only=False)
    bad = [i for i, img in decoded.items() if img is None]
    kept = _keep(samples, bad, skip, what)
    arrays = [img for img in decoded.values() if img is not None]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    targets = torch.tensor([t for _, t in kept], dtype=torch.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save(
        {"images": images, "targets": targets, "corrupt": torch.tensor(bad, dtype=torch.int64)}, tmp
    )
    os.replace(tmp, cache)
    return images, targets
